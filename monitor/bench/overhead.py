"""Hook overhead benchmark: ``make bench-overhead`` -> ``bench/results/overhead.json``.

Trains one master model and alternates blocks of steps in three modes on the same process and
data stream: no monitor at all, hooks sampling every step, hooks at the default sampling.
Reports median step times and the ratios monitored/unmonitored, with the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from monitor.hooks import HealthMonitor
from trainers.master import MASTER_DEFAULTS, MasterTraining

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "overhead.json"


class NoMonitor:
    """The unmonitored baseline: no hooks, no power statistics."""

    def step(self) -> bool:
        return False

    def observe_power(self, *args: Any) -> None:
        pass

    @contextlib.contextmanager
    def paused(self):
        yield

    def collect(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def device_description() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def run(rounds: int, steps: int, default_every: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    training = MasterTraining({"steps_per_iteration": steps})
    training.monitor.close()
    modes = {
        "unmonitored": lambda: NoMonitor(),
        "every_step": lambda: HealthMonitor(training.generator, every=1),
        "default": lambda: HealthMonitor(training.generator, every=default_every),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    collect_s: list[float] = []
    for _ in range(3):  # warm-up
        training._g_step(*training._batch())
    with Progress() as progress:
        task = progress.add_task("overhead", total=rounds * len(modes))
        for r in range(rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                training.monitor = modes[mode]()
                for _ in range(steps):
                    batch = training._batch()
                    start = time.perf_counter()
                    training._g_step(*batch)
                    times[mode].append(time.perf_counter() - start)
                start = time.perf_counter()
                training.monitor.collect()
                if mode == "every_step":
                    collect_s.append(time.perf_counter() - start)
                training.monitor.close()
                progress.advance(task)
    median = {m: statistics.median(v) for m, v in times.items()}
    return {
        "device": device_description(),
        "torch": torch.__version__,
        "model": {k: MASTER_DEFAULTS[k] for k in ("width", "depth", "batch_size", "segment")},
        "rounds": rounds, "steps_per_block": steps, "default_every": default_every,
        "median_step_s": median,
        "ratio_every_step": median["every_step"] / median["unmonitored"],
        "ratio_default": median["default"] / median["unmonitored"],
        "collect_median_s": statistics.median(collect_s),
        "goals": {"ratio_every_step": 1.03, "ratio_default": 1.01},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--default-every", type=int, default=MASTER_DEFAULTS["monitor_every"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.rounds, args.steps, args.default_every, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "ratio_every_step", "ratio_default",
                                              "median_step_s")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
