"""``monitor replay``: evaluate a rule set over recorded histories, as the scheduler would have.

The same ``RuleEngine`` that drives the scheduler is fed each trial's recorded results in
order (one implementation, two drivers). The first kill ends a trial, as it would have live.

Ground truth is each trial's outcome in the run store: ``healthy``, or a failure name (from a
rule kill, from the final quality against the experiment's ``healthy_threshold``, or set by
``monitor label``). Trials without an outcome are left out of precision and recall. Note that
a trial killed live carries the failure its rule predicted until it is labelled otherwise, so
replaying the same rules over a run they stopped is circular: judge rule sets on runs made
with ``--shadow`` (full histories) and labelled outcomes.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from pathlib import Path
from typing import Any

from heuristics.engine import RuleEngine
from heuristics.rules import Rule, rule_version
from monitor.console import print_wide, safe
from monitor.store import RunStore, StoreError, reading


def is_failure(outcome: str | None) -> bool | None:
    if outcome is None:
        return None
    return outcome not in ("healthy",)


def replay(run_dirs: list[Path], rules: list[Rule]) -> dict[str, Any]:
    trials_out: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        with reading(run_dir) as store:  # read-only; a damaged store is a StoreError
            meta = store.meta()
            recorded = {v["trial"]: v for v in store.verdicts("kill") if not v.get("shadow")}
            budget = meta.get("budget")
            engine = RuleEngine(rules, meta.get("experiment", ""), budget=budget)
            for t in store.trials():
                results = store.results(t["trial_id"])
                kill, warnings = None, []
                for r in results:
                    for v in engine.observe(t["trial_id"], r):
                        if v.stops and kill is None:
                            kill = v
                        elif not v.stops:
                            warnings.append(v.rule)
                    if kill:
                        break
                trial_budget = t.get("budget") or budget or (len(results) or 1)
                trials_out.append({
                    "run": run_dir.name, "trial": t["trial_id"], "variant": t.get("variant"),
                    "outcome": t.get("outcome"), "failing": is_failure(t.get("outcome")),
                    "recorded_iterations": len(results), "budget": trial_budget,
                    "killed_by": kill.rule if kill else None,
                    "killed_by_version": kill.rule_version if kill else None,
                    "recorded_kill": _recorded(recorded.get(t["trial_id"])),
                    "predicted": kill.failure if kill else None,
                    "kill_iteration": kill.iteration if kill else None,
                    "saved_iterations": max(trial_budget - kill.iteration, 0) if kill else 0,
                    "warnings": sorted(set(warnings)),
                })
    return {"runs": [str(p) for p in run_dirs], "rules": [r.name for r in rules],
            "rule_versions": {r.name: rule_version(r) for r in rules},
            "trials": trials_out, **score(trials_out)}


def _recorded(kill: dict[str, Any] | None) -> dict[str, Any] | None:
    """What stopped the trial live: rule, version, rule-set revision, iteration."""
    if kill is None:
        return None
    return {"rule": kill["rule"], "version": kill.get("rule_version") or None,
            "revision": kill.get("ruleset_revision") or None, "iteration": kill["iteration"]}


def print_table(result: dict[str, Any], console) -> None:
    """The replay as a table and a summary line (every name printed verbatim)."""
    from rich.table import Table

    table = Table(title=f"Replay of {len(result['rules'])} rules over "
                  f"{safe(', '.join(result['runs']))}")
    for col in ("trial", "variant", "outcome", "killed by", "at", "saved", "warnings",
                "live: stopped by"):
        table.add_column(col, overflow="fold")
    for t in result["trials"]:
        live = t.get("recorded_kill")
        shown = "-" if not live else (f"{live['rule']} {live['version']} (rev "
                                      f"{live['revision']}) at {live['iteration']}"
                                      if live["version"] else
                                      f"{live['rule']} at {live['iteration']}")
        table.add_row(safe(t["trial"]), safe(t["variant"]), safe(t["outcome"] or "unlabelled"),
                      safe(f"{t['killed_by']} {t['killed_by_version']}" if t["killed_by"]
                           else "-"),
                      f"{t['kill_iteration']}/{t['budget']}" if t["kill_iteration"] else "-",
                      str(t["saved_iterations"]), safe(", ".join(t["warnings"]) or "-"),
                      safe(shown))
    print_wide(console, table)

    def pct(x):
        return "n/a" if x is None else f"{x:.2f}"

    detection = "no failing trial detected" if result["median_detection_iteration"] is None \
        else (f"median detection at iteration {result['median_detection_iteration']} "
              f"({pct(result['median_detection_pct_of_budget'])}% of budget)")
    console.print(f"precision {pct(result['precision'])}, recall {pct(result['recall'])} "
                  f"({result['true_kills']} true kills, {result['false_kills']} false kills, "
                  f"{result['missed']} missed, {result['unlabelled']} unlabelled); saved "
                  f"{result['saved_iterations']}/{result['budget_iterations']} trial-iterations "
                  f"({result['saved_pct']:.0f}%); {detection}")


def score(trials: list[dict[str, Any]]) -> dict[str, Any]:
    known = [t for t in trials if t["failing"] is not None]
    tp = [t for t in known if t["failing"] and t["killed_by"]]
    fp = [t for t in known if not t["failing"] and t["killed_by"]]
    fn = [t for t in known if t["failing"] and not t["killed_by"]]
    budget = sum(t["budget"] for t in trials)
    saved = sum(t["saved_iterations"] for t in trials)
    delays = [100.0 * t["kill_iteration"] / t["budget"] for t in tp]
    return {
        "true_kills": len(tp), "false_kills": len(fp), "missed": len(fn),
        "unlabelled": len(trials) - len(known),
        "precision": len(tp) / (len(tp) + len(fp)) if tp or fp else None,
        "recall": len(tp) / (len(tp) + len(fn)) if tp or fn else None,
        "correct_failure": sum(t["predicted"] == t["outcome"] for t in tp),
        "saved_iterations": saved, "budget_iterations": budget,
        "saved_pct": 100.0 * saved / budget if budget else 0.0,
        "median_detection_iteration": statistics.median([t["kill_iteration"] for t in tp])
        if tp else None,
        "median_detection_pct_of_budget": statistics.median(delays) if delays else None,
    }


NOT_FAILURES = {"healthy", "failed", "error"}  # outcomes the quality or Tune gives


def known_failures(run_dir: Path) -> set[str]:
    """Failure names ``monitor label`` takes without ``--new``: those of the built-in and
    custom rules, of the run's verdicts and of the trials already labelled."""
    from heuristics.rules import load_rules

    known: set[str] = set()
    try:
        known |= {r.failure for r in load_rules(["builtin", "custom"]) if r.failure}
    except Exception:  # noqa: BLE001 - a broken custom rule file is said where it is loaded
        known |= {r.failure for r in load_rules(["builtin"]) if r.failure}
    try:
        with RunStore(run_dir, create=False) as store:
            known |= {v["failure"] for v in store.verdicts() if isinstance(v.get("failure"), str)}
            known |= {t["outcome"] for t in store.trials() if isinstance(t.get("outcome"), str)
                      and t.get("outcome_source") in ("label", "rule")}
    except (StoreError, sqlite3.DatabaseError, json.JSONDecodeError):
        pass
    return known - NOT_FAILURES


def label(run_dir: Path, trial: str, outcome: str) -> dict[str, Any]:
    """Set a trial's outcome by hand (``healthy`` or a failure name)."""
    with RunStore(run_dir, create=False) as store:
        try:
            known = {t["trial_id"]: t for t in store.trials()}
            matches = [k for k in known if k == trial or k.endswith(trial)]
            if len(matches) != 1:
                raise KeyError(f"trial {trial!r} {'is ambiguous' if matches else 'not found'} "
                               f"in {run_dir.name}; trials: {', '.join(sorted(known))}")
            store.upsert_trial(matches[0], outcome=outcome, outcome_source="label")
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            raise StoreError(f"{store.path}: cannot label the trial ({exc})") from None
        return {**known[matches[0]], "outcome": outcome, "outcome_source": "label"}
