"""Each built-in rule fires on a real short training that fails its way, and stays silent on a
healthy one. The trainings are real (``master_runs``); the rules are the shipped YAML files."""

from __future__ import annotations

import pytest

from heuristics.engine import RuleEngine
from heuristics.rules import load_rules

pytestmark = pytest.mark.slow
RULES = {r.name: r for r in load_rules(["builtin"])}


def verdicts(rules, reports, budget=30):
    engine = RuleEngine(rules, "master_v464", budget=budget)
    return [v for r in reports for v in engine.observe("t", r)]


@pytest.mark.parametrize("rule, variant, iterations, by_iteration", [
    ("divergence", "divergence", 2, 1),
    ("dead_relu_collapse", "dead_relu_bias_init", 3, 2),
    ("dead_relu_collapse", "dead_relu_high_lr", 8, 6),
    ("evergreen_layer", "evergreen_bias_init", 3, 2),
    ("activation_collapse", "dead_relu_high_lr", 8, 8),
    ("activation_explosion", "activation_explosion_init", 3, 2),
    ("spread_collapse", "dead_relu_high_lr", 8, 8),
    ("silence_collapse", "silence_collapse", 8, 8),
])
def test_rule_fires_on_its_failure(master_runs, rule, variant, iterations, by_iteration):
    found = verdicts([RULES[rule]], master_runs(variant, iterations))
    assert found, f"{rule} did not fire on {variant} within {iterations} iterations"
    first = found[0]
    assert first.rule == rule
    assert first.iteration <= by_iteration
    assert first.action == RULES[rule].action
    assert first.failure == RULES[rule].failure
    assert str(first.iteration) in first.reason and rule in first.reason


def test_no_rule_fires_on_healthy_training(master_runs):
    assert verdicts(list(RULES.values()), master_runs("healthy", 10)) == []


def test_first_kill_is_attributed_to_the_failure_it_predicts(master_runs):
    """With every rule on, each failing configuration is killed for its own failure."""
    expected = {"divergence": "divergence", "dead_relu_bias_init": "dead_relu_collapse",
                "dead_relu_high_lr": "dead_relu_collapse", "silence_collapse": "silence_collapse",
                "evergreen_bias_init": "linearised_layer"}
    iterations = {"divergence": 2, "dead_relu_bias_init": 3, "dead_relu_high_lr": 8,
                  "silence_collapse": 8, "evergreen_bias_init": 3}
    for variant, failure in expected.items():
        kills = [v for v in verdicts(list(RULES.values()), master_runs(variant,
                                                                       iterations[variant]))
                 if v.stops]
        assert [v.failure for v in kills] == [failure], variant


def test_discriminator_overpowering_only_warns(master_runs):
    """The family-free test has no in-sample failure to stand on (the LSGAN constants that
    killed this variant kill healthy hinge GANs): at most a warning, never a kill."""
    assert RULES["discriminator_overpowering"].action == "warn"
    found = verdicts(list(RULES.values()), master_runs("discriminator_overpowering", 10))
    assert not [v for v in found if v.stops]


def test_builtin_rules_say_where_their_thresholds_came_from():
    from heuristics.rules import rule_files

    for path in rule_files(["builtin"]):
        assert "Measured" in path.read_text(), path
