"""The ``monitor`` command."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

console = Console()


def _experiments(args: argparse.Namespace) -> int:
    from monitor.yamlfile import ConfigError
    from trainers import experiment

    table = Table(title="Experiments (trainers/experiments)")
    for col in ("name", "trainer", "trials", "iterations", "description"):
        table.add_column(col)
    for name in experiment.available():
        try:
            exp = experiment.load(name)
        except ConfigError as exc:
            table.add_row(name, "-", "-", "-", f"[red]{exc}[/red]")
            continue
        table.add_row(name, exp.trainer, str(len(exp.variants) * exp.samples),
                      str(exp.max_iterations), exp.description)
    console.print(table)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from trainers import tune

    argv = [args.experiment, *(["--max-iterations", str(args.max_iterations)]
                                if args.max_iterations else [])]
    if args.address:
        argv += ["--address", args.address]
    return tune.main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monitor", description="Training-health monitor and "
                                     "early-kill scheduler for Ray Tune")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tune", help="run an experiment under Ray Tune (as `make tune`)")
    p.add_argument("experiment")
    p.add_argument("--max-iterations", type=int)
    p.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    p.set_defaults(func=_tune)
    p = sub.add_parser("experiments", help="list the available experiments")
    p.set_defaults(func=_experiments)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
