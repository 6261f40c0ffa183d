"""Run-store write rate: ``make bench-store`` -> ``bench/results/store.json``.

Writes synthetic results shaped like the master trainer's (5 activation layers x 6 signals,
4 model signals, about 20 scalars) through ``RunStore.add_result`` with the default batching,
and one verdict every 50 results, as the driver does; reports the sustained rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.overhead import device_description
from monitor.store import RunStore

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"


def synthetic(i: int) -> dict:
    layers = {f"blocks.{k}.act": {s: 0.1 * k + i * 1e-4 for s in (
        "dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std", "activation_mean",
        "nonfinite_count")} for k in range(5)}
    scalars = {f"loss_{n}": 1.0 / (i + 1) for n in ("g", "d", "adv", "fm", "power", "spectral")}
    scalars.update({f"metric_{n}": float(n) for n in range(14)})
    return {"training_iteration": i, "time_total_s": float(i),
            "health": {"layers": layers, "model": {"power_ratio_db": -3.0, "power_loss": 1.0,
                                                   "output_power_db": -1.0,
                                                   "target_power_db": 2.0}}, **scalars}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(d)
        rows = len(synthetic(0).keys()) + 34
        start = time.perf_counter()
        for i in range(args.results):
            store.add_result(f"trial_{i % 16}", synthetic(i // 16 + 1))
            if i % 50 == 49:
                store.add_verdict({"trial": f"trial_{i % 16}", "iteration": i, "wall_time": 0.0,
                                   "rule": "r", "failure": "f", "action": "warn",
                                   "shadow": False, "reason": "x"})
        store.close()
        elapsed = time.perf_counter() - start
        with RunStore(d, create=False) as check:
            samples = check.db.execute("SELECT count(*) FROM samples").fetchone()[0]
    result = {"device": device_description(), "results": args.results, "samples": samples,
              "seconds": elapsed, "results_per_s": args.results / elapsed,
              "samples_per_s": samples / elapsed, "approx_rows_per_result": rows,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
