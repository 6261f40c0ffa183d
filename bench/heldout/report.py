"""``report.md`` of the held-out kill benchmark."""

from __future__ import annotations

import math
from typing import Any


def _f(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _values(firing: dict[str, Any]) -> str:
    """The numbers a firing rule saw: its threshold operand, else every scalar it read."""
    if isinstance(firing.get("value"), (int, float)):
        return _f(firing["value"], ".3g")
    return ", ".join(f"{k}={_f(v, '.3g')}" for k, v in (firing.get("values") or {}).items())


def _setting(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


def policy_table(policies: list[dict[str, Any]]) -> list[str]:
    lines = ["| policy | trial-iterations | saved | recall | false kills | premature kills | "
             "precision | median delay (it) | median delay (% budget) | median lead (reports) | "
             "kills before quality | best trial kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in policies:
        lines.append(
            f"| {p['policy']} | {p['trial_iterations']} | {p['saved_pct']:.0f}% | "
            f"{_f(p['recall'])} ({p['caught']}/{p['really_failing']}) | {p['false_kills']} | "
            f"{p['premature_kills']} | {_f(p['precision'])} | "
            f"{_f(p['median_delay_iterations'], '.1f')} | {_f(p['median_delay_pct_budget'], '.1f')}"
            f" | {_f(p['median_lead'], '.1f')} | {p['kills_before_quality']}/{p['caught']} | "
            f"{p.get('best_kept', '-')}/{p.get('groups', '-')} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    n = len(report["trials"])
    fams = sorted({t["family"] for t in report["trials"]})
    out = [f"Held-out kill benchmark ({n} trials of {len(fams)} families the rules were never "
           f"tuned on, {report['budget']} iterations each, no stopping recorded once and every "
           f"policy replayed on the same results round-robin by iteration; rules: "
           f"{', '.join(report['rules'])} at {report.get('commit') or 'unknown commit'}; "
           f"{report['device']}; {report['date']}; "
           f"{report['training_seconds']:.0f} s of training; `python -m bench.heldout`)", ""]
    out += policy_table(report["policies"])
    out += ["", "Terms: *recall* over trials that really fail (final metric - the mean of "
            f"the last {report.get('final_tail', 1)} reports - worse than every "
            "healthy trial's of the family); *premature*: a broken trial stopped before its "
            "onset; *delay* = stop - onset; *lead* = first report (from the onset on) whose "
            "metric is worse than every healthy trial's at that iteration, minus the stop "
            "(positive: the kill came first); *best trial kept*: families whose best trial (by "
            "final quality) ran to the end. The heuristic policy runs the rule engine with "
            "each family's declared vocabulary (which key is the training loss, the generator "
            "and discriminator losses, the GAN loss family, the validation metric).", ""]
    if report.get("failures"):
        out += ["Failures (applied at the onset, by design): "
                + "; ".join(f"`{k}`: {v}" for k, v in report["failures"].items()) + ".", ""]
    out += ["## Per family", "",
            "| family | policy | caught / really failing | false kills | premature | "
            "delays (it) | leads |", "|---|---|---|---|---|---|---|"]
    for fam in fams:
        for policy, groups in report["by_family"].items():
            if policy == "none":
                continue
            g = groups.get(fam)
            if g:
                out.append(f"| {fam} | {policy} | {g['caught']}/{g['failing']} | "
                           f"{g['false_kills']} | {g['premature']} | "
                           f"{', '.join(map(str, g['delays'])) or '-'} | "
                           f"{', '.join(map(str, g['leads'])) or '-'} |")
    if report.get("ablation"):
        out += ["", "## The heuristic policy without one rule (what each rule contributes)", "",
                "| without | caught | false kills | premature | killed, recovered | "
                "median delay (it) | saved |", "|---|---|---|---|---|---|---|"]
        for a in report["ablation"]:
            out.append(f"| {a['without']} | {a['caught']}/{a['really_failing']} | "
                       f"{a['false_kills']} | {a['premature_kills']} | {a['killed_recovered']} | "
                       f"{_f(a['median_delay_iterations'], '.1f')} | {a['saved_pct']:.0f}% |")
    out += ["", "## Trials", "",
            "| trial | setting | failure | onset | final metric | healthy finals | really fails "
            "| quality worse from | heuristic | asha | median |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    stops = {p["policy"]: {r["trial"]: r for r in p["trials"]} for p in report["policies"]}

    def stop(policy: str, trial: str) -> str:
        r = stops.get(policy, {}).get(trial)
        if not r or not r["stopped"]:
            return "-"
        by = r["by"] if r["by"] not in ("asha", "median") else ""
        return f"{r['stop']} {by}".strip() + ("" if r["outcome"] == "caught"
                                              else f" ({r['outcome']})")

    for t in report["trials"]:
        healthy = ", ".join(_f(x, ".3g") for x in t["healthy_finals"]) \
            if t["failure"] != "healthy" else ""
        out.append(f"| {t['trial']} | {_setting(t['setting'])} | {t['failure']} | "
                   f"{_f(t['onset'], 'd')} | {t['metric']} {_f(t['final'], '.3g')} "
                   f"({t['mode']}) | {healthy} | "
                   f"{'yes' if t['really_fails'] else ('no' if t['failure'] != 'healthy' else '')}"
                   f" | {_f(t['quality_iteration'], 'd')} | "
                   + " | ".join(stop(p, t["trial"]) for p in ("heuristic", "asha", "median"))
                   + " |")
    out += ["", "## Every rule that would fire (shadow mode): rule@first iteration (value)", "",
            "| trial | failure (onset) | rules |", "|---|---|---|"]
    onsets = {t["trial"]: t for t in report["trials"]}
    for trial, fs in report["firings"].items():
        cell = "; ".join(f"{f['rule']}@{f['iteration']} ({_values(f)})" for f in fs) or "-"
        t = onsets[trial]
        out.append(f"| {trial} | {t['failure']} ({_f(t['onset'], 'd')}) | {cell} |")
    out += ["", "## Signals that leave the family's healthy range after the onset", "",
            "Healthy range: every healthy trial of the family from iteration 3 on; "
            "'all families': every healthy held-out trial.", "",
            "| trial | onset | signal | healthy range | before | at onset | onset+2 | final | "
            "first outside (family) | first outside (all families) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["separation"]:
        lo, hi = r["healthy_range"]
        out.append(f"| {r['trial']} | {r['onset']} | {r['signal']} | {_f(lo, '.3g')} .. "
                   f"{_f(hi, '.3g')} | {_f(r['before'], '.3g')} | {_f(r['at_onset'], '.3g')} | "
                   f"{_f(r['after'], '.3g')} | {_f(r['final'], '.3g')} | {r['first_outside']} | "
                   f"{_f(r['first_outside_all'], 'd')} |")
    return "\n".join(out) + "\n"
