"""Kill-quality benchmark: ``make bench-kill`` -> ``bench/results/kill.json`` and ``kill.md``.

One population of trials - the master_v464 variants and the student_v464_failures variants:
healthy configurations and ones that fail in each known way, failures starting at different
times - runs under four policies on the same seeds:

1. no early stopping (run in shadow mode: nothing is stopped) - gives each trial's true outcome
   and the onset of its failure;
2. the heuristic scheduler with the built-in rules;
3. Ray Tune's ASHA on the quality metric;
4. Ray Tune's MedianStoppingRule on the quality metric;
5. and 6. the heuristic scheduler wrapping ASHA, and wrapping the median rule
   (``TuneMonitor(scheduler=...)``: the rules first, the Ray scheduler when no rule kills).

Every student distils from the same teacher: the best trial of the policy-1 master run.

Truth. Each variant's failure is known by design (``EXPECTED``). Its *onset* is the first
iteration of the no-stopping run at which the failure is present by a definition of its own
(``onset``). Detection delay = stop iteration - onset, also as a share of the trial's budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bench.overhead import device_description
from monitor.console import console
from monitor.store import RunStore

RESULTS = Path(__file__).resolve().parent / "results"

EXPECTED = {  # variant -> failure ("healthy" when the configuration is meant to train well)
    # master_v464
    "healthy": "healthy", "healthy_leaky": "healthy", "healthy_wide": "healthy",
    "activation_explosion_init": "healthy",  # explodes at first, then recovers
    "dead_relu_high_lr": "dead_relu_collapse", "dead_relu_bias_init": "dead_relu_collapse",
    "evergreen_bias_init": "linearised_layer",  # a linear first layer, blocks die late
    "silence_collapse": "silence_collapse",
    "discriminator_overpowering": "discriminator_overpowering", "divergence": "divergence",
    # student_v464_failures (dead_relu_*, evergreen_bias_init as above)
    "healthy_low": "healthy", "healthy_medium": "healthy", "healthy_high": "healthy",
    "divergence_warmup": "divergence", "divergence_late": "divergence",
}
EXPERIMENTS = ("master_v464", "student_v464_failures")
POLICIES = ("none", "heuristic", "asha", "median", "heuristic+asha", "heuristic+median")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def onset(failure: str, results: list[dict[str, Any]]) -> int | None:
    """First iteration at which ``failure`` is present (definitions of the failures)."""
    lowest: dict[str, float] = {}
    for r in results:
        it = r["training_iteration"]
        layers = {k: v for k, v in r.items() if k.startswith("health/layers/")}
        dead = [v for k, v in layers.items() if k.endswith("/dead_ratio") and _finite(v)]
        always = [v for k, v in layers.items() if k.endswith("/evergreen_ratio") and _finite(v)]
        losses = {k: r[k] for k in ("loss", "loss_g", "loss_d") if k in r}
        training = {k: v for k, v in losses.items() if k != "loss_d"}
        if failure == "divergence":
            if any(not _finite(v) for v in losses.values()):
                return it  # a non-finite loss
            if any(k in lowest and v >= 3 * lowest[k] for k, v in training.items()):
                return it  # the training loss blew up to 3x its lowest value so far
            for k, v in training.items():
                lowest[k] = min(v, lowest.get(k, v))
        if failure == "dead_relu_collapse" and dead and max(dead) >= 0.9:
            return it  # a layer with 90 % of its units dead
        if failure == "linearised_layer" and always and max(always) >= 0.9:
            return it  # a layer with 90 % of its units always on
        if failure == "silence_collapse" and _finite(r.get("health/model/power_ratio_db")) \
                and r["health/model/power_ratio_db"] < -12.0:
            return it  # output 12 dB quieter than the target (healthy: -11 dB at worst)
        if failure == "discriminator_overpowering" and _finite(r.get("loss_d")) \
                and r["loss_d"] < 0.015:
            return it
    return None


def run_policy(policy: str, exp_name: str, storage: Path, iterations: int | None, seeds: int,
               teacher: str | None = None) -> dict[str, Any]:
    from trainers import experiment
    from trainers import tune as runner

    exp = experiment.load(exp_name)
    if seeds > 1:
        exp.search_space = {"seed": {"grid": list(range(seeds))}}
    if exp.trainer == "student":
        if not teacher:
            raise ValueError(f"{exp_name}: a student population needs a teacher checkpoint")
        exp.config["master_checkpoint"] = teacher
    wrap = {"asha": "asha", "median": "median", "heuristic+asha": "asha",
            "heuristic+median": "median"}.get(policy)
    if policy in ("asha", "median"):
        exp.heuristics = []  # Ray Tune's scheduler alone
    summary = runner.run(exp, storage=storage, max_iterations=iterations, wrap=wrap,
                         shadow=policy == "none", verbose=0)
    summary["budget"] = iterations or exp.max_iterations
    summary["metric_name"] = exp.metric
    summary["trainer"] = exp.trainer  # the run summary names no trainer: the experiment does
    return summary


def truth_of(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Failure, onset and final quality of every trial of a no-stopping run."""
    truth: dict[str, dict[str, Any]] = {}
    with RunStore(Path(summary["storage"]), create=False) as store:
        for t in summary["trials"]:
            failure = EXPECTED.get(t["variant"], "healthy")
            truth[key(summary, t)] = {
                "failure": failure,
                "onset": onset(failure, store.results(t["trial_id"]))
                if failure != "healthy" else None,
                "final_metric_without_stopping": t["metric"]}
    return truth


