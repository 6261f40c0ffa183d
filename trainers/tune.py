"""Run an experiment under Ray Tune: ``python -m trainers.tune EXP`` (what ``make tune`` calls).

Results go to ``runs/<EXP>_<timestamp>/`` (Ray Tune's experiment directory); a ``summary.json``
there lists every trial's variant, status, last metrics and checkpoint, and the best trial.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from monitor.callback import HealthExporterCallback
from monitor.exporter import ExporterError
from monitor.yamlfile import ConfigError
from trainers import experiment as experiments

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = REPO / "runs"
console = Console()
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
    for path in storage.glob(f"{experiment}_*/summary.json"):
        data = json.loads(path.read_text())
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
    console.print(f"Distilling from master trial {best['trial_id']} of {summary['name']} "
                  f"({exp.metric}={best['metric']:.3f})")


def param_space(exp: experiments.Experiment, max_iterations: int) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {"base": dict(exp.config), "max_iterations": max_iterations}
    space["variant"] = tune.grid_search(exp.variants) if len(exp.variants) > 1 else exp.variants[0]
    for key, dist in exp.search_space.items():
        space[key] = _distribution(dist)
    return space


def run(exp: experiments.Experiment, storage: Path = DEFAULT_STORAGE,
        max_iterations: int | None = None, address: str | None = None,
        callbacks: list | None = None, scheduler=None) -> dict[str, Any]:
    """Run ``exp`` on Ray Tune; return (and write) the run summary."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table
    import ray
    from ray import tune

    from trainers.trainables import TRAINABLES

    storage = storage.resolve()
    resolve_master_checkpoint(exp, storage)
    iterations = max_iterations or exp.max_iterations
    name = f"{exp.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    exporter = HealthExporterCallback(exp.name, name, sd_dir=storage / "file_sd")
    try:
        exporter.start()
    except ExporterError as exc:
        raise ConfigError("exporter", None, str(exc)) from None
    console.print(f"Health metrics of {name}: {exporter.exporter.url} "
                  f"(file_sd: {exporter.exporter.sd_file})")
    trainable = tune.with_resources(TRAINABLES[exp.trainer], dict(exp.resources))
    reporter = tune.CLIReporter(
        metric_columns={"training_iteration": "iter", exp.metric: exp.metric,
                        "loss_d": "loss_d", "time_total_s": "time (s)"},
        parameter_columns={"variant/name": "variant"}, max_report_frequency=30)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(exp, iterations),
        tune_config=tune.TuneConfig(metric=exp.metric, mode=exp.mode, num_samples=exp.samples,
                                    scheduler=scheduler,
                                    max_concurrent_trials=exp.max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                  callbacks=[exporter, *(callbacks or [])], verbose=1,
                                  progress_reporter=reporter,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    started = time.time()
    try:
        results = tuner.fit()
    finally:
        exporter.close()
    summary = summarise(exp, name, storage, results, started)
    (storage / name / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def summarise(exp, name: str, storage: Path, results, started: float) -> dict[str, Any]:
    trials = []
    for r in results:
        m = r.metrics or {}
        cfg = r.config or {}
        trials.append({
            "trial_id": m.get("trial_id") or Path(r.path).name,
            "variant": cfg.get("variant", {}).get("name"),
            "iterations": m.get("training_iteration", 0),
            "metric": m.get(exp.metric),
            "error": str(r.error) if r.error else None,
            "checkpoint": (str(Path(r.checkpoint.path) / "model.pt") if r.checkpoint else None),
            "path": r.path,
            "last": {k: v for k, v in m.items() if isinstance(v, (int, float, str))},
        })
    sign = 1 if exp.mode == "min" else -1
    ranked = sorted((t for t in trials if _finite(t["metric"]) and t["checkpoint"]),
                    key=lambda t: sign * t["metric"])
    return {"name": name, "experiment": exp.name, "trainer": exp.trainer, "metric": exp.metric,
            "mode": exp.mode, "storage": str(storage / name), "started": started,
            "finished": time.time(), "trials": trials, "best": ranked[0] if ranked else None}


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['name']}: {len(summary['trials'])} trials "
                  f"({summary['metric']}, {summary['mode']})")
    extra = [k for k in EXTRA_COLUMNS if k != summary["metric"]
             and any(k in t["last"] for t in summary["trials"])]
    for col in ("trial", "variant", "iterations", summary["metric"], *extra, "status"):
        table.add_column(col)

    def fmt(x: Any) -> str:
        return f"{x:.3g}" if isinstance(x, float) else ("-" if x is None else str(x))

    for t in summary["trials"]:
        status = "error" if t["error"] else "done"
        table.add_row(t["trial_id"], str(t["variant"]), str(t["iterations"]), fmt(t["metric"]),
                      *(fmt(t["last"].get(k)) for k in extra), status)
    console.print(table)
    master_rtf = [t["last"]["master_rtf"] for t in summary["trials"] if "master_rtf" in t["last"]]
    if master_rtf:
        params = summary["trials"][0]["last"].get("master_parameters")
        console.print(f"Master: {params} parameters, real-time factor "
                      f"{statistics.median(master_rtf):.3g} (median over trials)")
    if summary["best"]:
        console.print(f"Best: {summary['best']['trial_id']} ({summary['best']['variant']}), "
                      f"checkpoint {summary['best']['checkpoint']}")
    console.print(f"Results: {summary['storage']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.tune", description=__doc__)
    parser.add_argument("experiment", help="experiment name (trainers/experiments/<name>.yaml) "
                        "or path to a YAML file")
    parser.add_argument("--storage", type=Path, default=DEFAULT_STORAGE)
    parser.add_argument("--max-iterations", type=int, default=None)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None)
    args = parser.parse_args(argv)
    try:
        exp = experiments.load(args.experiment)
        resolve_master_checkpoint(exp, args.storage.resolve())
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    summary = run(exp, args.storage, args.max_iterations, args.address)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
