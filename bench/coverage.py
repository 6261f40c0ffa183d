"""Activation coverage benchmark: ``make bench-coverage`` -> ``bench/results/coverage.json``.

For every model of the zoo (``bench/zoo``: code nobody here wrote), the activation call sites
of one eager forward (counted independently, ``bench.zoo.coverage``) against the layers that
``health.collect()`` reports after ``monitor.attach(model)`` with the default sampling, eager
and (``--compiled``, every model, or ``--compiled-only NAME...``) under ``torch.compile``
(attached after compiling; inductor on the CPU takes about a minute per model here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.overhead import device_description
from bench.zoo.coverage import call_sites, reported
from bench.zoo.models import ZOO, build

RESULTS = Path(__file__).resolve().parent / "results" / "coverage.json"


def measure(compiled: set[str]) -> list[dict]:
    rows = []
    with Progress() as bar:
        task = bar.add_task("activation coverage", total=len(ZOO))
        for entry in ZOO:
            model, forward = build(entry)
            sites = call_sites(model, forward)
            eager, _ = reported(model, forward)
            row = {"model": entry.name, "family": entry.family, "call_sites": len(sites),
                   "seen_eager": len(sites & eager), "missing_eager": sorted(sites - eager),
                   "extra_eager": sorted(eager - sites)}
            if entry.name in compiled:
                torch._dynamo.reset()
                started = time.perf_counter()
                seen, _ = reported(torch.compile(model), forward)
                row.update(seen_compiled=len(sites & seen), missing_compiled=sorted(sites - seen),
                           compile_and_run_s=round(time.perf_counter() - started, 1))
            rows.append(row)
            bar.advance(task)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compiled", action="store_true", help="every model compiled too")
    parser.add_argument("--compiled-only", nargs="*", default=["torch/LSTM language model",
                                                              "transformers/SpeechT5HifiGan"],
                        help="models to run compiled too (default: a vocoder and an LSTM)")
    args = parser.parse_args()
    compiled = {e.name for e in ZOO} if args.compiled else set(args.compiled_only)
    rows = measure(compiled)
    total = sum(r["call_sites"] for r in rows)
    eager = sum(r["seen_eager"] for r in rows)
    comp_rows = [r for r in rows if "seen_compiled" in r]
    comp_total = sum(r["call_sites"] for r in comp_rows)
    comp_seen = sum(r["seen_compiled"] for r in comp_rows)
    table = Table(title="activation call sites reported by monitor.attach (default sampling)")
    for column in ("model", "family", "call sites", "seen eager", "seen compiled"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["model"], r["family"], str(r["call_sites"]), str(r["seen_eager"]),
                      str(r.get("seen_compiled", "-")))
    table.add_row("all", "", str(total), f"{eager} ({eager / total:.0%})",
                  f"{comp_seen}/{comp_total}" if comp_total else "-")
    Console(width=120).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "device": device_description(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "call_sites": total,
        "seen_eager": eager, "coverage_eager": eager / total,
        "compiled_call_sites": comp_total, "seen_compiled": comp_seen,
        "coverage_compiled": comp_seen / comp_total if comp_total else None,
        "models": rows}, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
