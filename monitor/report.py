"""``monitor kill-report``: what was killed, why, and how much compute that saved.

Reports only read: the run store is opened read-only (``open_store``), so a store on
read-only media or without write permission is read, not reported as damaged, and a damaged
one gives a ``StoreError`` naming the file, never a traceback. Names from the run (trials,
variants, rules, layers) are printed verbatim (``monitor.console.safe``).
"""

from __future__ import annotations

import html
import inspect
import json
import math
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monitor.console import plain, safe
from monitor.store import STORE_FILE, RunStore, StoreError
from monitor.verdicts import read_notices


class ReportError(StoreError):
    """A report that cannot be written (missing directory, permissions)."""


def store_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path / STORE_FILE if path.is_dir() or path.suffix != ".sqlite" else path


def open_store(run_dir: str | Path) -> RunStore:
    """The run store of ``run_dir`` opened read-only; ``StoreError`` (one line, naming the
    file) when it is missing, not a regular file, or not a readable store."""
    path = store_path(run_dir)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StoreError(f"{path}: no run store here (was the experiment run with this "
                         "version?)") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the run store ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise StoreError(f"{path}: not a regular file; expected a run store (SQLite database)")
    if "readonly" in inspect.signature(RunStore).parameters:
        return RunStore(path, create=False, readonly=True)
    return _readonly_store(path)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro``; where SQLite cannot create the WAL index next to
    the file (a read-only directory or medium), ``immutable=1``, which needs no other file."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc):
            raise
    db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return db


def _readonly_store(path: Path) -> RunStore:
    """A ``RunStore`` for reading over a read-only connection (until the store module offers
    one itself)."""
    from monitor import store as store_module

    try:
        db = _connect_readonly(path)
        db.create_function("f64", 2, store_module._f64, deterministic=True)
        kinds = dict(db.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                "('samples', 'results')").fetchall())
        if kinds.get("samples") == "table":
            raise StoreError(f"{path}: a run store of an older format (one row per sample); "
                             "record the run again with this version")
        db.execute("SELECT count(*) FROM trials").fetchone()
        db.execute("SELECT count(*) FROM results").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: damaged or not a run store ({exc})") from None
    store = object.__new__(RunStore)
    store.__dict__.update(path=path, batch_size=1, _pending=[], _pending_samples=0, _names={},
                          _series={}, _trial_keys={}, _layouts={}, db=db)
    return store


@contextmanager
def reading(run_dir: str | Path) -> Iterator[RunStore]:
    """``with reading(run_dir) as store:`` read-only; a damaged store (SQLite or JSON errors
    while reading) raises ``StoreError`` naming the file. Keep only reads in the block."""
    store = open_store(run_dir)
    try:
        yield store
    except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
        raise StoreError(f"{store.path}: damaged or not a run store ({exc})") from None
    finally:
        store.db.close()


