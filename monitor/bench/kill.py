"""Kill-quality benchmark: ``make bench-kill`` -> ``bench/results/kill.json`` and ``kill.md``.

One population of master trainings (the master_v464 variants: healthy ones and ones that fail
in each known way, failures starting at different times) runs under four policies on the same
seeds:

1. no early stopping (run in shadow mode: nothing is stopped) - gives each trial's true outcome
   and the onset of its failure;
2. the heuristic scheduler with the built-in rules;
3. Ray Tune's ASHA on the quality metric;
4. Ray Tune's MedianStoppingRule on the quality metric.

Truth. Each variant's failure is known by design (``EXPECTED``). Its *onset* is the first
iteration of the no-stopping run at which the failure is present by a definition of its own,
independent of the rules' thresholds (``ONSET``). Detection delay = stop iteration - onset.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from monitor.bench.overhead import device_description
from monitor.store import RunStore

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
console = Console()

EXPECTED = {  # variant -> failure ("healthy" when the configuration is meant to train well)
    "healthy": "healthy", "healthy_leaky": "healthy", "healthy_wide": "healthy",
    "activation_explosion_init": "healthy",  # explodes at first, then recovers
    "dead_relu_high_lr": "dead_relu_collapse", "dead_relu_bias_init": "dead_relu_collapse",
    "evergreen_bias_init": "dead_relu_collapse",  # linear first layer, then late ReLU death
    "silence_collapse": "silence_collapse",
    "discriminator_overpowering": "discriminator_overpowering", "divergence": "divergence",
}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def onset(failure: str, results: list[dict[str, Any]]) -> int | None:
    """First iteration at which ``failure`` is present (definitions, not the rules)."""
    for r in results:
        layers = {k: v for k, v in r.items() if k.startswith("health/layers/")}
        dead = [v for k, v in layers.items() if k.endswith("/dead_ratio") and _finite(v)]
        if failure == "divergence" and not _finite(r.get("loss_g", 0.0)):
            return r["training_iteration"]
        if failure == "dead_relu_collapse" and dead and max(dead) >= 0.9:
            return r["training_iteration"]  # a layer with 90 % of its units dead
        if failure == "silence_collapse" and _finite(r.get("health/model/power_ratio_db")) \
                and r["health/model/power_ratio_db"] < -10.0:
            return r["training_iteration"]  # output 10 dB quieter than the target
        if failure == "discriminator_overpowering" and _finite(r.get("loss_d")) \
                and r["loss_d"] < 0.015:
            return r["training_iteration"]
    return None


def run_policy(policy: str, exp_name: str, storage: Path, iterations: int, seeds: int
               ) -> dict[str, Any]:
    from trainers import experiment
    from trainers import tune as runner

    exp = experiment.load(exp_name)
    if seeds > 1:
        exp.search_space = {"seed": {"grid": list(range(seeds))}}
    wrap = {"asha": "asha", "median": "median"}.get(policy)
    if policy in ("asha", "median"):
        exp.heuristics = []  # Ray Tune's scheduler alone
    return runner.run(exp, storage=storage, max_iterations=iterations, wrap=wrap,
                      shadow=policy == "none", verbose=0)


def evaluate(policy: str, summary: dict[str, Any], truth: dict[str, dict[str, Any]],
             budget: int) -> dict[str, Any]:
    trials = []
    for t in summary["trials"]:
        stopped = t["iterations"] < budget
        trials.append({"variant": t["variant"], "seed": t.get("seed"),
                       "iterations": t["iterations"], "stopped": stopped, "metric": t["metric"],
                       "by": (t.get("killed") or {}).get("rule") or (policy if stopped else None),
                       **truth[f"{t['variant']}/{t.get('seed')}"]})
    failing = [t for t in trials if t["failure"] != "healthy"]
    healthy = [t for t in trials if t["failure"] == "healthy"]
    stopped_failing = [t for t in failing if t["stopped"]]
    false_kills = [t for t in healthy if t["stopped"]]
    delays = [t["iterations"] - t["onset"] for t in stopped_failing if t["onset"] is not None]
    used = sum(t["iterations"] for t in trials)
    full = budget * len(trials)
    finals = [t["metric"] for t in trials if _finite(t["metric"]) and not t["stopped"]]
    return {
        "policy": policy, "trials": trials, "trial_iterations": used,
        "saved_pct": 100.0 * (full - used) / full,
        "recall": len(stopped_failing) / len(failing) if failing else None,
        "false_kills": len(false_kills),
        "precision": (len(stopped_failing) / (len(stopped_failing) + len(false_kills))
                      if stopped_failing or false_kills else None),
        "median_delay_iterations": statistics.median(delays) if delays else None,
        "median_delay_pct_budget": 100.0 * statistics.median(delays) / budget if delays
        else None,
        "best_final_quality": min(finals) if finals else None,
    }


def markdown(result: dict[str, Any]) -> str:
    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"Kill benchmark ({result['trials_per_policy']} master trials x "
             f"{result['budget']} iterations per policy; {result['device']}; "
             f"{result['date']}; `make bench-kill`)", "",
             "| policy | trial-iterations | saved | recall | false kills | precision | "
             "median delay (it) | median delay (% budget) | best final val_logmel |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in result["policies"]:
        lines.append(f"| {p['policy']} | {p['trial_iterations']} | {f(p['saved_pct'], '.0f')}%"
                     f" | {f(p['recall'])} | {p['false_kills']} | {f(p['precision'])} | "
                     f"{f(p['median_delay_iterations'], '.1f')} | "
                     f"{f(p['median_delay_pct_budget'], '.1f')} | "
                     f"{f(p['best_final_quality'], '.3f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="master_v464")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--scale", type=int, default=1, help="seeds per variant (GPU machines)")
    parser.add_argument("--storage", type=Path, default=Path("runs") / "bench-kill")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.time()
    summaries: dict[str, dict[str, Any]] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("policies", total=4)
        for policy in ("none", "heuristic", "asha", "median"):
            progress.update(task, description=f"policy {policy}")
            summaries[policy] = run_policy(policy, args.experiment, args.storage,
                                           args.iterations, args.scale)
            progress.advance(task)
    truth: dict[str, dict[str, Any]] = {}
    base = summaries["none"]
    store = RunStore(Path(base["storage"]), create=False)
    try:
        for t in base["trials"]:
            failure = EXPECTED.get(t["variant"], "healthy")
            truth[f"{t['variant']}/{t.get('seed')}"] = {
                "failure": failure,
                "onset": onset(failure, store.results(t["trial_id"]))
                if failure != "healthy" else None,
                "final_metric_without_stopping": t["metric"]}
    finally:
        store.db.close()
    policies = [evaluate(p, summaries[p], truth, args.iterations) for p in summaries]
    result = {"device": device_description(), "experiment": args.experiment,
              "budget": args.iterations, "trials_per_policy": len(base["trials"]),
              "seconds": time.time() - started, "truth": truth, "policies": policies,
              "runs": {p: s["storage"] for p, s in summaries.items()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    (args.out / "kill.md").write_text(table)
    console.print(table)
    console.print(f"wrote {args.out / 'kill.json'} and {args.out / 'kill.md'} "
                  f"({result['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
