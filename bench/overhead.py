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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from monitor.training.hooks import HealthMonitor
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


def block_ratio(times: dict[str, list[float]], mode: str, block: int) -> float:
    """Median over blocks of ``block`` consecutive rounds of (time of ``mode`` / unmonitored
    time): each block holds whole sampling periods, so sampled steps count (a median of single
    steps would hide them at sampling every 4)."""
    base, other = times["unmonitored"], times[mode]
    ratios = [sum(other[i:i + block]) / sum(base[i:i + block])
              for i in range(0, len(base) - block + 1, block)]
    return statistics.median(ratios)


def paired_ratio(times: dict[str, list[float]], mode: str, every: int) -> float:
    """Mean over the ``every`` sampling phases of the median, over rounds in that phase, of
    (time of ``mode`` / unmonitored time in the same round).

    Pairing steps of one round cancels the machine's drift, and the median per phase drops
    the few steps another process preempted, while the sampled phase still counts once per
    period: the expected cost per step. (On this VM both this and ``block_ratio`` still vary
    by about +-0.5 % between runs.)
    """
    base, other = times["unmonitored"], times[mode]
    ratios = [o / b for o, b in zip(other, base)]
    return statistics.fmean(statistics.median(ratios[p::every]) for p in range(every))


class Clock:
    """Wall time and this thread's CPU time of a block (CPU time is what the monitor costs a
    single-threaded training; wall time also counts a busy machine's other processes)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.thread_time() - self.cpu


def interleave(step: Callable[[str], tuple[float, float]], modes: list[str], steps: int,
               after: Callable[[str, int], None] | None = None,
               progress: str | None = None) -> dict[str, dict[str, list[float]]]:
    """Run ``step(mode)`` (returning its (CPU, wall) duration) for every mode in every round,
    rotating the order each round, so that every mode sees the same machine state;
    ``after(mode, round)`` runs untimed after each step (reports).

    Returns ``{"cpu": {mode: [s]}, "wall": {mode: [s]}}``."""
    times: dict[str, dict[str, list[float]]] = {"cpu": {m: [] for m in modes},
                                                "wall": {m: [] for m in modes}}
    with Progress(disable=progress is None) as bar:
        task = bar.add_task(progress or "", total=steps)
        for i in range(steps):
            for mode in modes[i % len(modes):] + modes[: i % len(modes)]:
                cpu, wall = step(mode)
                times["cpu"][mode].append(cpu)
                times["wall"][mode].append(wall)
                if after is not None:
                    after(mode, i)
            bar.advance(task)
    return times


def summary(times: dict[str, list[float]], default_every: int) -> dict[str, Any]:
    """Median step times and the monitored/unmonitored ratios of interleaved ``times``
    (one clock)."""
    median = {m: statistics.median(v) for m, v in times.items()}
    return {"median_step_s": median,
            "ratio_every_step": median["every_step"] / median["unmonitored"],
            "ratio_default": median["default"] / median["unmonitored"],
            "block_ratio_every_step": block_ratio(times, "every_step", default_every),
            "block_ratio_default": block_ratio(times, "default", default_every),
            "paired_ratio_every_step": paired_ratio(times, "every_step", 1),
            "paired_ratio_default": paired_ratio(times, "default", default_every)}


def summaries(times: dict[str, dict[str, list[float]]], default_every: int) -> dict[str, Any]:
    """``summary`` of wall time at the top level (as before) and of CPU time under ``cpu``."""
    out = summary(times["wall"], default_every)
    if times.get("cpu") and any(times["cpu"].values()):
        out["cpu"] = summary(times["cpu"], default_every)
    return out


def run(steps: int, default_every: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    training = MasterTraining({})
    training.monitor.close()
    monitors = {"every_step": HealthMonitor(training.generator, every=1),
                "default": HealthMonitor(training.generator, every=default_every)}
    for m in monitors.values():
        m.remove_hooks()
    collect_s: list[float] = []
    for _ in range(5):  # warm-up
        training._g_step(*training._batch())

    def step(mode: str) -> tuple[float, float]:
        # Hooks are registered outside the timed step; each monitor's schedule and window
        # persist across its steps, as in a real training.
        training.monitor = monitors.get(mode) or NoMonitor()
        training.monitor.reopen()
        batch = training._batch()
        with Clock() as clock:
            training._g_step(*batch)
            batch = getattr(monitors.get(mode), "batch", None)
            if batch is not None:  # work a hook left for later is part of the step
                batch.flush()
        training.monitor.remove_hooks()
        return clock.cpu, clock.wall

    def after(mode: str, i: int) -> None:
        if mode != "unmonitored" and i % 20 == 19:  # one report per 20 steps
            start = time.perf_counter()
            monitors[mode].collect()
            if mode == "every_step":
                collect_s.append(time.perf_counter() - start)

    times = interleave(step, ["unmonitored", "every_step", "default"], steps, after,
                       progress="overhead")
    return {
        "device": device_description(),
        "torch": torch.__version__,
        "model": {k: MASTER_DEFAULTS[k] for k in ("width", "depth", "batch_size", "segment")},
        "steps_per_mode": steps, "default_every": default_every,
        **summaries(times, default_every),
        "method": "the three modes alternate step by step (order rotated every step) on one "
                  "training; ratio = median monitored step time / median unmonitored step "
                  "time; block_ratio = median over blocks of default_every rounds of the "
                  "summed step times (counts the sampled steps of the default sampling); "
                  "top level: wall time, 'cpu': this thread's CPU time (torch on 1 thread); a "
                  "step is one generator update with its discriminator update(s)",
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
                                              "block_ratio_every_step", "block_ratio_default",
                                              "median_step_s", "cpu")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