def write_html(path: str | Path, page: str) -> None:
    """Write the HTML report; ``ReportError`` (a ``StoreError``) naming the path on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ReportError(f"{path}: cannot write the HTML report, directory {path.parent} does "
                          "not exist (create it, or give another --html path)")
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the HTML report ({exc.strerror})") from None


def find_run(storage: Path, experiment: str | None = None) -> Path:
    """The run directory of ``experiment`` (a name, or a run directory), latest first."""
    if experiment and (Path(experiment) / STORE_FILE).exists():
        return Path(experiment)
    if experiment and (storage / experiment / STORE_FILE).exists():
        return storage / experiment
    runs = sorted((p.parent for p in storage.glob(f"*/{STORE_FILE}")),
                  key=lambda p: (p / STORE_FILE).stat().st_mtime)
    if experiment:
        runs = [p for p in runs if p.name.startswith(f"{experiment}_")]
    if not runs:
        what = f"of experiment {experiment!r} " if experiment else ""
        raise StoreError(f"no recorded run {what}under {storage} (run `make tune "
                         f"EXP={experiment or 'master_v464'}` first)")
    return runs[-1]


def build(run_dir: Path) -> dict[str, Any]:
    """The report as data (the JSON format prints exactly this)."""
    with reading(run_dir) as store:
        meta, trials, verdicts = store.meta(), store.trials(), store.verdicts()
    by_id = {t["trial_id"]: t for t in trials}
    budget_default = meta.get("budget")
    kills, warnings = [], {}
    for v in verdicts:
        if v["action"] == "warn" or v.get("shadow"):
            key = (v["rule"], v["failure"], bool(v.get("shadow")))
            w = warnings.setdefault(key, {"rule": v["rule"], "failure": v["failure"],
                                          "shadow_kill": bool(v.get("shadow")), "count": 0,
                                          "trials": []})
            w["count"] += 1
            if v["trial"] not in w["trials"]:
                w["trials"].append(v["trial"])
            continue
        t = by_id.get(v["trial"], {})
        budget = v.get("budget") or t.get("budget") or budget_default or v["iteration"]
        per_iteration_s = v["trial_time_s"] / v["iteration"] if v["iteration"] else 0.0
        saved_iterations = max(budget - v["iteration"], 0)
        kills.append({
            "trial": v["trial"], "variant": t.get("variant"), "rule": v["rule"],
            "failure": v["failure"], "iteration": v["iteration"], "budget": budget,
            "budget_used_pct": 100.0 * v["iteration"] / budget if budget else None,
            "trial_time_s": v["trial_time_s"], "wall_time": v["wall_time"],
            "value": v.get("value"), "values": v.get("values", {}), "window": v.get("window", {}),
            "saved_iterations": saved_iterations,
            "saved_hours": saved_iterations * per_iteration_s / 3600.0,
            "reason": v["reason"], "rule_version": v.get("rule_version") or None,
            "ruleset_revision": v.get("ruleset_revision") or None,
        })
    per_rule: dict[str, dict[str, Any]] = {}
    for k in kills:
        r = per_rule.setdefault(k["rule"], {"rule": k["rule"], "failure": k["failure"],
                                            "kills": 0, "saved_iterations": 0,
                                            "saved_hours": 0.0})
        r["kills"] += 1
        r["saved_iterations"] += k["saved_iterations"]
        r["saved_hours"] += k["saved_hours"]
    from monitor.rulechanges import read_changes

    changes = read_changes(run_dir)
    total_budget = sum((t.get("budget") or budget_default or 0) for t in trials)
    used = sum(t.get("iterations") or 0 for t in trials)
    saved = sum(k["saved_iterations"] for k in kills)
    return {
        "experiment": meta.get("experiment"), "run": meta.get("run", run_dir.name),
        "run_dir": str(run_dir), "trials": len(trials), "killed": len(kills),
        "kills": kills, "per_rule": sorted(per_rule.values(), key=lambda r: -r["kills"]),
        "warnings": list(warnings.values()),
        "notices": [n["message"] for n in read_notices(run_dir)],
        "rule_set": {"revision": max((c["revision"] for c in changes), default=1),
                     "changes": [c for c in changes if c["op"] != "initial"]},
        "totals": {"budget_iterations": total_budget, "used_iterations": used,
                   "saved_iterations": saved,
                   "saved_pct": 100.0 * saved / total_budget if total_budget else 0.0,
                   "saved_hours": sum(k["saved_hours"] for k in kills)},
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        finite = {k: v for k, v in value.items() if isinstance(v, (int, float))
                  and not math.isnan(v)}
        if not finite:
            return "NaN" if value else "-"
        layer = max(finite, key=finite.get)
        return f"{finite[layer]:.3g} ({layer})"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def evidence(kill: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in kill["values"].items() if v is not None)


def rule_of(kill: dict[str, Any]) -> str:
    """A kill's rule with its version and the rule-set revision, where they were recorded."""
    if not kill.get("rule_version"):
        return kill["rule"]
    return f"{kill['rule']} {kill['rule_version']} (rev {kill.get('ruleset_revision')})"


