"""Baseline functions that are safe by construction: zscore (any sign) and ratio (positive
baselines only), against the trial's own earlier reports."""

from __future__ import annotations

import pytest

from heuristics.expr import Report, evaluate, parse


def run(expr: str, scalars: list[dict], layers: list[dict] | None = None) -> list:
    tree, history, out = parse(expr), [], []
    for i, s in enumerate(scalars):
        history.append(Report(i + 1, float(i), (layers or [{}] * len(scalars))[i], s))
        out.append(evaluate(tree, history, "rule"))
    return out


def test_zscore_is_absent_until_three_earlier_reports_then_shift_invariant():
    base = [1.0, 1.2, 0.8, 1.0, 3.0]
    plain = run("zscore(loss, 8)", [{"loss": x} for x in base])
    shifted = run("zscore(loss, 8)", [{"loss": x - 10.0} for x in base])  # negative losses
    assert plain[:3] == [None, None, None]
    assert plain[3] == pytest.approx(0.0)
    assert plain[4] == pytest.approx(shifted[4], rel=1e-6) and plain[4] > 5
    assert run("zscore(loss, 8)", [{"loss": -0.3 + 0.01 * (i % 3)} for i in range(8)])[-1] < 3


def test_ratio_needs_a_positive_baseline():
    assert run("ratio(loss, 4)", [{"loss": x} for x in (1, 1, 1, 4)])[-1] == pytest.approx(4)
    assert run("ratio(loss, 4)", [{"loss": x} for x in (-1, -1, -1, -4)])[-1] is None
    assert run("ratio(loss, 4)", [{"loss": x} for x in (0, 0, 0, 4)])[-1] is None


def test_baselines_of_layer_vectors_and_windows():
    layers = [{"a": {"activation_std": x}, "b": {"activation_std": 1.0}}
              for x in (0.5, 0.5, 0.5, 0.5, 0.01)]
    out = run("min(ratio(activation_std, 3))", [{}] * 5, layers)
    assert out[-1] == pytest.approx(0.02)
    # only the N reports before now count: a window of 2 has too few
    assert run("ratio(loss, 2)", [{"loss": 1.0}] * 6)[-1] is None
