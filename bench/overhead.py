"""Hook overhead benchmark: ``make bench-overhead`` -> ``bench/results/overhead.json``.

Trains one master model and alternates, step by step, three modes on the same process and
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

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"


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

    def reopen(self) -> None:
        pass

    def remove_hooks(self) -> None:
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


def run(steps: int, default_every: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    training = MasterTraining({})
    training.monitor.close()
    monitors = {"every_step": HealthMonitor(training.generator, every=1),
                "default": HealthMonitor(training.generator, every=default_every)}
    for m in monitors.values():
        m.remove_hooks()
    times: dict[str, list[float]] = {"unmonitored": [], "every_step": [], "default": []}
    collect_s: list[float] = []
    modes = list(times)
    for _ in range(5):  # warm-up
        training._g_step(*training._batch())
    with Progress() as progress:
        task = progress.add_task("overhead", total=steps)
        for i in range(steps):
            for mode in modes[i % 3:] + modes[: i % 3]:  # rotate the order every step
                # Hooks are registered outside the timed step; each monitor's schedule, window
                # and scratch buffers persist across its steps, as in a real training.
                training.monitor = monitors.get(mode) or NoMonitor()
                training.monitor.reopen()
                batch = training._batch()
                start = time.perf_counter()
                training._g_step(*batch)
                times[mode].append(time.perf_counter() - start)
                training.monitor.remove_hooks()
                if mode == "every_step" and i % 20 == 19:  # one report per 20 steps
                    start = time.perf_counter()
                    training.monitor.collect()
                    collect_s.append(time.perf_counter() - start)
            progress.advance(task)
    median = {m: statistics.median(v) for m, v in times.items()}
    return {
        "device": device_description(),
        "torch": torch.__version__,
        "model": {k: MASTER_DEFAULTS[k] for k in ("width", "depth", "batch_size", "segment")},
        "steps_per_mode": steps, "default_every": default_every,
        "median_step_s": median,
        "ratio_every_step": median["every_step"] / median["unmonitored"],
        "ratio_default": median["default"] / median["unmonitored"],
        "method": "the three modes alternate step by step (order rotated every step) on one "
                  "training; ratio = median monitored step time / median unmonitored step "
                  "time; a step is one generator update with its discriminator update(s)",
        "collect_median_s": statistics.median(collect_s),
        "goals": {"ratio_every_step": 1.03, "ratio_default": 1.01},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500, help="timed steps per mode")
    parser.add_argument("--default-every", type=int, default=MASTER_DEFAULTS["monitor_every"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.steps, args.default_every, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "ratio_every_step", "ratio_default",
                                              "median_step_s")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