def changes_lines(report: dict[str, Any]) -> list[str]:
    """The rule changes made while the run went on, one line each."""
    rule_set = report.get("rule_set") or {}
    return [f"revision {c['revision']}: {c['op']} {c['rule']} {c['version']} ({c['mode']}) "
            f"by {c.get('user') or '-'}" for c in rule_set.get("changes", [])]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def _cell(text: object) -> str:
    """A markdown table cell: one line, no control characters, ``|`` escaped."""
    return plain(text).replace("|", "\\|")


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Kill report: {plain(report['run'])}", "",
             f"{report['killed']} of {report['trials']} trials killed; "
             f"{report['totals']['saved_iterations']} of "
             f"{report['totals']['budget_iterations']} trial-iterations saved "
             f"({report['totals']['saved_pct']:.0f}%), "
             f"{report['totals']['saved_hours']:.3f} trial-hours.", "",
             "| trial | variant | rule | failure | iteration | % budget | evidence | "
             "saved iterations | saved hours |", "|---|---|---|---|---|---|---|---|---|"]
    for k in report["kills"]:
        lines.append(f"| {_cell(k['trial'])} | {_cell(k['variant'] or '-')} | {_cell(rule_of(k))} "
                     f"| {_cell(k['failure'])} | {k['iteration']}/{k['budget']} | "
                     f"{_pct(k['budget_used_pct'])} | {_cell(evidence(k))} | "
                     f"{k['saved_iterations']} | {k['saved_hours']:.4f} |")
    lines += ["", "| rule | failure | kills | saved iterations | saved hours |",
              "|---|---|---|---|---|"]
    for r in report["per_rule"]:
        lines.append(f"| {_cell(r['rule'])} | {_cell(r['failure'])} | {r['kills']} | "
                     f"{r['saved_iterations']} | {r['saved_hours']:.4f} |")
    if report["warnings"]:
        lines += ["", "Warnings:", ""]
        for w in report["warnings"]:
            kind = "would-be kill (shadow)" if w["shadow_kill"] else "warning"
            lines.append(f"- {plain(w['rule'])} ({plain(w['failure'])}, {kind}): {w['count']} "
                         f"on {len(w['trials'])} trial(s)")
    if changes_lines(report):
        lines += ["", f"Rule set: revision {report['rule_set']['revision']}, changed while the "
                  "run went on:", ""]
        lines += [f"- {plain(line)}" for line in changes_lines(report)]
    if report.get("notices"):
        lines += ["", "Notices (rules that cannot see their signal, reports left out in part):",
                  ""]
        lines += [f"- {plain(n)}" for n in report["notices"]]
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any], console) -> None:
    from rich.table import Table

    if not report["kills"]:
        console.print(f"No trial of {safe(report['run'])} was killed ({report['trials']} "
                      "trials).")
    else:
        table = Table(title=f"Kills in {safe(report['run'])}")
        for col in ("trial", "variant", "rule", "failure", "when", "evidence", "saved"):
            table.add_column(col, overflow="fold")
        for k in report["kills"]:
            table.add_row(safe(k["trial"]), safe(k["variant"] or "-"), safe(rule_of(k)),
                          safe(k["failure"]),
                          f"it {k['iteration']}/{k['budget']} ({_pct(k['budget_used_pct'])}), "
                          f"{k['trial_time_s']:.0f} s", safe(evidence(k)),
                          f"{k['saved_iterations']} it, {k['saved_hours']:.3f} h")
        console.print(table)
        per_rule = Table(title="Per rule")
        for col in ("rule", "failure", "kills", "saved iterations", "saved hours"):
            per_rule.add_column(col)
        for r in report["per_rule"]:
            per_rule.add_row(safe(r["rule"]), safe(r["failure"]), str(r["kills"]),
                             str(r["saved_iterations"]), f"{r['saved_hours']:.3f}")
        console.print(per_rule)
    t = report["totals"]
    console.print(f"{report['killed']} of {report['trials']} trials killed; saved "
                  f"{t['saved_iterations']} of {t['budget_iterations']} trial-iterations "
                  f"({t['saved_pct']:.0f}%), {t['saved_hours']:.3f} trial-hours.")
    for w in report["warnings"]:
        kind = "would-be kills (shadow)" if w["shadow_kill"] else "warnings"
        console.print(f"{safe(w['rule'])} ({safe(w['failure'])}): {w['count']} {kind} on "
                      f"{len(w['trials'])} trial(s)")
    for line in changes_lines(report):
        console.print(f"Rule set {safe(line)}")
    for notice in report.get("notices", []):
        console.print(f"Warning: {safe(notice)}")


