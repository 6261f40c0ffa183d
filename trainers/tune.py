"""Run an experiment under Ray Tune: ``python -m trainers.tune EXP`` (what ``make tune`` calls).

Experiment-file handling on top of the public API (``monitor.TuneMonitor``): results go to
``runs/<EXP>_<timestamp>_<hex>/`` (Ray Tune's experiment directory); a ``summary.json`` there
lists every trial's variant, status, last metrics and checkpoint, and the best trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from heuristics.rules import RuleErrors
from heuristics.yamlfile import ConfigError
from monitor.console import console, print_error, safe
from monitor.driver.run import StorageError, check_name
from monitor.durability import describe
from monitor.paths import runs_dir
from monitor.serving.exporter import ExporterError
from trainers import experiment as experiments

EXTRA_COLUMNS = ("val_logmel", "val_power_ratio_db", "n_parameters", "rtf")


def _distribution(spec: dict[str, Any]):
    from ray import tune

    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.randint(*args)


def latest_summary(storage: Path, experiment: str) -> dict[str, Any]:
    """The summary of the most recent finished run of ``experiment`` under ``storage``."""
    summaries = []
    for path in sorted(storage.glob(f"{experiment}_*/summary.json")):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("finished", 0),
                                                            (int, float)):
                raise ValueError("expected the summary of a run (a JSON object)")
        except (OSError, ValueError) as exc:  # torn, damaged, unreadable: that run is skipped
            print_error(f"warning: {path}: not a readable run summary ({exc}); that run is "
                        "skipped")
            continue
        if data.get("experiment") == experiment:
            summaries.append((data.get("finished", 0), data))
    if not summaries:
        raise ConfigError(storage, None, f"no finished run of {experiment} under {storage}; "
                          f"run `make tune EXP={experiment}` first")
    return max(summaries, key=lambda x: x[0])[1]


def resolve_master_checkpoint(exp: experiments.Experiment, storage: Path) -> None:
    """``master_checkpoint: latest`` -> the best checkpoint of the latest master run."""
    if exp.trainer != "student" or exp.config.get("master_checkpoint", "latest") != "latest":
        return
    summary = latest_summary(storage, exp.master_experiment or "master_v464")
    best = summary.get("best")
    if not best or not best.get("checkpoint"):
        raise ConfigError(storage, None, f"the latest master run {summary['name']} has no "
                          "healthy trial with a checkpoint to distil from")
    exp.config["master_checkpoint"] = best["checkpoint"]
    console.print(safe(f"Distilling from master trial {best['trial_id']} of {summary['name']} "
                       f"({exp.metric}={best['metric']:.3f})"))


def param_space(exp: experiments.Experiment, max_iterations: int) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {"base": dict(exp.config), "max_iterations": max_iterations}
    space["variant"] = tune.grid_search(exp.variants) if len(exp.variants) > 1 else exp.variants[0]
    for key, dist in exp.search_space.items():
        space[key] = _distribution(dist)
    return space


def load_experiment_rules(exp: experiments.Experiment) -> list:
    """The experiment's effective rule set; a problem raises ``RuleErrors`` before Ray starts."""
    from heuristics.rules import load_rules

    return load_rules(exp.heuristics, base=exp.path.parent)


def make_wrapped(name: str | None, exp: experiments.Experiment, iterations: int):
    """A Ray Tune scheduler to delegate to when no rule kills: asha, median or none."""
    if not name or name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=iterations, grace_period=3)
    if name == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=3)
    raise ValueError(f"wrap must be one of none, asha, median; got {name!r}")


def init_ray(address: str | None) -> None:
    """Connect to ``address`` (a running cluster) or start a local Ray, once."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)


def check_resources(exp: experiments.Experiment) -> None:
    """A trial that asks for more than the cluster has would wait forever: refuse it now."""
    import ray

    have = ray.cluster_resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        want = exp.resources.get(key, 0)
        if want > have.get(ray_key, 0):
            raise ConfigError(exp.path, None, f"resources.{key}: each trial asks for {want:g} "
                              f"but the Ray cluster has {have.get(ray_key, 0):g}; no trial "
                              "could ever start")


def run(exp: experiments.Experiment, storage: Path | None = None,
        max_iterations: int | None = None, address: str | None = None,
        callbacks: list | None = None, shadow: bool = False, wrap: str | None = None,
        resume: Path | None = None, tune_storage: str | None = None,
        verbose: int = 1) -> dict[str, Any]:
    """Run ``exp`` on Ray Tune through the public API (``monitor.TuneMonitor``); return (and
    write) the summary.

    ``storage``: the driver-local directory for the monitor's files (default
    ``$MONITOR_RUNS_DIR`` or ``./runs``). ``tune_storage``: where Ray Tune keeps trial results
    and checkpoints, any path or URI it accepts (shared storage on a cluster). ``resume``: the
    directory of an interrupted run of ``exp`` to restore and finish.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table
    from ray import tune

    from monitor import TuneMonitor
    from monitor.driver.summary import summarise
    from trainers.trainables import TRAINABLES

    storage = (storage or runs_dir()).resolve()
    rules = load_experiment_rules(exp)
    resolve_master_checkpoint(exp, storage)
    iterations = max_iterations or exp.max_iterations
    trainable = tune.with_resources(TRAINABLES[exp.trainer], dict(exp.resources))
    started = time.time()
    if resume:  # Tune restores its pickled scheduler and callbacks; they reload their state
        init_ray(address)
        resume = resume.resolve()
        tune_root = tune_storage.rstrip("/") if tune_storage else str(resume.parent)
        try:
            tuner = tune.Tuner.restore(f"{tune_root}/{resume.name}", trainable,
                                       resume_errored=True)
        except Exception as exc:  # noqa: BLE001 - Tune's own state (tuner.pkl...) is damaged
            raise ConfigError(resume, None, f"--resume: Ray Tune cannot restore this run "
                              f"({describe(exc)}); start the experiment again without "
                              "--resume") from None
        return summarise(resume, exp.name, exp.vocabulary, tuner.fit(), started)
    mon = TuneMonitor(exp.name, signals=exp.vocabulary, rules=rules, budget=iterations,
                      scheduler=make_wrapped(wrap, exp, iterations), storage=storage,
                      shadow=shadow, healthy_threshold=exp.healthy_threshold,
                      tune_storage=tune_storage)
    try:
        init_ray(address)
        check_resources(exp)
    except ConfigError:
        mon.close()
        raise
    mon.announce()
    reporter = tune.CLIReporter(
        metric_columns={"training_iteration": "iter", exp.metric: exp.metric,
                        "time_total_s": "time (s)", "monitor_killed": "killed by"},
        parameter_columns={"variant/name": "variant"}, max_report_frequency=30)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(exp, iterations),
        tune_config=mon.tune_config(num_samples=exp.samples,
                                    max_concurrent_trials=exp.max_concurrent),
        run_config=mon.run_config(callbacks=callbacks, verbose=verbose,
                                  progress_reporter=reporter if verbose else None),
    )
    try:
        results = tuner.fit()
    finally:
        mon.close()
    return mon.summary(results)


