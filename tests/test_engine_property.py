"""Rule isolation in the engine: a rule decides the same alone as in any rule set, per trial.

Property-based (hypothesis): random rule sets drawn from the expression grammar (signals, layer
selectors, reductions, windows and baselines (zscore, ratio), min_ever/max_ever, arithmetic,
comparisons, and/or/not) over random histories (NaN, Inf, missing signals, trials restored from
older checkpoints that replay iterations, interleaved trials). Plus the two-rule reproduction of
the shared-slot bug, and state saved and reloaded mid-history (whole, and rebuilt from
per-result records). ``HYPOTHESIS_EXAMPLES`` sets the examples per property (default 100).
"""

from __future__ import annotations

import json
import math
import os
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heuristics import engine as engine_module
from heuristics.engine import RuleEngine
from heuristics.expr import WINDOWS, parse
from heuristics.rules import Grace, Hold, Rule

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def make_rule(name: str, expr: str, action: str = "kill", hold: Hold | None = None,
              grace: Grace | None = None) -> Rule:
    return Rule(name=name, group="g", expr=expr, tree=parse(expr), hold=hold or Hold(),
                grace=grace or Grace(),
                labels={"action": action, "failure": "f"},
                annotations={"summary": "value {{ $value }}"}, source="test", line=1)


def dump(x) -> str:
    """Comparable text of verdicts/state (NaN == NaN)."""
    return json.dumps(x, sort_keys=True, allow_nan=True, default=str)


# -- the reproduction from the issue ----------------------------------------------------------
def healthy(k: int, layers: int = 4) -> dict:
    r = {"training_iteration": k, "time_total_s": float(k)}
    for i in range(layers):
        r[f"health/layers/l{i}/activation_std"] = 1.0
        r[f"health/layers/l{i}/activation_mean"] = 0.01 * k
    return r


def test_two_rules_do_not_share_window_slots():
    a = make_rule("a", "avg_over(mean(activation_std), 3) < 0.5")
    b = make_rule("b", "change(mean(activation_mean), 3) > 1000", action="warn")
    for rules in ([a], [a, b], [b, a]):
        engine = RuleEngine(rules)
        verdicts = [v for k in range(1, 21) for v in engine.observe("t", healthy(k))]
        assert verdicts == [], [v.reason for v in verdicts]
        assert engine.killed("t") is None


def test_for_longer_than_the_kept_history_still_fires():
    rule = make_rule("long", "mean(activation_std) > 0.5", hold=Hold(reports=60))
    engine = RuleEngine([rule])
    fired = [v.iteration for k in range(1, 80) for v in engine.observe("t", healthy(k))]
    assert fired == [60]


def test_duplicate_rule_names_are_refused():
    rule = make_rule("a", "loss > 1")
    try:
        RuleEngine([rule, make_rule("a", "loss < 1")])
    except ValueError as exc:
        assert "unique" in str(exc)
    else:
        raise AssertionError("duplicate names accepted")


# -- strategies ---------------------------------------------------------------------------------
LAYERS = ("enc", "blocks.0", "blocks.1")
LAYER_SIGS = ("activation_std", "activation_mean", "dead_ratio")
values = st.one_of(st.floats(-5, 5, allow_nan=False, width=32), st.just(math.nan),
                   st.sampled_from([math.inf, -math.inf, 0.0, 1.0]))

vector = st.one_of(
    st.sampled_from(LAYER_SIGS),
    st.builds(lambda s, g: f'{s}{{layer="{g}"}}', st.sampled_from(LAYER_SIGS),
              st.sampled_from(["blocks.*", "enc", "nothing*"])))
scalar_leaf = st.one_of(
    st.sampled_from(['result("loss")', 'result("lr")', "power_ratio_db"]),
    st.floats(-3, 3, allow_nan=False).map(lambda x: f"{x:.3g}"))


