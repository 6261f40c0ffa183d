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

from rich.table import Table

from heuristics.rules import RuleErrors
from monitor.callback import HealthExporterCallback, RunStoreCallback
from monitor.console import console, print_error
from monitor.exporter import ExporterError
from heuristics.yamlfile import ConfigError
from trainers import experiment as experiments

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = REPO / "runs"
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


def run(exp: experiments.Experiment, storage: Path = DEFAULT_STORAGE,
        max_iterations: int | None = None, address: str | None = None,
        callbacks: list | None = None, shadow: bool = False, wrap: str | None = None,
        resume: Path | None = None, tune_storage: str | None = None,
        verbose: int = 1) -> dict[str, Any]:
    """Run ``exp`` on Ray Tune with the early-kill scheduler; return (and write) the summary.

    ``storage``: the driver-local directory for the monitor's files (run store, verdicts, rule
    state, file_sd, summary). ``tune_storage``: where Ray Tune keeps trial results and
    checkpoints, any path or URI it accepts (shared storage on a cluster); by default the same
    directory. ``resume``: the directory of an interrupted run of ``exp`` to restore and finish.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table
    import ray
    from ray import tune

    from monitor.scheduler import HeuristicScheduler
    from trainers.trainables import TRAINABLES

    storage = storage.resolve()
    rules = load_experiment_rules(exp)
    resolve_master_checkpoint(exp, storage)
    iterations = max_iterations or exp.max_iterations
    name = resume.name if resume else f"{exp.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    if resume:
        storage = resume.resolve().parent
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    trainable = tune.with_resources(TRAINABLES[exp.trainer], dict(exp.resources))
    started = time.time()
    tune_root = tune_storage.rstrip("/") if tune_storage else str(storage)
    if resume:  # Tune restores its pickled scheduler and callbacks; they reload their state
        tuner = tune.Tuner.restore(f"{tune_root}/{name}", trainable, resume_errored=True)
        results = tuner.fit()
        return summarise(exp, name, storage, results, started)
    exporter = HealthExporterCallback(exp.name, name, sd_dir=storage / "file_sd")
    try:
        exporter.start()
    except ExporterError as exc:
        raise ConfigError("exporter", None, str(exc)) from None
    console.print(f"Health metrics of {name}: {exporter.exporter.url} "
                  f"(file_sd: {exporter.exporter.sd_file})")
    console.print(f"Early kill: {len(rules)} rules from {', '.join(exp.heuristics) or 'none'}"
                  f"{' (shadow mode: nothing is stopped)' if shadow else ''}")
    store = RunStoreCallback(storage / name, exp.name, name, exp.metric, exp.mode, iterations,
                             exp.healthy_threshold)
    scheduler = HeuristicScheduler(rules, storage / name, exp.name, iterations, shadow=shadow,
                                   scheduler=make_wrapped(wrap, exp, iterations), run=name)
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
        run_config=tune.RunConfig(name=name, storage_path=tune_root,
                                  callbacks=[exporter, store, *(callbacks or [])],
                                  verbose=verbose, progress_reporter=reporter if verbose else None,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    try:
        results = tuner.fit()
    finally:
        exporter.close()
    return summarise(exp, name, storage, results, started)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def summarise(exp, name: str, storage: Path, results, started: float) -> dict[str, Any]:
    """The run's summary from Tune's results and the verdict log; also written to
    ``<storage>/<name>/summary.json``."""
    from monitor.scheduler import VerdictLog

    verdicts = VerdictLog(storage / name / "heuristics" / "verdicts.jsonl").read()
    kills = {v["trial"]: v for v in verdicts if v["action"] == "kill" and not v.get("shadow")}
    trials = []
    for r in results:
        m = r.metrics or {}
        cfg = r.config or {}
        trials.append({
            "trial_id": m.get("trial_id") or Path(r.path).name,
            "variant": cfg.get("variant", {}).get("name"),
            "seed": cfg.get("seed"),
            "iterations": m.get("training_iteration", 0),
            "metric": m.get(exp.metric),
            "error": str(r.error) if r.error else None,
            "checkpoint": (str(Path(r.checkpoint.path) / "model.pt") if r.checkpoint else None),
            "path": r.path,
            "last": {k: v for k, v in m.items() if isinstance(v, (int, float, str))},
        })
        trial_id = trials[-1]["trial_id"]
        if trial_id in kills:
            v = kills[trial_id]
            trials[-1]["killed"] = {k: v[k] for k in ("rule", "failure", "iteration", "reason")}
    sign = 1 if exp.mode == "min" else -1
    ranked = sorted((t for t in trials if _finite(t["metric"]) and t["checkpoint"]),
                    key=lambda t: sign * t["metric"])
    summary = {"name": name, "experiment": exp.name, "trainer": exp.trainer,
               "metric": exp.metric, "mode": exp.mode, "verdicts": len(verdicts),
               "warnings": sum(v["action"] == "warn" or bool(v.get("shadow")) for v in verdicts),
               "storage": str(storage / name), "started": started, "finished": time.time(),
               "trials": trials, "best": ranked[0] if ranked else None}
    (storage / name / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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
        if t.get("killed"):
            status = f"killed: {t['killed']['rule']} @{t['killed']['iteration']}"
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
    try:
        exp = experiments.load(args.experiment)
        load_experiment_rules(exp)
        resolve_master_checkpoint(exp, args.storage.resolve())
    except ConfigError as exc:
        print_error(str(exc))
        return 2
    except RuleErrors as exc:
        print_error(f"the experiment's rules do not load; no trial was started:\n{exc}")
        return 2
    summary = run(exp, args.storage, args.max_iterations, args.address, shadow=args.shadow,
                  wrap=args.wrap, resume=args.resume, tune_storage=args.tune_storage)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