def key(summary: dict[str, Any], trial: dict[str, Any]) -> str:
    return f"{summary['experiment']}/{trial['variant']}/{trial.get('seed')}"


def evaluate(policy: str, summaries: list[dict[str, Any]], truth: dict[str, dict[str, Any]]
             ) -> dict[str, Any]:
    trials = []
    for summary in summaries:
        budget = summary["budget"]
        for t in summary["trials"]:
            stopped = t["iterations"] < budget
            # a stop no rule made is the (wrapped) Ray scheduler's
            by = (t.get("killed") or {}).get("rule") or (policy.split("+")[-1] if stopped
                                                         else None)
            trials.append({"experiment": summary["experiment"], "variant": t["variant"],
                           "seed": t.get("seed"), "budget": budget,
                           "iterations": t["iterations"], "stopped": stopped,
                           "metric": t["metric"], "by": by, **truth[key(summary, t)]})
    failing = [t for t in trials if t["failure"] != "healthy"]
    healthy = [t for t in trials if t["failure"] == "healthy"]
    stopped_failing = [t for t in failing if t["stopped"]]
    false_kills = [t for t in healthy if t["stopped"]]
    for t in stopped_failing:
        if t["onset"] is not None:
            t["delay"] = t["iterations"] - t["onset"]
            t["delay_pct_budget"] = 100.0 * t["delay"] / t["budget"]
    delays = [t for t in stopped_failing if "delay" in t]
    used = sum(t["iterations"] for t in trials)
    full = sum(t["budget"] for t in trials)
    best: dict[str, float | None] = {}
    for summary in summaries:
        finals = [t["metric"] for t in trials if t["experiment"] == summary["experiment"]
                  and _finite(t["metric"]) and not t["stopped"]]
        best[summary["experiment"]] = min(finals) if finals else None
    return {
        "policy": policy, "trials": trials, "trial_iterations": used,
        "budget_iterations": full, "saved_pct": 100.0 * (full - used) / full,
        "failing": len(failing), "healthy": len(healthy),
        "recall": len(stopped_failing) / len(failing) if failing else None,
        "false_kills": len(false_kills),
        "precision": (len(stopped_failing) / (len(stopped_failing) + len(false_kills))
                      if stopped_failing or false_kills else None),
        "median_delay_iterations": statistics.median(t["delay"] for t in delays)
        if delays else None,
        "median_delay_pct_budget": statistics.median(t["delay_pct_budget"] for t in delays)
        if delays else None,
        "best_final_quality": best,
    }