def extend(inner):
    unary = st.builds(lambda f, a: f"{f}({a})",
                      st.sampled_from(["abs", "log10", "nonfinite", "max", "min", "mean",
                                       "sum", "count", "fraction", "any", "all", "min_ever",
                                       "max_ever"]), inner)
    window = st.builds(lambda f, a, n: f"{f}({a}, {n})",
                       st.sampled_from(sorted(WINDOWS)), inner,
                       st.integers(1, 8))
    binary = st.builds(lambda a, op, b: f"({a} {op} {b})", inner,
                       st.sampled_from(["+", "-", "*", "/", "<", "<=", ">", ">=", "==", "!=",
                                        "and", "or"]), inner)
    negate = st.builds(lambda a: f"(not ({a}))", inner) | st.builds(lambda a: f"-({a})", inner)
    return st.one_of(unary, window, binary, negate)


expressions = st.recursive(st.one_of(vector, scalar_leaf), extend, max_leaves=8)
holds = st.one_of(st.builds(Hold, reports=st.integers(1, 3)),
                  st.builds(Hold, reports=st.just(1), seconds=st.sampled_from([0.0, 1.5, 3.0])))
graces = st.one_of(st.builds(Grace, iterations=st.integers(0, 3)),
                   st.builds(Grace, fraction=st.sampled_from([0.1, 0.3])))


@st.composite
def rule_sets(draw) -> list[Rule]:
    n = draw(st.integers(1, 4))
    return [make_rule(f"r{i}", draw(expressions), draw(st.sampled_from(["kill", "warn"])),
                      draw(holds), draw(graces)) for i in range(n)]


@st.composite
def histories(draw) -> list[dict]:
    """Results of one trial: mostly consecutive iterations, sometimes a restore that replays
    from an older iteration, with NaN/Inf and signals that come and go."""
    out, iteration, time_s = [], 0, 0.0
    for _ in range(draw(st.integers(1, 24))):
        if iteration > 2 and draw(st.integers(0, 9)) == 0:
            iteration -= draw(st.integers(1, min(iteration - 1, 6)))  # restored: replays
        iteration += 1
        time_s += draw(st.sampled_from([0.5, 1.0, 2.0]))
        r = {"training_iteration": iteration, "time_total_s": time_s, "max_iterations": 20}
        for layer in draw(st.sets(st.sampled_from(LAYERS))):
            for sig in draw(st.sets(st.sampled_from(LAYER_SIGS), min_size=1)):
                r[f"health/layers/{layer}/{sig}"] = draw(values)
        if draw(st.booleans()):
            r["loss"] = draw(values)
        if draw(st.booleans()):
            r["lr"] = draw(values)
        if draw(st.booleans()):
            r["health/model/power_ratio_db"] = draw(values)
        out.append(r)
    return out


def run(engine: RuleEngine, trial: str, results: list[dict]) -> list[list]:
    """Per result: its verdicts and every rule's outcome on the newest record."""
    steps = []
    for r in results:
        verdicts = engine.observe(trial, r, wall_time=0.0)
        state = engine.trials[trial]
        if state.killed is not None and not verdicts:
            break  # stopped earlier: nothing more is evaluated
        rec = state.reports[-1]
        steps.append([[v.to_dict() for v in verdicts],
                      {name: [rec.held.get(name), rec.firing.get(name), rec.streak.get(name)]
                       for name in engine.keeps}])
    return steps


def only(step: list, rule: str) -> list:
    verdicts, outcome = step
    return [[v for v in verdicts if v["rule"] == rule], outcome.get(rule)]


def same_alone_and_together(rules: list[Rule], results: list[dict]) -> None:
    together = run(RuleEngine(rules, "e", shadow=True), "t", results)
    assert len(together) == len(results)  # shadow mode stops nothing
    for rule in rules:
        alone = run(RuleEngine([rule], "e", shadow=True), "t", results)
        assert dump([only(s, rule.name) for s in together]) == \
            dump([only(s, rule.name) for s in alone]), rule.expr


@SETTINGS
@given(rules=rule_sets(), results=histories())
def test_each_rule_decides_the_same_alone_and_together_in_shadow_mode(rules, results):
    same_alone_and_together(rules, results)


