"""``monitor kill-report``: what was killed, why, and how much compute that saved.

Two policies stop trials: the rules (kills) and the scheduler they wrap, e.g. ASHA (its stops,
recorded as its verdicts: ``monitor.driver.scheduler_stops``); compute saved is counted per policy.

Reports only read: the run store is opened read-only (``open_store``), so a store on
read-only media or without write permission is read, not reported as damaged, and a damaged
one gives a ``StoreError`` naming the file, never a traceback. Names from the run (trials,
variants, rules, layers) are printed verbatim (``monitor.console.safe``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from monitor.console import plain, print_wide, safe
from monitor.driver.scheduler_stops import is_scheduler_verdict
from monitor.driver.verdicts import rules_and_notices
from monitor.durability import write_atomic
from monitor.store import STORE_FILE, StoreError, reading


class ReportError(StoreError):
    """A report that cannot be written (missing directory, permissions)."""


def write_html(path: str | Path, page: str) -> None:
    """Write the HTML report; ``ReportError`` (a ``StoreError``) naming the path on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ReportError(f"{path}: cannot write the HTML report, directory {path.parent} does "
                          "not exist (create it, or give another --html path)")
    try:
        write_atomic(path, page)
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


def build(run_dir: Path, baseline: str | None = None) -> dict[str, Any]:
    """The report as data (the JSON format prints exactly this); ``baseline``: the trial to
    compare with (id, unique id suffix or variant name; default: the best finished trial).
    ``kills``: the rules' kills; ``scheduler_stops``: the wrapped scheduler's stops (same
    fields); ``per_policy``: stops and compute saved by the rules and by each scheduler."""
    with reading(run_dir) as store:
        meta, trials, verdicts = store.meta(), store.trials(), store.verdicts()
    by_id = {t["trial_id"]: t for t in trials}
    budget_default = meta.get("budget")
    kills, stops, warnings = [], [], {}
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
        scheduler = is_scheduler_verdict(v)
        if scheduler and any(k["trial"] == v["trial"] for k in kills):
            continue  # a trial a rule killed: the rule decided
        t = by_id.get(v["trial"], {})
        budget = v.get("budget") or t.get("budget") or budget_default or v["iteration"]
        per_iteration_s = v["trial_time_s"] / v["iteration"] if v["iteration"] else 0.0
        saved_iterations = max(budget - v["iteration"], 0)
        (stops if scheduler else kills).append({
            "trial": v["trial"], "variant": t.get("variant"), "rule": v["rule"],
            "policy": "scheduler" if scheduler else "rules",
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
    from monitor.driver.rulechanges import read_changes

    changes = read_changes(run_dir)
    total_budget = sum((t.get("budget") or budget_default or 0) for t in trials)
    used = sum(t.get("iterations") or 0 for t in trials)
    saved = sum(k["saved_iterations"] for k in kills + stops)
    rows = trial_rows(trials, kills, budget_default, stops)
    metric, mode = meta.get("metric"), meta.get("mode") or "min"
    rules_line, notices = rules_and_notices(run_dir)
    return {
        "experiment": meta.get("experiment"), "run": meta.get("run", run_dir.name),
        "run_dir": str(run_dir), "trials": len(trials), "killed": len(kills),
        "stopped_by_scheduler": len(stops),
        "metric": metric, "mode": mode,
        "baseline": pick_baseline(rows, mode, baseline, run_dir),
        "trial_table": rows,
        "kills": kills, "per_rule": sorted(per_rule.values(), key=lambda r: -r["kills"]),
        "scheduler_stops": stops, "per_policy": per_policy(kills, stops),
        "warnings": list(warnings.values()),
        "rules": rules_line, "notices": notices,
        "rule_set": {"revision": max((c["revision"] for c in changes), default=1),
                     "changes": [c for c in changes if c["op"] != "initial"]},
        "totals": {"budget_iterations": total_budget, "used_iterations": used,
                   "saved_iterations": saved,
                   "saved_pct": 100.0 * saved / total_budget if total_budget else 0.0,
                   "saved_hours": sum(k["saved_hours"] for k in kills + stops)},
    }


def per_policy(kills: list[dict[str, Any]], stops: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """Stops and compute saved by the rules, then by each wrapped scheduler (by name)."""
    out = {"rules": {"policy": "rules", "decided_by": "rules", "stops": 0,
                     "saved_iterations": 0, "saved_hours": 0.0}}
    for k in kills + stops:
        name = "rules" if k["policy"] == "rules" else k["rule"]
        p = out.setdefault(name, {"policy": k["policy"], "decided_by": name, "stops": 0,
                                  "saved_iterations": 0, "saved_hours": 0.0})
        p["stops"] += 1
        p["saved_iterations"] += k["saved_iterations"]
        p["saved_hours"] += k["saved_hours"]
    return list(out.values())


def totals_line(report: dict[str, Any]) -> str:
    """``2 of 6 trials killed by rules, 2 stopped by ASHAScheduler; saved 39 of 90
    trial-iterations (43%), 0.012 trial-hours (rules 20, ASHAScheduler 19).``"""
    t = report["totals"]
    policies = report.get("per_policy") or []
    schedulers = [p for p in policies if p["policy"] == "scheduler"]
    stopped = "".join(f", {p['stops']} stopped by {p['decided_by']}" for p in schedulers)
    split = (" (" + ", ".join(f"{p['decided_by']} {p['saved_iterations']}" for p in policies)
             + ")") if schedulers else ""
    return (f"{report['killed']} of {report['trials']} trials killed by rules{stopped}; saved "
            f"{t['saved_iterations']} of {t['budget_iterations']} trial-iterations "
            f"({t['saved_pct']:.0f}%), {t['saved_hours']:.3f} trial-hours{split}.")


def trial_rows(trials: list[dict[str, Any]], kills: list[dict[str, Any]],
               budget_default: int | None,
               stops: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per trial: status, what decided its end, iterations, compute saved, quality.

    KILLED: a rule's kill; STOPPED: the wrapped scheduler's stop (``stops``), or an end before
    the budget that no recorded decision explains (a Tune stopper, the trainable returning):
    shown, its compute not counted as saved."""
    killed = {k["trial"]: k for k in kills}
    for k in stops or []:
        killed.setdefault(k["trial"], k)
    rows = []
    for t in trials:
        budget = t.get("budget") or budget_default
        iterations = t.get("iterations") or 0
        k = killed.get(t["trial_id"])
        status = t.get("status") or "-"
        saved = 0
        if k is not None:
            if k.get("policy") == "scheduler":
                status, decided = "STOPPED", f"{k['rule']} (wrapped scheduler)"
            else:
                status, decided = "KILLED", f"rule {rule_of(k)}"
            iterations = max(iterations, k["iteration"])
            saved = k["saved_iterations"]
        elif status in ("TERMINATED", "STOPPED") and budget and iterations < budget:
            status, decided = "STOPPED", "no recorded decision (a Tune stopper or the trainable)"
        elif status == "TERMINATED":
            decided = "ran to its budget"
        elif status == "ERROR":
            decided = "error"
        else:
            decided = "-"
        metric = t.get("final_metric")
        rows.append({"trial": t["trial_id"], "variant": t.get("variant"), "status": status,
                     "decided_by": decided, "iteration": iterations, "budget": budget,
                     "saved_iterations": saved,
                     "saved_hours": k["saved_hours"] if k else 0.0,
                     "final_metric": metric if isinstance(metric, (int, float)) else None,
                     "outcome": t.get("outcome")})
    return rows


def pick_baseline(rows: list[dict[str, Any]], mode: str, name: str | None,
                  run_dir: Path) -> str | None:
    """The baseline trial's id: ``name`` (id, unique id suffix or variant), else the finished
    trial with the best final metric. ``ReportError`` naming the run when ``name`` fits none
    or several."""
    if name:
        exact = [r for r in rows if name in (r["trial"], r["variant"])]
        found = exact or [r for r in rows if r["trial"].endswith(name)]
        if len(found) != 1:
            known = ", ".join(f"{r['trial']} ({r['variant']})" for r in rows)
            what = "no trial" if not found else f"{len(found)} trials"
            raise ReportError(f"{run_dir}: --baseline {name!r}: {what} of this run has that id "
                              f"or variant; expected one of: {known}")
        return found[0]["trial"]
    done = [r for r in rows if r["status"] == "TERMINATED" and r["final_metric"] is not None
            and math.isfinite(r["final_metric"])]
    if not done:
        return None
    sign = -1 if mode == "max" else 1
    return min(done, key=lambda r: sign * r["final_metric"])["trial"]


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


def _markdown_trials(report: dict[str, Any]) -> list[str]:
    rows = report.get("trial_table") or []
    if not rows:
        return []
    metric = _cell(report.get("metric") or "final metric")
    lines = [f"| trial | variant | status | decided by | iteration | saved iterations | "
             f"{metric} ({report.get('mode', 'min')}) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        best = " (baseline)" if r["trial"] == report.get("baseline") else ""
        lines.append(f"| {_cell(r['trial'])} | {_cell(r['variant'] or '-')} | {r['status']} | "
                     f"{_cell(r['decided_by'])} | {r['iteration']}/{r['budget'] or '-'} | "
                     f"{r['saved_iterations']} | {_fmt(r['final_metric'])}{best} |")
    return [*lines, ""]


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Kill report: {plain(report['run'])}", "", plain(totals_line(report)), "",
             *_markdown_trials(report),
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
    if report.get("scheduler_stops"):
        lines += ["", "Stopped by the wrapped scheduler:", "",
                  "| trial | variant | scheduler | iteration | % budget | reason | "
                  "saved iterations | saved hours |", "|---|---|---|---|---|---|---|---|"]
        for k in report["scheduler_stops"]:
            lines.append(f"| {_cell(k['trial'])} | {_cell(k['variant'] or '-')} | "
                         f"{_cell(k['rule'])} | {k['iteration']}/{k['budget']} | "
                         f"{_pct(k['budget_used_pct'])} | {_cell(k['reason'])} | "
                         f"{k['saved_iterations']} | {k['saved_hours']:.4f} |")
        lines += ["", "| decided by | stops | saved iterations | saved hours |",
                  "|---|---|---|---|"]
        for r in report["per_policy"]:
            lines.append(f"| {_cell(r['decided_by'])} | {r['stops']} | "
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
    if report.get("rules"):
        lines += ["", f"Rules: {plain(report['rules'])}"]
    if report.get("notices"):
        lines += ["", "Notices (rules that cannot see their signal, reports left out in part):",
                  ""]
        lines += [f"- {plain(n)}" for n in report["notices"]]
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any], console) -> None:
    from rich.table import Table

    rows = report.get("trial_table") or []
    if rows:
        metric = report.get("metric") or "final metric"
        table = Table(title=f"Trials of {safe(report['run'])}")
        for col in ("trial", "variant", "status", "decided by", "iteration", "saved",
                    f"{safe(metric)} ({report.get('mode', 'min')})"):
            table.add_column(col, overflow="fold")
        for r in rows:
            best = " (baseline)" if r["trial"] == report.get("baseline") else ""
            table.add_row(safe(r["trial"]), safe(r["variant"] or "-"), r["status"],
                          safe(r["decided_by"]), f"{r['iteration']}/{r['budget'] or '-'}",
                          f"{r['saved_iterations']} it", _fmt(r["final_metric"]) + best)
        print_wide(console, table)
    if not report["kills"]:
        print_wide(console, f"No trial of {safe(report['run'])} was killed by a rule "
                   f"({report['trials']} trials).")
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
        print_wide(console, table)
        per_rule = Table(title="Per rule")
        for col in ("rule", "failure", "kills", "saved iterations", "saved hours"):
            per_rule.add_column(col)
        for r in report["per_rule"]:
            per_rule.add_row(safe(r["rule"]), safe(r["failure"]), str(r["kills"]),
                             str(r["saved_iterations"]), f"{r['saved_hours']:.3f}")
        print_wide(console, per_rule)
    if report.get("scheduler_stops"):
        table = Table(title=f"Stopped by the wrapped scheduler in {safe(report['run'])}")
        for col in ("trial", "variant", "scheduler", "when", "reason", "saved"):
            table.add_column(col, overflow="fold")
        for k in report["scheduler_stops"]:
            table.add_row(safe(k["trial"]), safe(k["variant"] or "-"), safe(k["rule"]),
                          f"it {k['iteration']}/{k['budget']} ({_pct(k['budget_used_pct'])}), "
                          f"{k['trial_time_s']:.0f} s", safe(k["reason"]),
                          f"{k['saved_iterations']} it, {k['saved_hours']:.3f} h")
        print_wide(console, table)
        policies = Table(title="Per deciding policy")
        for col in ("decided by", "stops", "saved iterations", "saved hours"):
            policies.add_column(col)
        for r in report["per_policy"]:
            policies.add_row(safe(r["decided_by"]), str(r["stops"]),
                             str(r["saved_iterations"]), f"{r['saved_hours']:.3f}")
        print_wide(console, policies)
    print_wide(console, safe(totals_line(report)))
    for w in report["warnings"]:
        kind = "would-be kills (shadow)" if w["shadow_kill"] else "warnings"
        print_wide(console, f"{safe(w['rule'])} ({safe(w['failure'])}): {w['count']} {kind} on "
               f"{len(w['trials'])} trial(s)")
    for line in changes_lines(report):
        print_wide(console, f"Rule set {safe(line)}")
    if report.get("rules"):
        print_wide(console, f"Rules: {safe(report['rules'])}")
    for notice in report.get("notices", []):
        print_wide(console, f"Warning: {safe(notice)}")


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, default=str, allow_nan=True)
    if fmt == "markdown":
        return to_markdown(report)
    raise ValueError(f"format must be table, json or markdown; got {fmt!r}")
