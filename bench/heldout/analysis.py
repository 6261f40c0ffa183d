"""Which signals separate a family's failures from its healthy trials, and from when on.

For each family and signal (its losses, and per report the largest dead/evergreen ratio, the
largest and smallest activation spread, the NaN/Inf count and the output power ratio) the
healthy range is the span of the family's healthy trials' values from iteration 3 on; each
broken trial is then described by its value just before and after its onset and by the first
iteration from the onset on at which it leaves that range. Each loss also gets its rise over its
own lowest value so far (``<loss> - min_ever``) (and the range of every family's
healthy trials together: what a fixed threshold would need).
"""

from __future__ import annotations

import math
from typing import Any

from bench.policies import Trial

SETTLED = 3  # iterations excluded from the healthy range (initialisation transients)
LOSS_ROLES = ("train_loss", "generator_loss", "discriminator_loss", "adversarial_loss")


def signals(result: dict[str, Any], vocabulary: dict[str, str]) -> dict[str, float]:
    """The scalar signals of one result (losses under this trial's own names)."""
    health = result.get("health") or {}
    layers = health.get("layers") or {}
    out: dict[str, float] = {}
    for role in LOSS_ROLES:
        name = vocabulary.get(role)
        if name and isinstance(result.get(name), (int, float)):
            out[name] = float(result[name])

    def per_layer(sig: str) -> list[float]:
        return [v[sig] for v in layers.values() if isinstance(v.get(sig), (int, float))
                and math.isfinite(v[sig])]

    for sig, reduce, label in (("dead_ratio", max, "max dead_ratio"),
                               ("evergreen_ratio", max, "max evergreen_ratio"),
                               ("activation_std", max, "max activation_std"),
                               ("activation_std", min, "min activation_std")):
        vals = per_layer(sig)
        if vals:
            out[label] = reduce(vals)
    counts = [v.get("nonfinite_count") for v in layers.values()
              if isinstance(v.get("nonfinite_count"), (int, float))]
    if counts:
        out["max nonfinite_count"] = max(counts)
    model = health.get("model") or {}
    if isinstance(model.get("power_ratio_db"), (int, float)):
        out["power_ratio_db"] = float(model["power_ratio_db"])
    return out


def with_rises(trial: Trial) -> dict[int, dict[str, float]]:
    """Per iteration, ``signals`` plus each loss's rise over its own lowest value so far
    (``<loss> - min_ever``: defined whatever the loss's sign)."""
    out: dict[int, dict[str, float]] = {}
    lowest: dict[str, float] = {}
    for r in trial.results:
        sigs = signals(r, trial.vocabulary)
        for role in LOSS_ROLES:
            name = trial.vocabulary.get(role)
            v = sigs.get(name) if name else None
            if v is None or not math.isfinite(v):
                continue
            if name in lowest:
                sigs[f"{name} - min_ever"] = v - lowest[name]
            lowest[name] = min(v, lowest.get(name, v))
        out[r["training_iteration"]] = sigs
    return out


def _outside(v: float, lo: float, hi: float) -> bool:
    return not math.isfinite(v) or v < lo or v > hi


def healthy_ranges(trials: list[Trial]) -> dict[str, tuple[float, float]]:
    spans: dict[str, list[float]] = {}
    for t in trials:
        if t.failure != "healthy":
            continue
        for it, sigs in with_rises(t).items():
            if it < SETTLED:
                continue
            for k, v in sigs.items():
                if math.isfinite(v):
                    spans.setdefault(k, []).append(v)
    return {k: (min(v), max(v)) for k, v in spans.items()}


def separation(trials: list[Trial]) -> list[dict[str, Any]]:
    """One row per broken trial and signal that leaves its family's healthy range."""
    everyone = healthy_ranges(trials)
    rows = []
    for family in sorted({t.group for t in trials}):
        members = [t for t in trials if t.group == family]
        ranges = healthy_ranges(members)
        for t in members:
            if t.failure == "healthy" or t.onset is None:
                continue
            series = with_rises(t)
            for sig, (lo, hi) in ranges.items():
                first = next((it for it in sorted(series) if it >= t.onset and sig in series[it]
                              and _outside(series[it][sig], lo, hi)), None)
                if first is None:
                    continue
                glo, ghi = everyone.get(sig, (lo, hi))
                first_global = next((it for it in sorted(series) if it >= t.onset
                                     and sig in series[it]
                                     and _outside(series[it][sig], glo, ghi)), None)
                rows.append({
                    "family": family, "trial": t.name, "failure": t.failure, "onset": t.onset,
                    "signal": sig, "healthy_range": [lo, hi], "all_families_range": [glo, ghi],
                    "before": series.get(t.onset - 1, {}).get(sig),
                    "at_onset": series.get(t.onset, {}).get(sig),
                    "after": series.get(t.onset + 2, {}).get(sig),
                    "final": series.get(max(series), {}).get(sig),
                    "first_outside": first, "first_outside_all": first_global})
    return rows
