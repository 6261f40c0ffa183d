"""``monitor calibrate``: which signals separate failing from healthy trials, how early, where.

For every signal (per layer, and reduced across layers with max/mean/min) and every iteration,
the values of failing and healthy trials are compared with rank statistics: the Mann-Whitney
AUC (probability that a failing trial's value is above a healthy one's; 0.5 = no separation)
and the point-biserial correlation (scipy). Signals are ranked by their best separation and how
early it is reached.

For the best signals a rule is suggested with the threshold that gives *zero false kills on the
history*: just beyond the most extreme value any healthy trial ever reported. Each suggested
rule carries the precision, recall and earliest detection it achieved on the history; the file
passes ``monitor rules check`` and can be scored with ``monitor replay``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from heuristics.expr import LAYER_SIGNALS, SIGNALS
from monitor.after.replay import is_failure
from monitor.after.report import ReportError
from monitor.console import plain, print_wide, safe
from monitor.durability import write_atomic
from monitor.store import RunStore, reading

EXCLUDED = {"val_logmel", "val_power_ratio_db", "val_teacher_logmel", "step_time_s",
            "target_power_db"}  # outcomes are defined from validation quality: no leakage
REDUCTIONS = ("max", "mean", "min")


def _series(store: RunStore, trial: str) -> dict[tuple[str, str], dict[int, float]]:
    """``{(signal, layer | reduction | ""): {iteration: value}}`` for one trial."""
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    per_layer: dict[tuple[str, int], list[float]] = defaultdict(list)
    for iteration, signal, layer, v in store.samples(trial):
        if signal not in SIGNALS or signal in EXCLUDED:
            continue
        if layer:
            out[(signal, layer)][iteration] = v
            per_layer[(signal, iteration)].append(v)
        else:
            out[(signal, "")][iteration] = v
    for (signal, iteration), values in per_layer.items():
        finite = [x for x in values if math.isfinite(x)]
        if finite:
            out[(signal, "max")][iteration] = max(finite)
            out[(signal, "mean")][iteration] = sum(finite) / len(finite)
            out[(signal, "min")][iteration] = min(finite)
    return out


def load(run_dirs: list[Path]) -> list[dict[str, Any]]:
    trials = []
    for run_dir in run_dirs:
        with reading(run_dir) as store:  # read-only; a damaged store is a StoreError
            for t in store.trials():
                failing = is_failure(t.get("outcome"))
                if failing is None:
                    continue
                trials.append({"id": f"{run_dir.name}/{t['trial_id']}", "failing": failing,
                               "outcome": t["outcome"], "series": _series(store, t["trial_id"])})
    return trials


def expression(signal: str, where: str) -> str:
    if where in REDUCTIONS:
        return f"{where}({signal})"
    if where:  # a layer name, as a glob that matches only itself, in quotes it cannot close
        glob = re.sub(r"([*?[])", r"[\1]", where)
        quote = "'" if '"' in glob else '"'
        return f"max({signal}{{layer={quote}{glob}{quote}}})"
    return signal


def analyse(trials: list[dict[str, Any]], min_group: int = 2) -> list[dict[str, Any]]:
    """One row per signal key: separation over iterations and the zero-false-kill threshold."""
    keys = sorted({k for t in trials for k in t["series"]})
    rows = []
    for key in keys:
        signal, where = key
        if where not in ("",) + REDUCTIONS and signal not in LAYER_SIGNALS:
            continue
        iterations = sorted({i for t in trials for i in t["series"].get(key, {})})
        best, curve = None, []
        for i in iterations:
            fail = [t["series"][key][i] for t in trials if t["failing"]
                    and i in t["series"].get(key, {}) and math.isfinite(t["series"][key][i])]
            ok = [t["series"][key][i] for t in trials if not t["failing"]
                  and i in t["series"].get(key, {}) and math.isfinite(t["series"][key][i])]
            if len(fail) < min_group or len(ok) < min_group:
                continue
            u = stats.mannwhitneyu(fail, ok, alternative="two-sided").statistic
            auc = u / (len(fail) * len(ok))
            r = stats.pointbiserialr([1] * len(fail) + [0] * len(ok), fail + ok).statistic \
                if len(set(fail + ok)) > 1 else 0.0
            curve.append((i, auc, r))
            if best is None or abs(auc - 0.5) > abs(best[1] - 0.5):
                best = (i, auc, r)
        if best is None:
            continue
        separation = 2 * abs(best[1] - 0.5)
        first = next((i for i, auc, _ in curve if 2 * abs(auc - 0.5) >= 0.999), None)
        direction = "above" if best[1] >= 0.5 else "below"
        rows.append({"signal": signal, "where": where, "expr": expression(signal, where),
                     "direction": direction, "auc": best[1], "point_biserial": best[2],
                     "best_iteration": best[0], "separation": separation,
                     "first_separated_iteration": first,
                     **threshold(trials, key, direction)})
    rows.sort(key=lambda r: (-r["recall"], -r["separation"],
                             r["median_detection"] if r["median_detection"] is not None
                             else math.inf))
    return rows


def threshold(trials: list[dict[str, Any]], key: tuple[str, str], direction: str
              ) -> dict[str, Any]:
    """The threshold just beyond every healthy value, and what it catches on the history."""
    healthy = [v for t in trials if not t["failing"] for v in t["series"].get(key, {}).values()
               if math.isfinite(v)]
    if not healthy:
        return {"threshold": None, "recall": 0.0, "precision": None, "earliest": None,
                "median_detection": None, "caught": []}
    edge = max(healthy) if direction == "above" else min(healthy)
    scale = max(abs(edge), 1e-12)
    t = edge + 1e-3 * scale if direction == "above" else edge - 1e-3 * scale
    t = float(f"{t:.4g}")
    if direction == "above" and t <= edge:
        t = float(f"{edge * (1 + 2e-3) + 1e-12:.4g}")
    if direction == "below" and t >= edge:
        t = float(f"{edge * (1 - 2e-3) - 1e-12:.4g}")
    hits, caught = [], []
    failing = [tr for tr in trials if tr["failing"]]
    for tr in failing:
        series = tr["series"].get(key, {})
        crossing = [i for i, v in sorted(series.items()) if math.isfinite(v)
                    and (v > t if direction == "above" else v < t)]
        if crossing:
            hits.append(crossing[0])
            caught.append(tr["outcome"])
    false = sum(any(math.isfinite(v) and (v > t if direction == "above" else v < t)
                    for v in tr["series"].get(key, {}).values())
                for tr in trials if not tr["failing"])
    return {"threshold": t, "recall": len(hits) / len(failing) if failing else 0.0,
            "caught": caught,
            "precision": len(hits) / (len(hits) + false) if hits or false else None,
            "earliest": min(hits) if hits else None,
            "median_detection": statistics.median(hits) if hits else None}


def suggest(rows: list[dict[str, Any]], trials: list[dict[str, Any]], top: int = 6
            ) -> dict[str, Any]:
    """A rule file (as data) with one kill rule per top signal."""
    rules = []
    used = set()
    for row in rows:
        if row["threshold"] is None or row["recall"] == 0 or len(rules) >= top:
            continue
        name = re.sub(r"\W", "_", f"calibrated_{row['signal']}_{row['where'] or 'value'}",
                      flags=re.ASCII)
        if name in used:
            continue
        used.add(name)
        op = ">" if row["direction"] == "above" else "<"
        label = statistics.mode(row["caught"])  # the failure this signal catches most
        if not re.fullmatch(r"[a-z][a-z0-9_]*", label):
            label = "failure"
        rules.append({
            "name": name, "expr": f"{row['expr']} {op} {row['threshold']:g}", "for": 1,
            "grace": 0, "labels": {"action": "kill", "failure": label},
            "annotations": {
                "summary": f"{row['expr']} = {{{{ $value }}}}",
                "calibration": (f"zero false kills on {len(trials)} trials; precision "
                                f"{row['precision'] if row['precision'] is not None else 0:.2f},"
                                f" recall {row['recall']:.2f}, earliest detection iteration "
                                f"{row['earliest']}, median {row['median_detection']}; "
                                f"AUC {row['auc']:.2f}"),
            }})
    return {"groups": [{"name": "calibrated", "rules": rules}]}


def print_table(rows: list[dict[str, Any]], trials: list[dict[str, Any]], top: int,
                console) -> None:
    """The ranked signals as a table (names from the run printed verbatim)."""
    from rich.table import Table

    failing = sum(t["failing"] for t in trials)
    table = Table(title=f"Signals ranked ({failing} failing vs {len(trials) - failing} healthy "
                  "trials)")
    for col in ("signal", "direction", "AUC", "r_pb", "first separated", "threshold",
                "recall", "median detection"):
        table.add_column(col, overflow="fold")
    for r in rows[:top]:
        table.add_row(safe(r["expr"]), r["direction"], f"{r['auc']:.2f}",
                      f"{r['point_biserial']:.2f}", str(r["first_separated_iteration"]),
                      f"{r['threshold']:.4g}" if r["threshold"] is not None else "-",
                      f"{r['recall']:.2f}", str(r["median_detection"]))
    print_wide(console, table)


def write_rules(path: Path, rules: dict[str, Any], sources: list[str]) -> None:
    """Write the suggested rule file; ``ReportError`` (a ``StoreError``) naming the path when
    it cannot be written."""
    header = (f"# Suggested by `monitor calibrate` from {plain(', '.join(sources))}.\n"
              "# Thresholds give zero false kills on that history; check with `monitor replay`\n"
              "# on other runs before using them.\n")
    path = Path(path)
    if not path.parent.is_dir():
        raise ReportError(f"{path}: cannot write the rules, directory {path.parent} does not "
                          "exist (create it, or give another --output path)")
    try:
        write_atomic(path, header + yaml.safe_dump(rules, sort_keys=False, width=100))
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the rules ({exc.strerror})") from None
