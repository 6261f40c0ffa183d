"""Hook overhead on the zoo (code nobody here wrote), eager and compiled:
``make bench-overhead`` (after the master) or ``python -m bench.zoo.overhead`` ->
``bench/results/overhead_zoo.json``.

For each model, three copies with the same weights train side by side on the same batch, their
steps interleaved (order rotated each round, as ``bench.overhead``): no monitor, hooks sampling
every step, hooks at the default sampling. A step is ``health.step()``, forward, a mean-square
loss on the output, backward and an SGD update; one report per 20 steps, untimed. Compiled:
each copy is attached first, then compiled (``torch.compile``, inductor), and warmed up for two
report windows, until every graph exists (sampled and not; a model whose first window found no
activation call has a sampled graph without the activation mode from its second), so
compilation is never timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.overhead import Clock, device_description, interleave, summaries
from bench.zoo.models import ZOO, Entry, build
from monitor.training.hooks import DEFAULT_EVERY, HealthMonitor, attach

RESULTS = Path(__file__).resolve().parents[1] / "results" / "overhead_zoo.json"
GOALS = {"every_step": 1.03, "default": 1.01}
MODES = ["unmonitored", "every_step", "default"]
# One model per family is compiled by default: inductor on the CPU takes a minute or more per
# graph here, and each monitored copy has two graphs (sampled and not).
COMPILED = ("transformers/BertModel", "timm/resnet10t", "transformers/SpeechT5HifiGan",
            "torch/LSTM language model")


def measure(entry: Entry, steps: int, compiled: bool, every: int = DEFAULT_EVERY
            ) -> dict[str, Any]:
    """Interleaved step times of one zoo model, unmonitored and monitored (see the module)."""
    model, forward = build(entry)
    models = {mode: copy.deepcopy(model) for mode in MODES}
    monitors: dict[str, HealthMonitor] = {"every_step": attach(models["every_step"], every=1),
                                          "default": attach(models["default"], every=every)}
    run = {m: torch.compile(models[m]) if compiled else models[m] for m in MODES}
    optimisers = {m: torch.optim.SGD(models[m].parameters(), lr=1e-4) for m in MODES}

    def train_step(mode: str) -> None:
        loss = forward(run[mode]).float().square().mean()
        loss.backward()
        optimisers[mode].step()
        optimisers[mode].zero_grad(set_to_none=True)

    def step(mode: str) -> tuple[float, float]:
        monitor = monitors.get(mode)
        with Clock() as clock:
            if monitor is not None:
                monitor.step()
            train_step(mode)
            if monitor is not None:  # work a hook left for later is part of the step
                monitor.batch.flush()
        return clock.cpu, clock.wall

    def after(mode: str, i: int) -> None:
        if mode in monitors and i % 20 == 19:
            monitors[mode].collect()

    warm = time.perf_counter()
    for _ in range(2):  # two windows: every graph (and the hook kernels) built, untimed
        for _ in range(2 * every):
            for mode in MODES:
                step(mode)
        layers = len(monitors["every_step"].collect()["layers"])
        monitors["default"].collect()
    warm = time.perf_counter() - warm
    times = interleave(step, MODES, steps, after)
    for monitor in monitors.values():
        monitor.close()
    out = summaries(times, every)
    return {"model": entry.name, "family": entry.family, "compiled": compiled,
            "steps_per_mode": steps, "default_every": every, "warm_up_s": warm,
            "layers_reported": layers, **out}


def verdict(row: dict[str, Any]) -> dict[str, bool]:
    """Whether the CPU-time paired ratios meet the goals (1.03x every step, 1.01x default)."""
    cpu = row.get("cpu", row)
    return {"every_step": cpu["paired_ratio_every_step"] <= GOALS["every_step"],
            "default": cpu["paired_ratio_default"] <= GOALS["default"]}


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="Hook overhead on the zoo (CPU time, paired ratio; goals 1.03x / 1.01x)")
    for column in ("model", "family", "mode", "step (ms)", "every step", "default"):
        out.add_column(column, justify="left" if column in ("model", "family", "mode")
                       else "right")
    for row in rows:
        cpu = row.get("cpu", row)
        ok = verdict(row)
        out.add_row(row["model"], row["family"], "compiled" if row["compiled"] else "eager",
                    f"{1000 * cpu['median_step_s']['unmonitored']:.1f}",
                    f"{cpu['paired_ratio_every_step']:.3f}" + ("" if ok["every_step"] else " !"),
                    f"{cpu['paired_ratio_default']:.3f}" + ("" if ok["default"] else " !"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per mode")
    parser.add_argument("--models", nargs="*", default=None,
                        help="zoo model names measured eager (default: all; none: only the "
                        "--compiled ones)")
    parser.add_argument("--compiled", nargs="*", default=None,
                        help="models to measure compiled too (no names: the default "
                        f"four, one per family: {', '.join(COMPILED)}; 'all': every model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    known = {e.name: e for e in ZOO}
    names = list(known) if args.models is None else args.models  # --models alone: none eager
    compiled = ([] if args.compiled is None else list(known) if args.compiled == ["all"]
                else args.compiled or list(COMPILED))
    for name in names + compiled:
        if name not in known:
            parser.error(f"unknown zoo model {name!r}; expected one of: {', '.join(known)}")
    torch.set_num_threads(args.threads)
    jobs = [(known[n], False) for n in names] + [(known[n], True) for n in compiled]
    rows = []
    with Progress() as bar:
        task = bar.add_task("zoo overhead", total=len(jobs))
        for entry, is_compiled in jobs:
            bar.update(task, description=f"{entry.name} ({'compiled' if is_compiled else 'eager'})")
            rows.append(measure(entry, args.steps, is_compiled))
            bar.advance(task)
    result = {"device": device_description(), "torch": torch.__version__,
              "threads": args.threads, "goals": GOALS,
              "method": "three copies of each model (same weights, same batch) interleaved "
                        "step by step; paired ratio = mean over sampling phases of the median "
                        "per-round ratio monitored/unmonitored (bench.overhead.paired_ratio); "
                        "'cpu': this thread's CPU time, top level: wall time",
              "rows": rows,
              "summary": {f"{r['model']} ({'compiled' if r['compiled'] else 'eager'})":
                          verdict(r) for r in rows},
              "median_paired_ratio_cpu": {
                  mode: statistics.median(r.get("cpu", r)[f"paired_ratio_{mode}"] for r in rows)
                  for mode in ("every_step", "default")},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    Console(width=120).print(table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