def print_summary(summary: dict[str, Any]) -> None:
    from monitor.driver.summary import print_summary as show

    show(summary, console, EXTRA_COLUMNS)
    master_rtf = [t["last"]["master_rtf"] for t in summary["trials"]
                  if "master_rtf" in t.get("last", {})]
    if master_rtf:
        params = summary["trials"][0]["last"].get("master_parameters")
        console.print(f"Master: {params} parameters, real-time factor "
                      f"{statistics.median(master_rtf):.3g} (median over trials)")


def list_experiments() -> None:
    from monitor.driver.summary import plain

    table = Table(title="Experiments (trainers/experiments)")
    for col in ("name", "trainer", "trials", "iterations", "description"):
        table.add_column(col, overflow="fold")
    for name in experiments.available():
        try:
            exp = experiments.load(name)
        except ConfigError as exc:
            table.add_row(name, "-", "-", "-", plain(exc))
            continue
        table.add_row(name, exp.trainer, str(len(exp.variants) * exp.samples),
                      str(exp.max_iterations), plain(exp.description))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.tune", description=__doc__)
    parser.add_argument("experiment", nargs="?", help="experiment name "
                        "(trainers/experiments/<name>.yaml) or path to a YAML file")
    parser.add_argument("--list", action="store_true", help="list the available experiments")
    parser.add_argument("--storage", type=Path, default=None,
                        help="where runs go (default: $MONITOR_RUNS_DIR or ./runs)")
    parser.add_argument("--max-iterations", type=int, default=None)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None)
    parser.add_argument("--shadow", action="store_true",
                        help="record would-be kills, stop nothing")
    parser.add_argument("--wrap", choices=("none", "asha", "median"), default="none",
                        help="a Ray Tune scheduler to defer to when no rule kills")
    parser.add_argument("--resume", type=Path, default=None,
                        help="restore and finish an interrupted run (its directory)")
    parser.add_argument("--tune-storage", default=os.environ.get("MONITOR_TUNE_STORAGE"),
                        help="where Ray Tune keeps results and checkpoints (a path or URI, e.g. "
                        "shared storage on a cluster); default: --storage")
    args = parser.parse_args(argv)
    if args.list:
        list_experiments()
        return 0
    if not args.experiment:
        parser.error("give an experiment name (see --list)")
    storage = (args.storage or runs_dir()).resolve()
    try:
        exp = experiments.load(args.experiment)
        try:
            check_name(exp.name, "experiment (the file's name)")
        except ValueError as exc:
            raise ConfigError(exp.path, None, str(exc)) from None
        load_experiment_rules(exp)
        resolve_master_checkpoint(exp, storage)
        if args.resume and not (args.resume / "heuristics").is_dir() \
                and not (args.resume / "tuner.pkl").exists():
            raise ConfigError(args.resume, None, "--resume: expected the directory of an "
                              "interrupted run (with tuner.pkl), found none there")
        if args.max_iterations is not None and args.max_iterations < 1:
            raise ConfigError("--max-iterations", None, f"expected a positive number, got "
                              f"{args.max_iterations}")
    except ConfigError as exc:
        print_error(str(exc))
        return 2
    except RuleErrors as exc:  # one line per problem, the last says what it means
        lines = [str(e) for e in exc.errors] or [str(exc)]
        lines[-1] += " (the experiment's rules do not load; no trial was started)"
        for line in lines:
            print_error(line)
        return 2
    try:
        summary = run(exp, storage, args.max_iterations, args.address, shadow=args.shadow,
                      wrap=args.wrap, resume=args.resume, tune_storage=args.tune_storage)
    except (ExporterError, ConfigError, StorageError) as exc:
        print_error(str(exc))
        return 2
    print_summary(summary)
    errors = [t for t in summary["trials"] if t.get("error")]
    if errors:
        first = errors[0]["error"].strip().splitlines()[-1][:300]
        print_error(f"{len(errors)} of {len(summary['trials'])} trials failed with an error "
                    f"(first: {first}); see their error.txt under {summary['storage']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