@SETTINGS
@given(rules=rule_sets(), results=histories())
def test_isolation_holds_when_old_reports_are_dropped(rules, results):
    """With little history kept, rules with different windows drop reports at different
    times; a restore then leaves each rule exactly the reports it would have alone."""
    with patch.object(engine_module, "EXTRA_HISTORY", 1):
        same_alone_and_together(rules, results)


@SETTINGS
@given(rules=rule_sets(), results=histories())
def test_each_rule_decides_the_same_alone_and_together_until_the_kill(rules, results):
    together = run(RuleEngine(rules, "e"), "t", results)
    alone = {r.name: run(RuleEngine([r], "e"), "t", results) for r in rules}
    for i, (verdicts, outcome) in enumerate(together):
        expected, kill = [], None
        for rule in rules:
            assert i < len(alone[rule.name])  # no rule alone stopped the trial earlier
            own, own_outcome = only(alone[rule.name][i], rule.name)
            assert dump(outcome[rule.name]) == dump(own_outcome), rule.expr
            for v in own:
                if v["action"] == "kill" and not v["shadow"]:
                    kill = kill or v  # the first kill in rule order is the one recorded
                else:
                    expected.append(v)
        expected = ([kill] if kill else []) + expected
        assert dump(verdicts) == dump(expected)


@SETTINGS
@given(rules=rule_sets(), first=histories(), second=histories(),
       order=st.randoms(use_true_random=False))
def test_trials_do_not_share_state(rules, first, second, order):
    labels = ["a"] * len(first) + ["b"] * len(second)
    order.shuffle(labels)
    queues = {"a": iter(first), "b": iter(second)}
    feed = [(t, next(queues[t])) for t in labels]
    engine = RuleEngine(rules, "e", shadow=True)
    got: dict[str, list] = {"a": [], "b": []}
    for trial, r in feed:
        got[trial].append([v.to_dict() for v in engine.observe(trial, r, wall_time=0.0)])
    for trial, results in (("a", first), ("b", second)):
        single = RuleEngine(rules, "e", shadow=True)
        want = [[v.to_dict() for v in single.observe(trial, r, wall_time=0.0)] for r in results]
        assert dump(got[trial]) == dump(want)


@SETTINGS
@given(rules=rule_sets(), results=histories(), split=st.integers(0, 24))
def test_state_saved_mid_history_gives_the_same_verdicts(rules, results, split):
    split = min(split, len(results))
    whole = RuleEngine(rules, "e")
    want = [[v.to_dict() for v in whole.observe("t", r, wall_time=0.0)] for r in results]

    first = RuleEngine(rules, "e")
    records: dict[int, dict] = {}  # a store fed with one record per result
    small: dict = {}
    got = []
    for r in results[:split]:
        got.append([v.to_dict() for v in first.observe("t", r, wall_time=0.0)])
        if "t" in first.trials and first.trials["t"].reports:
            newest = first.last_record("t")
            it = newest["record"]["iteration"]
            records = {i: rec for i, rec in records.items() if i < it}
            records[it] = newest["record"]
            records = dict(sorted(records.items())[-first.keep:])
            small = {"killed": newest["killed"], "first": newest["first"]}
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=True))

    whole_reload = RuleEngine(rules, "e")
    whole_reload.load_state_dict(saved)
    incremental = RuleEngine(rules, "e")
    if records:
        incremental.load_trial_state("t", json.loads(json.dumps(
            {"reports": [records[i] for i in sorted(records)], **small}, allow_nan=True)))
    for engine in (whole_reload, incremental):
        rest = [[v.to_dict() for v in engine.observe("t", r, wall_time=0.0)]
                for r in results[split:]]
        assert dump(got + rest) == dump(want)


def test_the_value_is_that_of_the_comparison_that_fired():
    """Of an ``or`` of comparisons, ``$value`` is the side that held, not an absent one."""
    rule = make_rule("jump", "train_loss > 5 or generator_loss > 5")
    engine = RuleEngine([rule], vocabulary=engine_module.Vocabulary(generator_loss="loss_g"))
    verdicts = engine.observe("t", {"training_iteration": 1, "loss_g": 7.5})
    assert [v.value for v in verdicts] == [7.5]
    assert "value 7.5" in verdicts[0].reason and "n/a" not in verdicts[0].summary
