"""Population evidence for small sweeps and several failures at once: ``peer_zscore``'s scale
(the siblings' MAD, floored by the lower median of their own report-to-report noise, no mean
absolute deviation), its minimum of 3 siblings, survivors once siblings are stopped, and the
notice when a population rule cannot act (at the first report where it happens, in the run's
notices and summary)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from heuristics.coverage import SignalCoverage
from heuristics.engine import RuleEngine
from heuristics.expr import MIN_PEERS, peer_zscore
from heuristics.rules import load_rules
from heuristics.vocabulary import Vocabulary
from tests.rule_helpers import feed, rule

BUILTIN = load_rules(["builtin"])
HINGE = Vocabulary(generator_loss="g_loss", discriminator_loss="d_loss",
                   adversarial_loss="g_adv", gan_loss="hinge", validation="val_spec_db")


def gan(seed: int, n: int = 40, jump_at: int | None = None, jump: float = 6.0,
        nan_at: int | None = None) -> list[dict[str, Any]]:
    """A GAN's reports: an adversarial loss swinging around 1.2; from ``jump_at`` on it jumps
    (an overpowering discriminator); from ``nan_at`` on every loss is NaN."""
    rng = random.Random(seed)
    out = []
    for it in range(1, n + 1):
        adv = 1.2 + 0.3 * math.sin(it / 3 + seed) + rng.gauss(0, 0.15)
        if jump_at is not None and it >= jump_at:
            adv += jump * math.exp(-(it - jump_at) / 10)
        if nan_at is not None and it >= nan_at:
            adv = math.nan
        out.append({"training_iteration": it, "time_total_s": float(it), "g_adv": adv,
                    "g_loss": adv + 0.2, "d_loss": max(0.0, 0.5 + rng.gauss(0, 0.3)),
                    "val_spec_db": 20 - 0.1 * it})
    return out


# -- the scale -----------------------------------------------------------------------------------
def test_one_far_off_sibling_does_not_mask_another_outlier() -> None:
    healthy = [(1.0, 0.1), (1.1, 0.1), (0.9, 0.1), (1.05, 0.1)]
    failing = (60.0, 25.0)  # a failed sibling: far off and noisy
    z = peer_zscore(4.0, [*healthy, failing])
    assert z > 20  # (4 - 1.05) / max(1.4826 MAD 0.07, noise 0.1)
    # the mean absolute deviation the scale used to take would have hidden it
    values = [v for v, _ in [*healthy, failing]]
    median = sorted(values)[2]
    mean_dev = sum(abs(v - median) for v in values) / len(values)
    assert (4.0 - median) / (1.2533 * mean_dev) < 0.5


def test_the_noise_floor_is_the_siblings_lower_median() -> None:
    # identical siblings (the same seed, MAD 0): the floor is their own noise
    assert peer_zscore(1.3, [(1.0, 0.1)] * 4) == pytest.approx(3.0)
    # two of four siblings failing with very noisy series cannot raise the floor
    assert peer_zscore(1.3, [(1.0, 0.1), (1.0, 0.1), (1.0, 9.0), (1.0, 9.0)]) == \
        pytest.approx(3.0)
    # siblings without a noise yet (fewer than 3 reports each): no floor known, no evidence
    assert peer_zscore(2.0, [(1.0, None), (1.0, None), (3.0, None)]) is None
    assert peer_zscore(2.0, [(1.0, None), (1.0, 0.5), (3.0, None)]) == pytest.approx(2.0)


def test_per_layer_values_and_too_few_siblings() -> None:
    others = [({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.2})] * 3
    z = peer_zscore({"a": 1.5, "b": 2.0}, others)
    assert z == {"a": pytest.approx(5.0), "b": pytest.approx(0.0)}
    assert peer_zscore(1.0, [(1.0, 0.1)] * (MIN_PEERS - 1)) is None
    assert peer_zscore(1.0, [(math.nan, 0.1)] * 2 + [(1.0, 0.1)] * 2) is None


# -- the engine and the built-in rules on scripted GAN sweeps -------------------------------------
def test_two_failing_siblings_among_few_are_both_stopped() -> None:
    population = {f"healthy_{i}": gan(i) for i in range(3)}
    population["boosted_a"] = gan(98, jump_at=16)
    population["boosted_b"] = gan(99, jump_at=16, jump=30.0)  # far off: it inflated the scale
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    stops = feed(engine, population)
    assert stops == {"boosted_a": ("generator_outpaced", 18),
                     "boosted_b": ("generator_outpaced", 18)}


def test_a_sweep_of_four_has_evidence() -> None:
    population = {f"healthy_{i}": gan(i) for i in range(3)}
    population["boosted"] = gan(99, jump_at=16)
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    assert feed(engine, population) == {"boosted": ("generator_outpaced", 18)}
    assert feed(RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE),
                {f"healthy_{i}": gan(i) for i in range(4)}) == {}


def test_survivors_keep_their_evidence_after_siblings_are_stopped() -> None:
    """Two of six trials die at iteration 3 (NaN, stopped by ``divergence``); three siblings
    are left to the fourth survivor, whose discriminator overpowers it at 16."""
    population = {f"healthy_{i}": gan(i) for i in range(3)}
    population["nan_a"] = gan(50, nan_at=3)
    population["nan_b"] = gan(51, nan_at=3)
    population["boosted"] = gan(99, jump_at=16)
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    stops = feed(engine, population)
    assert stops == {"nan_a": ("divergence", 3), "nan_b": ("divergence", 3),
                     "boosted": ("generator_outpaced", 18)}


def test_nearly_identical_healthy_siblings_are_not_outliers() -> None:
    """Six runs of one configuration whose losses differ by far less than their own swings:
    the siblings' MAD is tiny, the noise floor is not."""
    base = gan(7)
    population = {f"same_{i}": [{**r, "g_adv": r["g_adv"] + 1e-4 * i} for r in base]
                  for i in range(6)}
    bare = rule("peer_zscore(adversarial_loss) > 5", grace=5)
    assert feed(RuleEngine(bare, "gan", 40, vocabulary=HINGE), population) == {}


