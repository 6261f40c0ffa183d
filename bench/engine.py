"""Driver cost per result of the early-kill scheduler (``make bench-engine``).

Feeds ``HeuristicScheduler.on_trial_result`` (rule engine, verdict recording, incremental rule
state, signal coverage) the flattened results Tune would pass, 50 layers each, with the
built-in rules, and times the results after ``--history`` of them; writes
``bench/results/engine.json``. Goal (issue 13): at most 1 ms per result after 1,000 reports.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from unittest.mock import MagicMock

from bench.overhead import device_description
from heuristics.rules import load_rules
from heuristics.vocabulary import Vocabulary
from monitor.console import console

RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"
SIGNALS = ("dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std",
           "activation_mean", "nonfinite_count")


def result(i: int, layers: int, rng: random.Random) -> dict[str, float]:
    """A healthy flattened Tune result of a GAN-like training with ``layers`` layers."""
    out = {"training_iteration": i, "time_total_s": float(i), "loss_g": 2 + rng.random(),
           "loss_d": 0.3 + 0.1 * rng.random(), "loss_adv": 0.5, "val_logmel": 2.0,
           "health/model/power_ratio_db": -3.0 + rng.random()}
    for layer in range(layers):
        values = (0.1 * rng.random(), 0.1 * rng.random(), 0.8, 0.5 + 0.1 * rng.random(),
                  0.1, 0.0)
        for name, value in zip(SIGNALS, values):
            out[f"health/layers/l{layer}/{name}"] = value
    return out


def measure(history: int, timed: int, layers: int) -> dict[str, float]:
    from ray.tune.experiment import Trial

    from monitor.driver.scheduler import HeuristicScheduler

    rules = load_rules(["builtin"])
    vocab = Vocabulary(generator_loss="loss_g", discriminator_loss="loss_d",
                       adversarial_loss="loss_adv", validation="val_logmel")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        sched = HeuristicScheduler(rules, Path(d) / "run", "bench", budget=10 * history,
                                   run="bench-engine", vocabulary=vocab)
        trial, controller = Trial("__fake", stub=True), MagicMock()
        sched.on_trial_add(controller, trial)
        for i in range(1, history + 1):
            sched.on_trial_result(controller, trial, result(i, layers, rng))
        times, cpu = [], []
        for i in range(history + 1, history + timed + 1):
            r = result(i, layers, rng)
            start, start_cpu = time.perf_counter(), time.thread_time()
            sched.on_trial_result(controller, trial, r)
            times.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
        state_bytes = (Path(d) / "run" / "heuristics" / "state.sqlite").stat().st_size
    times.sort()
    return {"rules": len(rules), "layers": layers, "history_reports": history,
            "timed_reports": timed, "median_ms": 1e3 * statistics.median(times),
            "p90_ms": 1e3 * times[math.ceil(0.9 * len(times)) - 1],
            "mean_ms": 1e3 * statistics.fmean(times),
            "cpu_median_ms": 1e3 * statistics.median(cpu), "state_file_bytes": state_bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--timed", type=int, default=300)
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with console.status(f"feeding {args.history + args.timed} results of {args.layers} layers"):
        figures = measure(args.history, args.timed, args.layers)
    figures.update(device=device_description(), goal_ms=1.0,
                   measured=time.strftime("%Y-%m-%d %H:%M:%S"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    console.print(f"{figures['rules']} rules x {figures['layers']} layers after "
                  f"{figures['history_reports']} reports: median {figures['median_ms']:.3f} ms, "
                  f"p90 {figures['p90_ms']:.3f} ms per result (goal <= 1 ms), CPU time median "
                  f"{figures['cpu_median_ms']:.3f} ms; state file "
                  f"{figures['state_file_bytes']} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
