"""Scale benchmark: ``make bench-scale`` -> ``bench/results/scale.json``.

Every figure of "a thousand trials of fifty layers on one driver":

- ``scrape``: one ``/metrics`` scrape over HTTP (gzip, as Prometheus asks, and plain) of 10,
  100 and 1,000 trials x 50 layers, each after one trial reported (so the body is rebuilt), and
  the driver's cost of one result (``SignalSnapshot.update``);
- ``store``: run-store results/s and bytes per sample at 50 layers (``bench.store``);
- ``hook_memory``: extra peak memory of a sampled forward pass over a 256 MiB ReLU output
  (peak RSS on CPU, ``max_memory_allocated`` on CUDA), relative to the unsampled pass;
- ``overhead``: step-time ratios, monitored over unmonitored, modes interleaved step by step in
  one run (``bench.overhead``), on the master model and on a 32 x Linear(256)+ReLU MLP
  (batch 64), sampling every step and at the default (every 4 steps);
- ``gpu``: the MLP overhead and the hook memory on CUDA when available (steps timed with CUDA
  events; the hooks never synchronise with the host).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.overhead import Clock, device_description, interleave, summaries
from bench.overhead import run as master_overhead
from bench.store import SIGNALS, measure
from monitor.serving.exporter import Exporter
from monitor.training.hooks import DEFAULT_EVERY, HealthMonitor
from monitor.training.signals import CHUNK, release_scratch

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
GOALS = {"scrape_100_trials_s": 0.10, "scrape_1000_trials_s": 1.0, "store_results_per_s": 5000,
         "store_bytes_per_sample": 25, "hook_extra_peak_fraction": 0.05,
         "mlp_ratio_every_step": 1.05, "mlp_ratio_default": 1.01}
# Measured in this session on the same machine, with the same procedures, at commit 1237a01
# (before this work): see the report of issue 15.
BEFORE = {"commit": "1237a01", "scrape_s": {"10": 0.068, "100": 0.52, "1000": 5.5},
          "store_results_per_s": 359, "store_bytes_per_sample": 59.4,
          "hook_extra_peak_mib_256": 256.3,
          "mlp_block_ratio_cpu": {"every_step": 1.203, "default": 1.054},
          "master_ratio_wall_median": {"every_step": 1.016, "default": 1.004}}


def machine() -> dict[str, Any]:
    return {"device": device_description(), "torch": torch.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_1m_at_start": os.getloadavg()[0],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# -- exporter ----------------------------------------------------------------------------------
def trial_result(i: int, iteration: int, layers: int = 50) -> dict[str, Any]:
    """A master-like Tune result: 50 layers x 6 signals, model power, losses, validation."""
    health = {f"generator.blocks.{k}.act": {s: 0.01 * k + 1e-3 * i + 1e-4 * iteration
                                            for s in SIGNALS} for k in range(layers)}
    return {"role": "master", "training_iteration": iteration, "time_total_s": 2.0 * iteration,
            "loss_g": 1.0, "loss_d": 0.2, "loss_adv": 0.5, "loss_fm": 0.1, "loss_power": 0.3,
            "loss_spectral": 0.4, "grad_norm": 2.0, "val_logmel": 3.1, "val_power_ratio_db": -1,
            "step_time_s": 0.07, "timestamp": 1.7e9, "pid": 4242,
            "health": {"layers": health, "model": {"output_power_db": -3.0,
                                                   "target_power_db": 0.0, "power_loss": 12.0,
                                                   "power_ratio_db": -3.0},
                       "sampled_steps": 5}}


def scrape(trials: int, repeats: int) -> dict[str, Any]:
    exporter = Exporter("master_v464", f"bench_scale_{trials}", host="127.0.0.1", port=0)
    exporter.start()
    try:
        ids = [f"48e45_{i:05d}" for i in range(trials)]
        start = time.perf_counter()
        for i, trial in enumerate(ids):
            exporter.snapshot.update("master_v464", trial, trial_result(i, 1))
        update_s = (time.perf_counter() - start) / trials
        timings: dict[str, list[float]] = {"gzip": [], "plain": []}
        sizes = {}
        for r in range(repeats):
            for kind in timings:
                # A trial reports between scrapes: the body is rebuilt, as in a live run.
                exporter.snapshot.update("master_v464", ids[r % trials], trial_result(r, r + 2))
                headers = {"Accept-Encoding": "gzip"} if kind == "gzip" else {}
                request = urllib.request.Request(exporter.url, headers=headers)
                start = time.perf_counter()
                with urllib.request.urlopen(request, timeout=120) as response:
                    body = response.read()
                timings[kind].append(time.perf_counter() - start)
                sizes[kind] = len(body)
                if kind == "plain":
                    series = sum(1 for line in body.splitlines()
                                 if line and not line.startswith(b"#"))
    finally:
        exporter.snapshot.scraped = None  # nobody waits for a final scrape here
        exporter.stop()
    return {"trials": trials, "layers": 50, "series": series,
            "scrape_gzip_s": statistics.median(timings["gzip"]),
            "scrape_plain_s": statistics.median(timings["plain"]),
            "body_bytes": sizes["plain"], "gzip_bytes": sizes["gzip"],
            "update_per_result_s": update_s, "repeats": repeats}


# -- hook memory ---------------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM")


def hook_memory(device: str = "cpu", mib: int = 256) -> dict[str, Any]:
    """Extra peak memory of a sampled forward over a ``mib`` MiB ReLU output."""
    model = nn.Sequential(nn.ReLU())
    monitor = HealthMonitor(model, every=1)
    monitor.step()
    model(torch.randn(2, 8, 1 << 17, device=device))  # every kernel's code loaded once
    monitor.collect()
    release_scratch()  # its shared chunk buffer counts in the sampled pass below
    x = torch.randn(16, 64, mib * (1 << 20) // (16 * 64 * 4), device=device)
    cuda = device != "cpu"

    def peak(sampled: bool) -> float:
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        monitor.step()
        if sampled:
            y = model(x)
        else:
            with monitor.paused():
                y = model(x)
        del y
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return _peak_rss_mib()

    baseline = min(peak(False) for _ in range(2))
    sampled = max(peak(True) for _ in range(3))
    monitor.collect()
    monitor.close()
    extra = sampled - baseline
    return {"activation_mib": x.numel() * 4 / 2**20, "shape": list(x.shape),
            "persistent_scratch_mib": CHUNK * 4 / 2**20,
            "method": "max_memory_allocated" if cuda else "peak RSS (VmHWM, reset by "
            "clear_refs) of a sampled forward minus that of an unsampled one",
            "baseline_peak_mib": baseline, "sampled_peak_mib": sampled,
            "extra_peak_mib": extra, "extra_peak_fraction": extra / (x.numel() * 4 / 2**20)}


# -- overhead on many small layers ----------------------------------------------------------
def mlp_overhead(steps: int, device: str = "cpu", layers: int = 32, width: int = 256,
                 batch: int = 64) -> dict[str, Any]:
    """Interleaved step times of an MLP of ``layers`` x Linear(width)+ReLU: unmonitored,
    sampled every step, default sampling; one report per 20 steps (untimed)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers)
                            for m in (nn.Linear(width, width), nn.ReLU())]).to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, width, device=device)
    target = torch.randn(batch, width, device=device)
    monitors = {"every_step": HealthMonitor(model, every=1),
                "default": HealthMonitor(model, every=DEFAULT_EVERY)}
    for m in monitors.values():
        m.remove_hooks()
    cuda = device != "cpu"
    events: list[tuple[str, Any, Any]] = []

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = (model(x) - target).square().mean()
        loss.backward()
        optimiser.step()

    def step(mode: str) -> tuple[float, float]:
        monitor = monitors.get(mode)
        if monitor is not None:
            monitor.reopen()
        if cuda:  # timed on the device: no host synchronisation per step
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            start.record()
            if monitor is not None:
                monitor.step()
            train_step()
            if monitor is not None:
                monitor.batch.flush()
            end.record()
            events.append((mode, start, end))
            elapsed = (0.0, 0.0)
        else:
            with Clock() as clock:
                if monitor is not None:
                    monitor.step()
                train_step()
                if monitor is not None:  # work a hook left for later is part of the step
                    monitor.batch.flush()
            elapsed = (clock.cpu, clock.wall)
        if monitor is not None:
            monitor.remove_hooks()
        return elapsed

    def after(mode: str, i: int) -> None:
        if mode in monitors and i % 20 == 19:
            monitors[mode].collect()

    for _ in range(10):
        train_step()
    for monitor in monitors.values():  # compiles the hook kernels once, untimed
        monitor.reopen()
        monitor.step()
        train_step()
        monitor.collect()
        monitor.remove_hooks()
    modes = ["unmonitored", "every_step", "default"]
    times = interleave(step, modes, steps, after)
    if cuda:
        torch.cuda.synchronize()
        times = {"wall": {m: [] for m in modes}}
        for mode, start, end in events:
            times["wall"][mode].append(start.elapsed_time(end) / 1000)
    for m in monitors.values():
        m.close()
    return {"model": f"{layers} x Linear({width})+ReLU, batch {batch}, SGD",
            "device": device, "steps_per_mode": steps, "default_every": DEFAULT_EVERY,
            **summaries(times, DEFAULT_EVERY)}


