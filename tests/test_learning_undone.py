"""``learning_undone`` (a loss back where it started, after a jump, among siblings that are
not), ``absent()`` in the expression language, and ``spread_explosion``'s veto by a loss that
is still falling: scripted populations, then the recorded real trainings of split fresh5."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from heuristics.engine import RuleEngine
from heuristics.expr import Report, evaluate, parse
from heuristics.rules import load_rules
from heuristics.vocabulary import Vocabulary
from tests.rule_helpers import feed, heuristic_stops, rule
from tests.rule_helpers import recorded as recorded_split

BUILTIN = load_rules(["builtin"])
PLAIN = Vocabulary(train_loss="train_loss", validation="val_loss")


# -- absent() -------------------------------------------------------------------------------------
def at(scalars: dict[str, float]) -> list[Report]:
    return [Report(1, 0.0, {}, scalars)]


def test_absent_is_one_without_the_value_and_zero_with_it() -> None:
    assert evaluate(parse("absent(train_loss)"), at({})) == 1.0
    assert evaluate(parse("absent(train_loss)"), at({"train_loss": -3.0})) == 0.0
    assert evaluate(parse("absent(train_loss)"), at({"train_loss": math.nan})) == 0.0
    # a history too short for the window is absent too
    assert evaluate(parse("absent(zscore(train_loss, 8))"), at({"train_loss": 1.0})) == 1.0


@pytest.mark.parametrize("scalars, expected", [
    ({"x": 5.0}, 1.0),  # no loss reported: the confirmation is optional
    ({"x": 5.0, "train_loss": 1.0}, 1.0),
    ({"x": 5.0, "train_loss": -2.0}, 0.0),  # reported and against: vetoed
    ({"x": 1.0}, 0.0),
])
def test_absent_makes_a_confirmation_optional(scalars: dict[str, float],
                                              expected: float) -> None:
    tree = parse("x > 3 and (absent(train_loss) or train_loss > -1)")
    assert evaluate(tree, at(scalars)) == expected


# -- learning_undone on scripted populations -----------------------------------------------------
def curve(seed: int, undone_at: int | None = None, rise_at: int | None = None,
          start_at: int = 1, shift: float = 0.0, scale: float = 1.0) -> list[dict[str, Any]]:
    """A loss that falls from 2.0 towards 0.3 from ``start_at`` on (per-batch noise); from
    ``undone_at`` it jumps and settles back at its start (a spike that left the weights at
    chance); from ``rise_at`` it rises by 2.0 for good, above its start (a scheduled
    loss-weight change). ``shift`` and ``scale`` move it anywhere: the rule must not care."""
    rng = random.Random(seed)
    out = []
    for it in range(1, 41):
        loss = 0.3 + 1.7 * math.exp(-max(0, it - start_at) / 4) + rng.gauss(0, 0.02)
        if undone_at is not None and it >= undone_at:
            loss = 2.0 + (1.5 if it == undone_at else 0.0) + rng.gauss(0, 0.01)
        if rise_at is not None and it >= rise_at:
            loss += 2.0
        loss = shift + scale * loss
        out.append({"training_iteration": it, "time_total_s": float(it), "train_loss": loss,
                    "val_loss": loss})
    return out


def undone_population(**kw: Any) -> dict[str, list[dict[str, Any]]]:
    population = {f"healthy_{i}": curve(i, **kw) for i in range(6)}
    population["undone"] = curve(99, undone_at=15, **kw)
    return population


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (-7.0, 1.0), (-2.1, 1.0), (0.0, 1e-4),
                                          (5e4, 300.0)])
def test_a_trial_back_at_its_start_after_a_jump_is_stopped_on_any_scale_and_sign(
        shift: float, scale: float) -> None:
    """Negative, zero-crossing, tiny and huge losses: the same verdict, 2 reports after the
    jump (held 3), and no sibling stopped."""
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=PLAIN)
    stops = feed(engine, undone_population(shift=shift, scale=scale))
    assert stops == {"undone": ("learning_undone", 17)}
    assert "sibling" in engine.killed("undone")["reason"]


def test_a_population_whose_losses_rise_together_is_left_alone() -> None:
    """A scheduled loss-weight change: every trial's loss rises by the same step at 20 and
    stays up (a jump, and back above the start); the siblings share it, so no outlier."""
    population = {f"t{i}": curve(i, rise_at=20) for i in range(7)}
    assert feed(RuleEngine(BUILTIN, "x", 40, vocabulary=PLAIN), population) == {}
    only = rule("(train_loss - min_ever(train_loss)) > 0.8 * (max_ever(min_over(train_loss, 3))"
                " - min_ever(train_loss)) and max_over(zscore(train_loss, 8, 1), 4) > 2",
                hold=3, grace="10 or 25%")
    # without the siblings' evidence the same population is all stopped
    assert len(feed(RuleEngine(only, "x", 40, vocabulary=PLAIN), population)) == 7


def test_a_slow_starter_is_not_taken_for_a_trial_that_lost_what_it_learned() -> None:
    """A trial that only starts learning at 16 (a long warm-up): at its start, an outlier
    among its siblings, with nothing learned to lose; there was no jump."""
    population = {f"healthy_{i}": curve(i) for i in range(6)}
    population["warm_up"] = curve(50, start_at=16)
    assert feed(RuleEngine(BUILTIN, "x", 40, vocabulary=PLAIN), population) == {}
    fraction_only = rule("(train_loss - min_ever(train_loss)) > 0.8 * (max_ever(min_over("
                         "train_loss, 3)) - min_ever(train_loss))", hold=3, grace="10 or 25%")
    assert "warm_up" in feed(RuleEngine(fraction_only, "x", 40, vocabulary=PLAIN), population)


def test_without_siblings_the_rule_gives_no_evidence() -> None:
    """One trial alone (a plain PyTorch loop): peer_zscore is absent, the rule never holds."""
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=PLAIN)
    assert feed(engine, {"undone": curve(99, undone_at=15)}) == {}


# -- spread_explosion's veto ---------------------------------------------------------------------
def growing(seed: int, loss_falls: bool, with_loss: bool = True) -> list[dict[str, Any]]:
    """A layer's spread 4x its own level from 14 on; the loss falling fast at that time (a
    network still learning) or flat."""
    rng = random.Random(seed)
    out = []
    for it in range(1, 41):
        loss = (0.2 + 2.0 * math.exp(-it / 6) if loss_falls else 0.5) + rng.gauss(0, 0.002)
        layer = {"dead_ratio": 0.1, "evergreen_ratio": 0.1, "nonfinite_count": 0.0}
        spread = (4.0 if it >= 14 else 1.0) * (1 + rng.uniform(-.01, .01))
        result = {"training_iteration": it, "time_total_s": float(it), "val_loss": loss,
                  "health": {"layers": {"1": {**layer, "activation_std": spread},
                                        "2": {**layer, "activation_std": 0.7}}}}
        if with_loss:
            result["train_loss"] = loss
        out.append(result)
    return out


def test_spread_growth_with_a_falling_loss_is_learning_not_an_explosion() -> None:
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=PLAIN)
    assert feed(engine, {"learning": growing(0, loss_falls=True)}) == {}
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=PLAIN)
    assert feed(engine, {"flat": growing(0, loss_falls=False)}) == {
        "flat": ("spread_explosion", 15)}


def test_spread_explosion_still_fires_for_a_training_that_reports_no_loss() -> None:
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=Vocabulary(validation="val_loss"))
    assert feed(engine, {"no_loss": growing(0, loss_falls=True, with_loss=False)}) == {
        "no_loss": ("spread_explosion", 15)}


# -- on recorded real trainings (held-out split fresh5: the histories in the repository) ---------
def recorded(family: str) -> list[Any]:
    return recorded_split(family, "fresh5")


def stops(trials: list[Any]) -> dict[str, tuple[str, int]]:
    return heuristic_stops(trials, BUILTIN)


def test_recorded_transformer_stuck_at_chance_after_a_spike_is_stopped() -> None:
    """Nine real LayerNorm transformers: the one whose Adam rate was spiked 30x at 12 went back
    to chance (loss 0.19 -> 2.32 -> 1.35) with its spreads moving 2.2-4.2x, never 3x for 2
    reports; learning_undone stops it 2 reports after the onset, and no healthy one."""
    trials = recorded("transformer")
    assert len(trials) == 9
    stopped = stops(trials)
    assert stopped["transformer/lr_spike_adam_b64"] == ("learning_undone", 14)
    assert not any(t.name in stopped for t in trials if t.failure == "healthy")


def test_recorded_convnext_whose_spread_grows_while_learning_is_left_to_run() -> None:
    """timm's ConvNeXt (code nobody here wrote): a healthy run's spread grew 3.15x and 3.08x
    its own median at 15-16 while its loss fell (robust z -3.5, -2.5); the broken ones are
    still stopped."""
    trials = recorded("timm")
    stopped = stops(trials)
    assert not any(t.name in stopped for t in trials if t.failure == "healthy")
    assert stopped["timm/lr_spike_adamw_b32"][1] == 13
    assert stopped["timm/nan_input_adamw_b64"] == ("divergence", 14)
