"""A run's summary: every trial's name, status, last metrics and verdict, and the best trial.

Built from what the run recorded (the run store and the verdict log, reconciled) plus, for Tune
runs, Tune's own results (checkpoints, errors); written to ``<run dir>/summary.json`` and shown
as a table that stays readable at 80 columns. ``not_recorded`` names everything the run could
not write (``monitor.durability.losses``: store, verdict log, rule state, notices, exporter
files, and this summary itself); ``summary.json`` is replaced atomically, never left torn.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from heuristics.vocabulary import Vocabulary
from monitor.console import plain as console_plain
from monitor.driver.scheduler_stops import is_scheduler_verdict
from monitor.driver.verdicts import VerdictRecorder, rules_and_notices, verdict_key
from monitor.durability import describe, losses, note_loss, write_atomic


def plain(value: Any) -> Text:
    """User-supplied text for a table cell or line: never read as markup, control characters
    shown as visible escapes (``monitor.console.plain``)."""
    return Text(console_plain(value))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _stored_trials(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    from monitor.store import STORE_FILE, RunStore, StoreError

    if not (run_dir / STORE_FILE).exists():
        return [], "no run store was written"
    try:
        with RunStore(run_dir, create=False) as store:
            return store.trials(), None
    except (OSError, sqlite3.Error, StoreError) as exc:
        return [], f"the run store could not be read ({type(exc).__name__}: {exc})"


def summarise(run_dir: str | Path, experiment: str, vocabulary: Vocabulary,
              results: Any = None, started: float | None = None,
              store_failed: str | None = None,
              known: list[dict[str, Any]] | None = None,
              url: str | None = None) -> dict[str, Any]:
    """The summary of the run in ``run_dir``; ``results``: Tune's ``ResultGrid``, if any;
    ``known``: kills (and the wrapped scheduler's stops) this process decided, counted even
    where no file could keep them. A rule's kill is a trial's ``killed`` (status KILLED); the
    wrapped scheduler's stop its ``stopped`` (status STOPPED, ``by`` the scheduler's name);
    ``url``: where its health metrics were served."""
    run_dir = Path(run_dir)
    recorder = VerdictRecorder(run_dir)
    verdicts = recorder.reconcile()
    seen = {verdict_key(v) for v in verdicts}
    verdicts += [v for v in known or [] if verdict_key(v) not in seen]
    store_failed = store_failed or recorder.store_failed
    recorder.close()
    stopping = [v for v in verdicts if v["action"] == "kill" and not v.get("shadow")]
    kills = {v["trial"]: v for v in stopping if not is_scheduler_verdict(v)}
    stops: dict[str, dict[str, Any]] = {}
    for v in stopping:
        if is_scheduler_verdict(v) and v["trial"] not in kills:
            stops.setdefault(v["trial"], v)
    stored, unreadable = _stored_trials(run_dir)
    metric = vocabulary.validation
    trials: dict[str, dict[str, Any]] = {}
    for t in stored:
        trials[t["trial_id"]] = {
            "trial_id": t["trial_id"], "variant": t.get("variant"),
            "iterations": t.get("iterations") or 0, "metric": t.get("final_metric"),
            "status": t.get("status"), "error": None, "checkpoint": None, "path": None,
            "last": {}}
    for r in results or []:
        m = r.metrics or {}
        cfg = r.config or {}
        trial_id = m.get("trial_id") or Path(r.path).name
        variant = cfg.get("variant", {}).get("name") if isinstance(cfg.get("variant"), dict) \
            else None
        t = trials.setdefault(trial_id, {"trial_id": trial_id, "variant": variant})
        t.update({
            "variant": t.get("variant") or variant, "seed": cfg.get("seed"),
            "iterations": m.get("training_iteration", t.get("iterations", 0)),
            "metric": m.get(metric) if metric else None,
            "status": t.get("status") or ("ERROR" if r.error else "TERMINATED"),
            "error": str(r.error) if r.error else None,
            "checkpoint": (str(Path(r.checkpoint.path) / "model.pt") if r.checkpoint else None),
            "path": r.path,
            "last": {k: v for k, v in m.items() if isinstance(v, (int, float, str))}})
    for trial_id, t in trials.items():
        if trial_id in kills:
            v = kills[trial_id]
            t["killed"] = {k: v[k] for k in ("rule", "failure", "iteration", "reason")}
            t["killed"].update({k: v[k] for k in ("rule_version", "ruleset_revision")
                                if v.get(k)})
            t["status"] = "KILLED"
        elif trial_id in stops:
            v = stops[trial_id]
            t["stopped"] = {"by": v["rule"], "policy": "scheduler",
                            **{k: v[k] for k in ("failure", "iteration", "reason")}}
            t["status"] = "STOPPED"
    sign = 1 if vocabulary.mode == "min" else -1
    ranked = sorted((t for t in trials.values() if _finite(t.get("metric"))
                     and not t.get("killed") and not t.get("stopped") and not t.get("error")),
                    key=lambda t: sign * t["metric"])
    lost = losses(run_dir)
    not_recorded = [x for x in lost if x.startswith("run store")]
    if store_failed and not not_recorded:
        not_recorded.append(f"run store ({run_dir / 'monitor.sqlite'}): not fully written "
                            f"({store_failed})")
    not_recorded += [x for x in (unreadable, *lost) if x and x not in not_recorded]
    from monitor.driver.rulechanges import read_changes

    changes = read_changes(run_dir)
    rules_line, notices = rules_and_notices(run_dir)
    summary = {"name": run_dir.name, "experiment": experiment, "metric": metric,
               "mode": vocabulary.mode, "verdicts": len(verdicts),
               "kills": len(kills), "scheduler_stops": len(stops),
               "warnings": sum(v["action"] == "warn" or bool(v.get("shadow")) for v in verdicts),
               "metrics_url": url, "rules": rules_line, "notices": notices,
               "not_recorded": not_recorded,
               "storage": str(run_dir), "started": started, "finished": time.time(),
               "trials": list(trials.values()), "best": ranked[0] if ranked else None,
               "rule_set": {"revision": max((c["revision"] for c in changes), default=1),
                            "changes": [c for c in changes if c["op"] != "initial"]}}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    except OSError as exc:
        what = f"summary ({run_dir / 'summary.json'}): not written ({describe(exc)})"
        note_loss(run_dir, what)
        summary["not_recorded"].append(what)
    return summary


def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else ("-" if x is None else str(x))


def print_summary(summary: dict[str, Any], console: Console,
                  extra_columns: tuple[str, ...] = ()) -> None:
    """The run table: trial, variant, iterations, metric, status (killed: rule @iteration;
    stopped: the wrapped scheduler @iteration);
    ``extra_columns`` (last reported values) only where the terminal is wide enough."""
    metric = summary.get("metric") or "metric"
    table = Table(title=plain(f"{summary['name']}: {len(summary['trials'])} trials "
                              f"({metric}, {summary['mode']})"), expand=False)
    table.add_column("trial", overflow="fold")
    table.add_column("variant", overflow="fold")
    table.add_column("it", justify="right")
    table.add_column(plain(metric), justify="right", overflow="fold")
    extra = [k for k in extra_columns if k != metric
             and any(k in t.get("last", {}) for t in summary["trials"])]
    extra = extra[:max(0, (console.width - 80) // 12)]
    for k in extra:
        table.add_column(plain(k), justify="right", overflow="fold")
    table.add_column("status", overflow="fold")
    for t in summary["trials"]:
        status = "error" if t.get("error") else "done"
        if t.get("killed"):
            status = f"killed: {t['killed']['rule']} @{t['killed']['iteration']}"
        elif t.get("stopped"):
            status = f"stopped: {t['stopped']['by']} @{t['stopped']['iteration']}"
        elif t.get("status") == "RUNNING":
            status = "running"
        table.add_row(plain(t["trial_id"]), plain(t.get("variant")), str(t.get("iterations")),
                      _fmt(t.get("metric")), *(_fmt(t.get("last", {}).get(k)) for k in extra),
                      plain(status))
    console.print(table)
    for c in (summary.get("rule_set") or {}).get("changes", []):
        console.print(plain(f"Rule set revision {c['revision']}: {c['op']} {c['rule']} "
                            f"{c['version']} ({c['mode']}) by {c.get('user') or '-'}"))
    if summary.get("metrics_url"):
        console.print(plain(f"Health metrics were served at {summary['metrics_url']}"))
    if summary.get("rules"):
        console.print(plain(f"Rules: {summary['rules']}"), soft_wrap=True)
    for notice in summary.get("notices", []):
        console.print(plain(f"Warning: {notice}"), soft_wrap=True)
    for gap in summary.get("not_recorded", []):
        console.print(plain(f"Not recorded: {gap}"))
    if summary.get("best"):
        best = summary["best"]
        where = f", checkpoint {best['checkpoint']}" if best.get("checkpoint") else ""
        console.print(plain(f"Best: {best['trial_id']} ({best.get('variant')}){where}"))
    console.print(plain(f"Results: {summary['storage']}"))