def gpu_section(steps: int) -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    out["hook_memory"] = hook_memory("cuda", 256)
    out["mlp_overhead"] = mlp_overhead(steps, "cuda")
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU()).cuda()
    monitor = HealthMonitor(model, every=1)
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync in the hooks raises
    try:
        for _ in range(3):
            monitor.step()
            model(torch.randn(64, 256, device="cuda"))
        out["hooks_sync_free"] = True
    except RuntimeError as exc:
        out["hooks_sync_free"] = False
        out["sync_error"] = str(exc).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    monitor.collect()
    monitor.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800, help="MLP steps per mode")
    parser.add_argument("--master-steps", type=int, default=200, help="master steps per mode")
    parser.add_argument("--store-results", type=int, default=20000)
    parser.add_argument("--only", nargs="*", default=None,
                        help="sections: scrape store memory mlp master gpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wanted = set(args.only or ["scrape", "store", "memory", "mlp", "master", "gpu"])
    result: dict[str, Any] = {"machine": machine(), "goals": GOALS, "before": BEFORE}
    if args.out.exists() and args.only:  # a partial run updates the previous results
        result = {**json.loads(args.out.read_text()), **result}
    log = lambda s: print(f"[bench-scale] {s}", file=sys.stderr, flush=True)  # noqa: E731
    if "scrape" in wanted:
        result["scrape"] = [scrape(n, r) for n, r in ((10, 20), (100, 10), (1000, 5))]
        log(f"scrape: {[(s['trials'], round(s['scrape_gzip_s'], 3)) for s in result['scrape']]}")
    if "store" in wanted:
        result["store"] = {**measure(args.store_results, 50), "without_verdicts": measure(
            args.store_results, 50, verdict_every=None)}
        log(f"store: {result['store']['results_per_s']:.0f} results/s "
            f"({result['store']['without_verdicts']['results_per_s']:.0f} without verdicts), "
            f"{result['store']['bytes_per_sample']:.1f} B/sample")
    if "memory" in wanted and sys.platform.startswith("linux"):
        result["hook_memory"] = hook_memory("cpu", 256)
        log(f"hook memory: +{result['hook_memory']['extra_peak_mib']:.1f} MiB")
    if "mlp" in wanted:
        result["overhead_mlp"] = mlp_overhead(args.steps)
        cpu = result["overhead_mlp"]["cpu"]
        log(f"mlp (CPU time, paired): {cpu['paired_ratio_every_step']:.3f} every step, "
            f"{cpu['paired_ratio_default']:.3f} default (blocks: "
            f"{cpu['block_ratio_every_step']:.3f}, {cpu['block_ratio_default']:.3f})")
    if "master" in wanted:
        result["overhead_master"] = master_overhead(args.master_steps, DEFAULT_EVERY, 1)
        cpu = result["overhead_master"]["cpu"]
        log(f"master (CPU time): {cpu['block_ratio_every_step']:.3f} every step, "
            f"{cpu['block_ratio_default']:.3f} default")
    if "gpu" in wanted:
        result["gpu"] = gpu_section(args.steps)
    result["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
