"""Run-store write rate and size: ``make bench-store`` -> ``bench/results/store.json``.

Writes synthetic results shaped like a large trainer's (``--layers`` activation layers x 6
signals, 4 model signals, about 20 scalars and Tune's bookkeeping keys) from 16 trials through
``RunStore.add_result`` with the default batching, one verdict every 50 results, as the driver
does (each verdict is committed with an fsync), and again without verdicts; reports the
sustained rate (wall clock, and per CPU second: the machine may be shared) and the database
size per stored sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.overhead import device_description
from monitor.store import RunStore

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"
SIGNALS = ("dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std",
           "activation_mean", "nonfinite_count")


def synthetic(i: int, layers: int = 50) -> dict[str, Any]:
    """One Tune result (nested, as callbacks get it) of iteration ``i``."""
    health = {f"blocks.{k}.act": {s: 0.1 * k + i * 1e-4 + j * 1e-3 for j, s in enumerate(SIGNALS)}
              for k in range(layers)}
    scalars = {f"loss_{n}": 1.0 / (i + 1) for n in ("g", "d", "adv", "fm", "power", "spectral")}
    scalars.update({f"metric_{n}": float(n) + 1.0 / (i + 1) for n in range(14)})
    bookkeeping = {"timestamp": 1.7e9 + i, "time_this_iter_s": 1.0, "pid": 4242,
                   "time_since_restore": float(i), "iterations_since_restore": i,
                   "done": False, "hostname": "vm", "trial_id": "t"}
    return {"training_iteration": i, "time_total_s": float(i),
            "health": {"layers": health, "model": {"power_ratio_db": -3.0, "power_loss": 1.0,
                                                   "output_power_db": -1.0,
                                                   "target_power_db": 2.0}},
            **scalars, **bookkeeping}


def measure(results: int, layers: int, store_cls: type = RunStore,
            verdict_every: int | None = 50) -> dict[str, Any]:
    """Write ``results`` results from 16 trials (and a durable verdict every
    ``verdict_every`` results); the rate (wall and CPU time) and the size per sample."""
    payload = [synthetic(i // 16 + 1, layers) for i in range(0, results, 16)]
    with tempfile.TemporaryDirectory() as d:
        store = store_cls(d)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(results):
            store.add_result(f"trial_{i % 16}", payload[i // 16])
            if verdict_every and i % verdict_every == verdict_every - 1:
                store.add_verdict({"trial": f"trial_{i % 16}", "iteration": i, "wall_time": 0.0,
                                   "rule": "r", "failure": "f", "action": "warn",
                                   "shadow": False, "reason": "x"})
        store.close()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        path = Path(d) / "monitor.sqlite"
        with sqlite3.connect(path) as db:  # fold the WAL in, then measure the file
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with store_cls(d, create=False) as check:
            samples = check.db.execute("SELECT count(*) FROM samples").fetchone()[0]
        size = path.stat().st_size
    return {"results": results, "layers": layers, "samples": samples,
            "samples_per_result": samples / results, "verdict_every": verdict_every,
            "seconds": elapsed, "cpu_seconds": cpu, "results_per_s": results / elapsed,
            "results_per_cpu_s": results / cpu, "samples_per_s": samples / elapsed,
            "bytes": size, "bytes_per_sample": size / samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=int, default=20000)
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {"device": device_description(), **measure(args.results, args.layers),
              "without_verdicts": measure(args.results, args.layers, verdict_every=None),
              "load_average_1m": os.getloadavg()[0],
              "goals": {"results_per_s": 5000, "bytes_per_sample": 25},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
