"""``python -m bench.heldout.insample``: the same policies and scoring on the in-sample split.

The in-sample split is ``bench.kill``'s population (the master_v464 and student_v464_failures
variants the built-in thresholds were tuned on). One no-stopping run of each (shadow mode, under
real Ray Tune, the students distilling from the master run's best trial) is recorded in a run
store; its trials are read back (``bench.policies.trials_from_store``: failure by design from
``bench.kill.EXPECTED``, onset from ``bench.kill.onset``) and replayed under every policy
exactly as the held-out trials are. ``--runs`` reuses recorded run directories.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import kill, policies
from bench.heldout.__main__ import device, final_tail
from bench.heldout.population import RESULTS
from bench.heldout.report import policy_table
from monitor.console import console


def record(storage: Path) -> list[tuple[str, Path, int]]:
    """No-stopping runs of both populations; ``[(experiment, run directory, budget)]``."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    master = kill.run_policy("none", "master_v464", storage, None, 1)
    teacher = (master.get("best") or {}).get("checkpoint")
    student = kill.run_policy("none", "student_v464_failures", storage, None, 1, teacher)
    return [(s["experiment"], Path(s["storage"]), s["budget"]) for s in (master, student)]


def trials_of(experiment: str, run_dir: Path, budget: int) -> list[policies.Trial]:
    from trainers import experiment as experiments

    exp = experiments.load(experiment)
    vocabulary = exp.vocabulary.model_dump(exclude_none=True)
    vocabulary.pop("role", None)
    return policies.trials_from_store(
        run_dir, experiment, exp.metric, vocabulary.get("mode", "min"), budget,
        failure_of=lambda row: kill.EXPECTED.get(row["variant"], "healthy"),
        onset_of=kill.onset, vocabulary=vocabulary, name_of=lambda row: row["variant"])


STORAGE = Path("runs") / "bench-insample"  # where ``record`` keeps its runs by default


def latest(storage: Path = STORAGE) -> tuple[Path, Path] | None:
    """The newest recorded master and student runs under ``storage`` (``None`` if missing)."""
    found = []
    for name in ("master_v464", "student_v464_failures"):
        runs = sorted((p for p in storage.glob(f"{name}_*") if p.is_dir()),
                      key=lambda p: p.stat().st_mtime)
        if not runs:
            return None
        found.append(runs[-1])
    return found[0], found[1]


def evaluate(runs: list[tuple[str, Path, int]], rule_sources: list[str]) -> dict[str, Any]:
    """Every policy on the recorded in-sample runs ``[(experiment, run directory, budget)]``."""
    from heuristics.rules import load_rules

    started = time.time()
    trials = [t for name, path, budget in runs for t in trials_of(name, path, budget)]
    rules = load_rules(rule_sources)
    budget = min(t.budget for t in trials)
    evaluation = policies.evaluate(trials, policies.POLICIES, rules, tail=final_tail(budget))
    return {
        "device": device().replace("one torch thread per trial", "trainers' own threads"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rules": rule_sources,
        "runs": [str(p) for _, p, _ in runs], "final_tail": final_tail(budget),
        "seconds": time.time() - started,
        "trials": [{"trial": t.name, "failure": t.failure, "onset": t.onset,
                    "budget": t.budget, "metric": t.metric, **evaluation["truth"][t.name]}
                   for t in trials],
        "policies": evaluation["policies"],
        "by_group": {p["policy"]: policies.by_group(p) for p in evaluation["policies"]},
        "firings": policies.rule_firings(trials, rules)}


def recorded(paths: tuple[Path, Path] | list[Path]) -> list[tuple[str, Path, int]]:
    """``[(experiment, run directory, budget)]`` of recorded master and student runs."""
    from trainers import experiment as experiments

    return [(name, path, experiments.load(name).max_iterations)
            for name, path in zip(("master_v464", "student_v464_failures"), paths)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("MASTER_RUN", "STUDENT_RUN"),
                        help="recorded no-stopping run directories to reuse")
    parser.add_argument("--storage", type=Path, default=STORAGE)
    parser.add_argument("--rules", nargs="+", default=["builtin"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = recorded(args.runs) if args.runs else record(args.storage)
    report = evaluate(runs, args.rules)
    trials = report["trials"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "insample.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    lines = [f"In-sample split ({len(trials)} trials of master_v464 and student_v464_failures, "
             "the populations the built-in thresholds were tuned on; one no-stopping run, every "
             "policy replayed round-robin; final quality = mean of the last "
             f"{report['final_tail']} reports; {report['device']}; {report['date']}; "
             "`python -m bench.heldout.insample`)", ""]
    lines += policy_table(report["policies"])
    lines += ["", "| trial | failure | onset | really fails | quality worse from | heuristic | "
              "asha | median |", "|---|---|---|---|---|---|---|---|"]
    rows = {p["policy"]: {r["trial"]: r for r in p["trials"]} for p in report["policies"]}
    for t in report["trials"]:
        cells = []
        for p in ("heuristic", "asha", "median"):
            r = rows[p][t["trial"]]
            cells.append("-" if not r["stopped"] else
                         f"{r['stop']} {r['by'] if p == 'heuristic' else ''} ({r['outcome']})")
        lines.append(f"| {t['trial']} | {t['failure']} | {t['onset'] or '-'} | "
                     f"{'yes' if t['really_fails'] else '-'} | "
                     f"{t['quality_iteration'] or '-'} | " + " | ".join(cells) + " |")
    (args.out / "insample.md").write_text("\n".join(lines) + "\n")
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