def _svg(series: dict[str, list[list[Any]]], kill_iteration: int, title: str) -> str:
    """A small self-contained line plot of every layer's series with the kill marked."""
    width, height, pad = 420, 160, 30
    points = [(it, v) for s in series.values() for it, v in s
              if isinstance(v, (int, float)) and math.isfinite(v)]
    if not points:
        return f"<p>{_html(title)}: no finite values</p>"
    xs = [p[0] for p in points] + [kill_iteration]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return pad + (x - x0) / max(x1 - x0, 1) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="{pad}" y="14" font-size="12">{_html(title)}</text>']
    for i, (layer, s) in enumerate(sorted(series.items())):
        pts = " ".join(f"{sx(it):.1f},{sy(v):.1f}" for it, v in s
                       if isinstance(v, (int, float)) and math.isfinite(v))
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{pts}"><title>{_html(layer or title)}</title></polyline>')
    kx = sx(kill_iteration)
    parts += [f'<line x1="{kx:.1f}" y1="{pad - 10}" x2="{kx:.1f}" y2="{height - pad}" '
              'stroke="red" stroke-dasharray="4"/>',
              f'<text x="{kx + 3:.1f}" y="{pad}" font-size="10" fill="red">kill</text>',
              f'<text x="2" y="{sy(y1) + 4:.1f}" font-size="9">{y1:.3g}</text>',
              f'<text x="2" y="{sy(y0):.1f}" font-size="9">{y0:.3g}</text>',
              f'<text x="{pad}" y="{height - 8}" font-size="9">iteration {x0}</text>',
              f'<text x="{width - pad - 40}" y="{height - 8}" font-size="9">{x1}</text>',
              "</svg>"]
    return "".join(parts)


def _html(text: object) -> str:
    return html.escape(plain(text))


def to_html(report: dict[str, Any], run_dir: Path) -> str:
    """A self-contained page: the tables, and per killed trial its signals with the kill."""
    series_of: dict[tuple[str, str], dict] = {}
    with reading(run_dir) as store:
        for k in report["kills"]:
            for label in k["values"]:
                signal = label.split("{")[0]
                series_of[(k["trial"], signal)] = store.series(k["trial"], signal)
    sections = []
    for k in report["kills"]:
        plots = []
        for label in k["values"]:
            series = series_of[(k["trial"], label.split("{")[0])]
            if not series:
                continue
            plots.append(_svg({layer: [list(p) for p in pts] for layer, pts in series.items()},
                              k["iteration"], label))
        sections.append(f"<h2>{_html(k['trial'])} ({_html(k['variant'] or '-')})</h2>"
                        f"<p>{_html(k['reason'])}</p>{''.join(plots)}")
    table = to_markdown(report)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Kill report {_html(report['run'])}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
            "pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style></head><body>"
            f"<h1>Kill report: {_html(report['run'])}</h1><pre>{html.escape(table)}</pre>"
            f"{''.join(sections)}</body></html>")


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, default=str, allow_nan=True)
    if fmt == "markdown":
        return to_markdown(report)
    raise ValueError(f"format must be table, json or markdown; got {fmt!r}")