# -- the notice ----------------------------------------------------------------------------------
def coverage_notices(population: dict[str, list[dict[str, Any]]],
                     budget: int = 40) -> list[Any]:
    engine = RuleEngine(BUILTIN, "gan", budget, vocabulary=HINGE)
    coverage = SignalCoverage(engine.rules, HINGE, budget=budget)
    out = []
    steps = [(t, rs[i]) for i in range(max(map(len, population.values())))
             for t, rs in population.items() if i < len(rs)]
    for trial, result in steps:
        if engine.killed(trial):
            continue
        engine.observe(trial, result)
        last = engine.trials[trial].reports[-1]
        out += [n for n in coverage.observe(trial, last.layers, last.scalars)
                if n.signal == "siblings"]
    return out


def test_a_small_sweep_is_told_once_when_its_population_rule_would_first_act() -> None:
    notices = coverage_notices({f"t{i}": gan(i) for i in range(3)})
    assert [n.rule for n in notices] == ["generator_outpaced", "quality_regressed",
                                         "quality_stalled"]
    assert all("iteration 10" in n.message for n in notices[1:])  # grace: 10 or 25 % of 40
    text = notices[0].message
    assert "trial t0" in text and "iteration 8" in text  # grace: 5 or 20 % of 40
    assert "2 other trials" in text and "needs 3" in text


def test_a_large_enough_sweep_gets_no_notice() -> None:
    assert coverage_notices({f"t{i}": gan(i) for i in range(4)}) == []


def test_survivors_below_the_minimum_are_told() -> None:
    population = {f"t{i}": gan(i) for i in range(3)}
    population["short"] = gan(9)[:10]  # stopped (or ended) at 10: fine until 12, then 2 left
    notices = coverage_notices(population)
    assert len(notices) == 3 and all("iteration 13" in n.message for n in notices)


def test_a_rule_on_an_undeclared_role_gets_its_own_notice_not_this_one() -> None:
    mlp = Vocabulary(train_loss="loss", validation="val")
    coverage = SignalCoverage(BUILTIN, mlp, budget=40)
    # generator_outpaced reads adversarial_loss, undeclared here
    assert set(coverage.population) == {"learning_undone", "quality_regressed", "quality_stalled"}


def test_a_loop_run_says_it_in_its_summary(tmp_path, capsys) -> None:
    import monitor

    run = monitor.LoopMonitor("small_sweep", budget=12, storage=tmp_path,
                              signals=monitor.Vocabulary(train_loss="loss", validation="val"))
    for trial in ("a", "b"):
        for it in range(1, 13):
            run.report({"loss": 1.0 / it, "val": 1.0 / it}, trial=trial)
        run.end(trial)
    assert "population rule learning_undone cannot compare trial a" in capsys.readouterr().out
    summary = run.close()
    assert any("learning_undone" in n and "siblings" in n for n in summary["notices"])