def markdown(result: dict[str, Any]) -> str:
    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    pops = ", ".join(f"{p['trials']} {p['experiment']} trials x {p['budget']} iterations"
                     for p in result["populations"])
    metrics = [(p["experiment"], p["metric"]) for p in result["populations"]]
    lines = [f"Kill benchmark ({pops}, per policy; {result['device']}; {result['date']}; "
             f"{result['seconds'] / 60:.0f} min; `make bench-kill`)", "",
             "| policy | trial-iterations | saved | recall | false kills | precision | "
             "median delay (it) | median delay (% budget) | "
             + " | ".join(f"best final {m} ({e})" for e, m in metrics) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(metrics)]
    for p in result["policies"]:
        lines.append(f"| {p['policy']} | {p['trial_iterations']} | {f(p['saved_pct'], '.0f')}%"
                     f" | {f(p['recall'])} | {p['false_kills']} | {f(p['precision'])} | "
                     f"{f(p['median_delay_iterations'], '.1f')} | "
                     f"{f(p['median_delay_pct_budget'], '.1f')} | "
                     + " | ".join(f(p["best_final_quality"].get(e), ".3f") for e, _ in metrics)
                     + " |")
    heuristic = next((p for p in result["policies"] if p["policy"] == "heuristic"), None)
    if heuristic:
        lines += ["", "Heuristic scheduler, failing trials:", "",
                  "| experiment | variant | failure | onset | stopped at | by rule | delay (it) |",
                  "|---|---|---|---|---|---|---|"]
        for t in heuristic["trials"]:
            if t["failure"] == "healthy":
                continue
            lines.append(f"| {t['experiment']} | {t['variant']} | {t['failure']} | "
                         f"{f(t['onset'], '.0f')} | "
                         f"{t['iterations'] if t['stopped'] else 'not stopped'} | "
                         f"{t['by'] or '-'} | {f(t.get('delay'), '.0f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS),
                        help="the populations (a master experiment first: it teaches the "
                        "students)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="budget per trial (default: each experiment's max_iterations)")
    parser.add_argument("--scale", type=int, default=1, help="seeds per variant (GPU machines)")
    parser.add_argument("--storage", type=Path, default=Path("runs") / "bench-kill")
    parser.add_argument("--no-heldout", action="store_true",
                        help="skip the in-sample / held-out split tables (bench.heldout)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.scale < 1:
        raise SystemExit(f"error: --scale must be >= 1, got {args.scale}")
    import ray

    # The trials' own logs (checkpoint lines) would bury the progress display.
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    started = time.time()
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
    teacher: str | None = None
    with Progress(console=console) as progress:
        task = progress.add_task("policies", total=len(POLICIES) * len(args.experiments))
        for policy in POLICIES:
            for name in args.experiments:
                progress.update(task, description=f"policy {policy}: {name}")
                summary = run_policy(policy, name, args.storage, args.iterations, args.scale,
                                     teacher)
                if policy == "none" and summary["trainer"] == "master" and teacher is None:
                    teacher = (summary.get("best") or {}).get("checkpoint")
                runs[policy].append(summary)
                progress.advance(task)
    truth: dict[str, dict[str, Any]] = {}
    for summary in runs["none"]:
        truth.update(truth_of(summary))
    policies = [evaluate(p, runs[p], truth) for p in POLICIES]
    result = {"device": device_description(), "experiments": args.experiments,
              "populations": [{"experiment": s["experiment"], "trials": len(s["trials"]),
                               "budget": s["budget"], "metric": s["metric_name"]}
                              for s in runs["none"]],
              "teacher": teacher, "seconds": time.time() - started, "truth": truth,
              "policies": policies,
              "runs": {p: [s["storage"] for s in ss] for p, ss in runs.items()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    (args.out / "kill.md").write_text(table)
    console.print(table)
    console.print(f"wrote {args.out / 'kill.json'} and {args.out / 'kill.md'} "
                  f"({result['seconds'] / 60:.1f} min)")
    if not args.no_heldout:  # the same rules on trainings they were never tuned on
        from bench.heldout import splits

        splits.tables(runs=tuple(Path(s["storage"]) for s in runs["none"]))
        console.print((splits.RESULTS / "splits.md").read_text().split("\n## ")[0])
        console.print(f"wrote {splits.RESULTS / 'splits.md'} (in-sample = this run's "
                      "no-stopping populations; development and fresh held-out splits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
