"""The rule expression language on scripted reports."""

from __future__ import annotations

import math

import pytest

from heuristics.expr import ExprError, Report, evaluate, parse, truth

NAN = float("nan")


def history(*reports):
    out = []
    for i, (layers, scalars) in enumerate(reports, 1):
        out.append(Report(i, float(i), layers, scalars))
    return out


def value_at_each(expr, reports):
    """Evaluate at every report in turn (as the engine does), return the values."""
    tree, hist, values = parse(expr), [], []
    for r in reports:
        hist.append(r)
        values.append(evaluate(tree, hist))
    return values


LAYERS = {"enc": {"dead_ratio": 1.0, "activation_std": 0.0},
          "blocks.0.act": {"dead_ratio": 0.5, "activation_std": 0.2},
          "blocks.1.act": {"dead_ratio": 0.95, "activation_std": 0.1}}


@pytest.mark.parametrize("expr, expected", [
    ("max(dead_ratio)", 1.0),
    ("min(dead_ratio)", 0.5),
    ("mean(dead_ratio)", pytest.approx((1.0 + 0.5 + 0.95) / 3)),
    ("fraction(dead_ratio > 0.9)", pytest.approx(2 / 3)),
    ("count(dead_ratio)", 3.0),
    ("any(dead_ratio >= 1)", 1.0),
    ("all(dead_ratio > 0.4)", 1.0),
    ('max(dead_ratio{layer="blocks.*"})', 0.95),
    ("loss_d * 2 + 1", 1.2),
    ("-loss_d", -0.1),
    ("not (loss_d < 1)", 0.0),
    ("loss_d < 0.2 and max(dead_ratio) > 0.9", 1.0),
    ("loss_d > 1 or max(dead_ratio) > 0.9", 1.0),
    ('result("custom_metric") / 2', 21.0),
    ("abs(-loss_d)", 0.1),
])
def test_reductions_arithmetic_and_logic(expr, expected):
    hist = history((LAYERS, {"loss_d": 0.1, "custom_metric": 42.0}))
    assert evaluate(parse(expr), hist) == expected


def test_vector_comparisons_broadcast_per_layer():
    hist = history((LAYERS, {}))
    assert evaluate(parse("dead_ratio > 0.9"), hist) == {"enc": 1.0, "blocks.0.act": 0.0,
                                                         "blocks.1.act": 1.0}
    assert truth(evaluate(parse("dead_ratio > 0.99"), hist)) is True  # any layer


def test_recurrent_saturation_is_a_layer_signal_of_recurrent_layers_only():
    hist = history(({"rnn": {"dead_ratio": 0.0, "saturated_ratio": 0.75},
                     "act": {"dead_ratio": 0.1}}, {}))
    assert evaluate(parse("max(saturated_ratio)"), hist) == 0.75  # layers without it skipped
    assert evaluate(parse('saturated_ratio{layer="rnn"} > 0.5'), hist) == {"rnn": 1.0}


def test_windows_and_history():
    reports = history(*[({}, {"loss_d": x}) for x in (0.5, 0.3, 0.1, 0.2)])
    assert value_at_each("avg_over(loss_d, 2)", reports) == pytest.approx([0.5, 0.4, 0.2, 0.15])
    assert value_at_each("min_over(loss_d, 3)", reports) == pytest.approx([0.5, 0.3, 0.1, 0.1])
    assert value_at_each("max_over(loss_d, 2)", reports) == pytest.approx([0.5, 0.5, 0.3, 0.2])
    assert value_at_each("change(loss_d, 1)", reports)[1:] == pytest.approx([-0.2, -0.2, 0.1])
    assert value_at_each("change(loss_d, 1)", reports)[0] is None  # not enough history
    assert value_at_each("loss_d / max_ever(loss_d)", reports) == pytest.approx(
        [1.0, 0.6, 0.2, 0.4])
    assert value_at_each("min_ever(loss_d)", reports) == pytest.approx([0.5, 0.3, 0.1, 0.1])


def test_nan_policy():
    hist = history(({"a": {"dead_ratio": NAN}, "b": {"dead_ratio": 0.2}}, {"loss_g": NAN}))
    assert evaluate(parse("max(dead_ratio)"), hist) == 0.2  # reductions skip NaN layers
    assert evaluate(parse("fraction(dead_ratio > 0.1)"), hist) == 0.5  # NaN compares false
    assert evaluate(parse("loss_g > 1"), hist) == 0.0
    assert evaluate(parse("loss_g < 1"), hist) == 0.0
    assert evaluate(parse("nonfinite(loss_g)"), hist) == 1.0
    hist = history(({"a": {"dead_ratio": NAN}}, {}))
    assert math.isnan(evaluate(parse("max(dead_ratio)"), hist))


def test_missing_signals_make_the_condition_absent():
    hist = history(({}, {"loss_g": 1.0}))
    assert evaluate(parse("max(dead_ratio) > 0.5"), hist) is None
    assert truth(evaluate(parse("loss_d < 0.1"), hist)) is None
    # "or" lets the present side decide; "and" needs both.
    assert evaluate(parse("nonfinite(loss) or loss_g > 0.5"), hist) == 1.0
    assert evaluate(parse("loss_d < 1 and loss_g > 0.5"), hist) is None


@pytest.mark.parametrize("expr, message", [
    ('max(dead_ratio{layer="x"} > 1', "expected ')'"),
    ("median(dead_ratio)", "unknown function 'median'"),
    ("max(dead_ratio", "expected ')'"),
    ("avg_over(loss_d) < 1", "expected ','"),
    ("avg_over(loss_d, 0) < 1", "window must be a whole number"),
    ("loss_d > > 1", "expected a number, a signal or a function"),
    ("0 < loss_d < 1", "chained comparison"),
    ('loss_d{layer="x"} > 1', "not a per-layer signal"),
    ("loss_d > 1; import os", "unexpected character ';'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("", "non-empty"),
])
def test_errors_name_the_problem(expr, message):
    with pytest.raises(ExprError) as info:
        parse(expr)
    assert message in str(info.value)
