"""``monitor rules status RUN``: the run's rule set by revision, and what each rule applied
while it ran would do or did, beside the trials' outcomes so far; ``monitor rules export RUN``:
the rules acting now, as one rule file for the next sweep.

Only reads (the run store read-only, the change log): safe while the driver writes the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from monitor.console import safe
from monitor.driver.rulechanges import read_changes
from monitor.store import reading

MODE_OF = {"initial": "armed", "apply": "shadow", "arm": "armed", "retire": "retired"}


def build(run_dir: str | Path) -> dict[str, Any]:
    """The status as data (``--format json`` prints exactly this)."""
    run_dir = Path(run_dir)
    changes = read_changes(run_dir)
    with reading(run_dir) as store:
        meta, trials, verdicts = store.meta(), store.trials(), store.verdicts()
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    for e in changes:
        info = versions.setdefault((e["rule"], e["version"]), {
            "rule": e["rule"], "version": e["version"], "revision": e["revision"],
            "applied": e["time"], "user": e.get("user"), "file": e.get("file"),
            "action": e.get("action"), "failure": e.get("failure"), "expr": e.get("expr"),
            "initial": e["op"] == "initial", "history": []})
        if e["op"] == "apply":  # an earlier candidate of the same name is superseded
            for other in versions.values():
                if other["rule"] == e["rule"] and other.get("mode") == "shadow" \
                        and other["version"] != e["version"]:
                    other["mode"] = "replaced"
                    other["history"].append({"revision": e["revision"], "op": "replaced",
                                             "mode": "replaced", "time": e["time"],
                                             "user": e.get("user")})
        info["mode"] = MODE_OF[e["op"]]
        info["history"].append({k: e.get(k) for k in ("revision", "op", "mode", "time", "user")})
        if e["op"] == "arm" and e.get("replaced"):
            old = versions.get((e["rule"], e["replaced"]))
            if old is not None:
                old["mode"] = "replaced"
                old["history"].append({"revision": e["revision"], "op": "replaced",
                                       "mode": "replaced", "time": e["time"],
                                       "user": e.get("user")})
    stopped = {v["trial"]: v for v in verdicts if v["action"] == "kill" and not v.get("shadow")}
    rows = []
    for t in trials:
        kill = stopped.get(t["trial_id"])
        rows.append({"trial": t["trial_id"], "variant": t.get("variant"),
                     "status": t.get("status"), "iterations": t.get("iterations"),
                     "outcome": t.get("outcome"),
                     "stopped_by": None if kill is None else {
                         "rule": kill["rule"], "version": kill.get("rule_version"),
                         "iteration": kill["iteration"]}})
    applied = [v for v in versions.values() if not v["initial"] or v["mode"] != "armed"]
    for info in applied:
        mine = [v for v in verdicts if v["rule"] == info["rule"]
                and v.get("rule_version") == info["version"]]
        per_trial = []
        for row in rows:
            would = next((v for v in mine if v["trial"] == row["trial"]
                          and v["action"] == "kill" and v.get("shadow")), None)
            did = next((v for v in mine if v["trial"] == row["trial"]
                        and v["action"] == "kill" and not v.get("shadow")), None)
            warned = sum(v["trial"] == row["trial"] and v["action"] == "warn" for v in mine)
            per_trial.append({**row, "would_kill": None if would is None else {
                "iteration": would["iteration"], "retroactive": bool(would.get("retroactive")),
                "reason": would["reason"]},
                "killed": None if did is None else {"iteration": did["iteration"]},
                "warnings": warned})
        info["trials"] = per_trial
        info["summary"] = summarise(info, per_trial)
    unchanged = sum(1 for v in versions.values() if v["initial"] and v["mode"] == "armed")
    return {"run": meta.get("run", run_dir.name), "run_dir": str(run_dir),
            "experiment": meta.get("experiment"),
            "revision": max((e["revision"] for e in changes), default=1),
            "unchanged_initial_rules": unchanged, "rules": applied, "changes": changes,
            "trials": rows}


def summarise(info: dict[str, Any], per_trial: list[dict[str, Any]]) -> str:
    """One sentence with the numbers: would-be kills against what the trials did."""
    would = [t for t in per_trial if t["would_kill"]]
    killed = [t for t in per_trial if t["killed"]]
    if info.get("action") != "kill":
        warned = sum(t["warnings"] > 0 for t in per_trial)
        return f"warns; warned on {warned} of {len(per_trial)} trials"
    parts = [f"would stop {len(would)} of {len(per_trial)} trials"]
    if would:
        failing = sum(1 for t in would if t["stopped_by"] or t["outcome"] not in
                      (None, "healthy"))
        healthy = sum(1 for t in would if t["outcome"] == "healthy")
        running = sum(1 for t in would if t["status"] == "RUNNING")
        early = [t for t in would if t["stopped_by"]
                 and t["stopped_by"]["version"] != info["version"]
                 and t["would_kill"]["iteration"] < t["stopped_by"]["iteration"]]
        parts.append(f"{failing} stopped or failing, {healthy} healthy, {running} still running"
                     + (f"; {len(early)} earlier than the rule that stopped them" if early
                        else ""))
    if killed:
        parts.append(f"stopped {len(killed)} since armed")
    return "; ".join(parts)


def print_table(status: dict[str, Any], console) -> None:
    from rich.table import Table

    console.print(f"Rule set of {safe(status['run'])}: revision {status['revision']} "
                  f"({status['unchanged_initial_rules']} rules of revision 1 unchanged)")
    if not status["rules"]:
        console.print("No rule applied, armed or retired since the run started.")
        return
    table = Table(title="Rules changed while the run went on")
    for col in ("rule", "version", "mode", "applied", "by", "what it would do / did"):
        table.add_column(col, overflow="fold")
    for r in status["rules"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["applied"]))
        table.add_row(safe(r["rule"]), r["version"], r["mode"],
                      f"revision {r['revision']}, {when}", safe(r.get("user") or "-"),
                      safe(r["summary"]))
    console.print(table)
    for r in status["rules"]:
        if r["mode"] not in ("shadow", "armed"):
            continue
        table = Table(title=f"{safe(r['rule'])} {r['version']} ({r['mode']}): "
                      f"{safe(r['expr'] or '')}")
        for col in ("trial", "variant", "status", "outcome", "stopped by",
                    "would stop at", "stopped at"):
            table.add_column(col, overflow="fold")
        for t in r["trials"]:
            by = t["stopped_by"]
            would = t["would_kill"]
            table.add_row(
                safe(t["trial"]), safe(t["variant"] or "-"),
                f"{t['status'] or '-'} ({t['iterations'] or 0} it)", safe(t["outcome"] or "-"),
                safe(f"{by['rule']} at {by['iteration']}") if by else "-",
                (f"{would['iteration']} ({'history' if would['retroactive'] else 'live'})"
                 if would else "-"),
                str(t["killed"]["iteration"]) if t["killed"] else "-")
        console.print(table)


def export(run_dir: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """The run's acting rules now (armed versions: those it started with, unless replaced or
    retired, and those armed since) as one rule file for the next sweep; the YAML text and
    ``[{rule, version, revision}]``."""
    import yaml

    armed: dict[str, dict[str, Any]] = {}
    mappings: dict[tuple[str, str], dict[str, Any]] = {}
    for e in read_changes(run_dir):
        if e.get("mapping"):
            mappings[(e["rule"], e["version"])] = e
        if e["op"] in ("initial", "arm"):
            armed[e["rule"]] = e
        elif e["op"] == "retire" and e.get("was") == "armed":
            armed.pop(e["rule"], None)
    groups: dict[str, list[dict[str, Any]]] = {}
    shown = []
    for name, e in armed.items():
        source = mappings.get((name, e["version"]))
        if source is None:
            continue
        # ``experiments`` (a file's key, kept per rule in the record) is left out: every rule
        # exported acted on this run's experiment; the next sweep's file says its own.
        mapping = {k: v for k, v in source["mapping"].items() if k != "experiments"}
        groups.setdefault(source.get("group") or "applied", []).append(mapping)
        shown.append({"rule": name, "version": e["version"], "revision": e["revision"]})
    header = (f"# The acting rules of {Path(run_dir).name} (rule versions: "
              + ", ".join(f"{s['rule']} {s['version']}" for s in shown) + ")\n")
    body = yaml.safe_dump({"groups": [{"name": g, "rules": rules}
                                      for g, rules in groups.items()]},
                          sort_keys=False, allow_unicode=True, width=100)
    return header + body, shown
