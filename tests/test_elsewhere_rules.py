"""The rule forms chosen on the development split of the population written elsewhere
(``bench/heldout/elsewhere``): ``quality`` and ``first()`` in the language, the validation-metric
rule ``quality_regressed`` with a sentence naming the best value and when it was reached, and
the guards that spare learning vocoders (a quiet layer coming alive, a quiet generator that keeps
improving, LeakyReLU units that are never positive, a discriminator layer that turns linear);
each on scripted trials and on the recorded real trainings."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench.heldout.__main__ import as_trial
from bench.heldout.population import History, split_dir
from heuristics.engine import RuleEngine
from heuristics.expr import Report, evaluate, parse
from heuristics.rules import load_rules
from heuristics.vocabulary import Vocabulary
from tests.rule_helpers import feed, heuristic_stops

BUILTIN = load_rules(["builtin"])


def elsewhere(family: str) -> list[Any]:
    directory = split_dir("development", which="elsewhere") / "histories"
    return [as_trial(History.from_dict(json.loads(p.read_text())))
            for p in sorted(directory.glob(f"{family}__*.json"))]


# -- the language ----------------------------------------------------------------------------------
def test_first_keeps_the_first_value_a_signal_had() -> None:
    history = []
    for i, v in enumerate([math.nan, 3.0, 1.0, 5.0]):
        history.append(Report(i + 1, float(i), {}, {"train_loss": v}))
        value = evaluate(parse("first(train_loss)"), history, "s")
    assert value == 3.0  # a NaN start is skipped; later values never replace it


@pytest.mark.parametrize("mode, values, expected", [
    ("min", [2.0, 1.0], -1.0), ("max", [0.2, 0.7], 0.7)])
def test_quality_is_the_validation_metric_signed_higher_is_better(mode: str, values: list,
                                                                   expected: float) -> None:
    rules = load_rules(["builtin"])
    engine = RuleEngine(rules, "x", 40, vocabulary=Vocabulary(validation="v", mode=mode))
    for it, v in enumerate(values, 1):
        engine.observe("t", {"training_iteration": it, "v": v})
    assert engine.trials["t"].reports[-1].scalars["quality"] == expected


# -- quality_regressed -----------------------------------------------------------------------------
def population(regress_at: int | None = None, start_worse: bool = False,
               n: int = 6) -> dict[str, list[dict[str, Any]]]:
    """Validation losses falling from 10 towards 2; one trial gives most of it back."""
    out = {}
    for k in range(n):
        rows = []
        for it in range(1, 41):
            v = 2 + 8 * math.exp(-it / 6) + 0.05 * math.sin(it + k)
            if k == 0 and regress_at is not None and it >= regress_at:
                v = 8.0 if not start_worse else 12.0
            rows.append({"training_iteration": it, "val": v})
        out[f"t{k}"] = rows
    return out


VAL = Vocabulary(validation="val", mode="min")


def test_a_trial_that_gives_back_its_gain_is_stopped_with_its_best_named() -> None:
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=VAL)
    assert feed(engine, population(regress_at=20)) == {"t0": ("quality_regressed", 23)}
    reason = engine.killed("t0")["reason"]
    assert "val has given back" in reason and "at iteration 19" in reason


def test_a_trial_worse_than_its_start_or_a_sweep_regressing_together_is_left_alone() -> None:
    assert feed(RuleEngine(BUILTIN, "x", 40, vocabulary=VAL),
                population(regress_at=20, start_worse=True)) == {}
    together = {k: [{**r, "val": 8.0 if r["training_iteration"] >= 20 else r["val"]}
                    for r in rows] for k, rows in population().items()}
    assert feed(RuleEngine(BUILTIN, "x", 40, vocabulary=VAL), together) == {}


# -- guards on scripted layers ----------------------------------------------------------------
def layer_trial(layers_at: Any, n: int = 12, **extra: Any) -> list[dict[str, Any]]:
    return [{"training_iteration": it, **extra, "health": {"layers": layers_at(it)}}
            for it in range(1, n + 1)]


def test_leaky_units_never_positive_are_not_dead_but_zero_output_is() -> None:
    leaky = layer_trial(lambda it: {"g": {"dead_ratio": 1.0, "activation_std": 0.05}})
    dead = layer_trial(lambda it: {"g": {"dead_ratio": 1.0, "activation_std": 0.0}})
    partly = layer_trial(lambda it: {"g": {"dead_ratio": 0.95, "activation_std": 0.01}})
    stops = feed(RuleEngine(BUILTIN, "x", 12), {"leaky": leaky, "dead": dead, "partly": partly})
    assert stops == {"dead": ("dead_relu_collapse", 2), "partly": ("dead_relu_collapse", 2)}


def test_a_layer_linear_from_the_start_is_stopped_one_turning_linear_later_is_not() -> None:
    start = layer_trial(lambda it: {"g": {"evergreen_ratio": 1.0, "activation_std": 0.3}})
    later = layer_trial(lambda it: {"g": {"evergreen_ratio": 0.5 if it < 6 else 1.0,
                                          "activation_std": 0.3}})
    stops = feed(RuleEngine(BUILTIN, "x", 12), {"start": start, "later": later})
    assert stops == {"start": ("evergreen_layer", 2)}


def test_a_quiet_layer_coming_alive_is_not_an_explosion() -> None:
    def quiet(it: int) -> dict[str, Any]:  # a 0.005 layer growing 1.6x a report
        return {"loud": {"activation_std": 0.5}, "quiet": {"activation_std": 0.005 * 1.6 ** it}}

    def loud(it: int) -> dict[str, Any]:
        return {"loud": {"activation_std": 0.5 * (1.6 ** max(0, it - 8))},
                "quiet": {"activation_std": 0.005}}

    stops = feed(RuleEngine(BUILTIN, "x", 12),
                 {"quiet": layer_trial(quiet), "loud": layer_trial(loud)})
    assert stops == {"loud": ("spread_explosion", 12)}


# -- the recorded development split ----------------------------------------------------------------
def test_recorded_vocoders_lose_no_healthy_trial_and_keep_their_catches() -> None:
    for family in ("hifigan", "melgan"):
        trials = elsewhere(family)
        stops = heuristic_stops(trials, BUILTIN)
        for t in trials:
            if t.failure == "healthy":  # MelGANs dipping to -13..-22 dB together: spared
                assert t.name not in stops, (t.name, stops.get(t.name))
            elif t.name in stops and t.name != "melgan/lr_spike_ttur_b8":  # silent before onset
                assert stops[t.name][1] > t.onset, (t.name, stops[t.name])
    hifigan = heuristic_stops(elsewhere("hifigan"), BUILTIN)
    assert hifigan["hifigan/d_lr_boost_b8"][1] == 14  # onset 12; generator_outpaced held 3
    assert hifigan["hifigan/mel_off_wide_b4"][0] == "quality_regressed"


def test_recorded_failures_seen_only_in_quality_are_stopped_after_onset() -> None:
    lstm = heuristic_stops(elsewhere("lstm"), BUILTIN)
    # onset 12: every layer knocked flat at 13-14 (network_collapse; relearning slowly after)
    assert lstm["lstm/lr_spike_adamw_b32"] == ("network_collapse", 14)
    assert lstm["lstm/decay_jump_adamw_b64"][0] == "quality_regressed"
    vae = heuristic_stops(elsewhere("vae"), BUILTIN)
    assert vae["vae/beta_jump_adam_b32"] == ("quality_regressed", 17)  # onset 14
    healthy = {t.name for t in elsewhere("vae") if t.failure == "healthy"}
    assert healthy and not healthy & set(vae)


# -- revision 8 ------------------------------------------------------------------------------------
def spread_trial(factor_at: Any, layers: int = 3, n: int = 16) -> list[dict[str, Any]]:
    """Layers whose spread is 0.4 (with a little noise) times ``factor_at(it, layer)``."""
    return [{"training_iteration": it, "health": {"layers": {
        f"l{j}": {"activation_std": 0.4 * (1 + 0.02 * math.sin(it + j)) * factor_at(it, j)}
        for j in range(layers)}}} for it in range(1, n + 1)]


def test_every_layer_falling_together_is_a_network_collapse_one_layer_is_not() -> None:
    together = spread_trial(lambda it, j: 0.15 if it >= 10 else 1.0)
    one = spread_trial(lambda it, j: 0.15 if it >= 10 and j == 0 else 1.0)
    halved = spread_trial(lambda it, j: 0.5 if it >= 10 else 1.0)
    stops = feed(RuleEngine(BUILTIN, "x", 16),
                 {"together": together, "one": one, "halved": halved})
    assert stops == {"together": ("network_collapse", 11)}  # held 2 reports from 10


def vocoder_sweep(start_db: float, dip: str = "falls") -> dict[str, list[dict[str, Any]]]:
    """Five generators: four at -3 dB, one starting at ``start_db`` and falling 1.5 dB a
    report from iteration 3 to -20 (``falls``), or first dipping to -22 at 2-4 (inside the
    grace) and recovering to -6 before falling to -18 (``second``)."""
    out = {}
    for k in range(5):
        rows = []
        for it in range(1, 21):
            db = -3 + 0.3 * math.sin(it + 2 * k)
            if k == 0:
                db = max(start_db - 1.5 * max(0, it - 2), -20.0)
                if dip == "second":
                    db = -22.0 if 2 <= it <= 4 else -6.0 if it <= 12 else -6.0 - 1.5 * (it - 12)
            rows.append({"training_iteration": it,
                         "health": {"model": {"power_ratio_db": db + 0.1 * math.sin(3 * it)}}})
        out[f"g{k}"] = rows
    return out


def test_silence_is_power_lost_from_the_start_and_at_its_lowest() -> None:
    lost = feed(RuleEngine(BUILTIN, "x", 20), vocoder_sweep(0.0))
    assert set(lost) == {"g0"} and lost["g0"][0] == "silence_collapse"
    quiet_from_init = feed(RuleEngine(BUILTIN, "x", 20), vocoder_sweep(-11.0))
    assert quiet_from_init == {}  # 9 dB below its start at most: quiet, not collapsing
    second_dip = feed(RuleEngine(BUILTIN, "x", 20), vocoder_sweep(0.0, dip="second"))
    assert second_dip == {}  # -18 after a recovery from -22: not at its lowest


def test_recorded_quiet_ttur_vocoders_of_fresh2_are_spared() -> None:
    directory = split_dir("fresh2", which="elsewhere") / "histories"
    for family, ttur in (("hifigan", "hifigan/ttur_b8_s1"), ("melgan", "melgan/ttur_b8")):
        trials = [as_trial(History.from_dict(json.loads(p.read_text())))
                  for p in sorted(directory.glob(f"{family}__*.json"))]
        stops = heuristic_stops(trials, BUILTIN)
        assert ttur not in stops, stops.get(ttur)  # stopped at 8 and 21 by revision 7
        assert not {t.name for t in trials if t.failure == "healthy"} & set(stops)


# -- revision 9 ------------------------------------------------------------------------------------
def stalling_sweep(kind: str) -> dict[str, list[dict[str, Any]]]:
    """Five trials whose validation loss falls from 10 towards 2; trial t0 instead: ``stalls``
    (its best at 14, then 0.8 worse and slowly worsening while the others improve), ``drifts``
    (2 worse for 10 reports from 14, then back with the others), or ``converged`` (every trial
    flat from 14: no new best anywhere, no outlier)."""
    out = {}
    for k in range(5):
        rows = []
        for it in range(1, 41):
            v = 2 + 8 * math.exp(-it / 8) + 0.02 * math.sin(it + 2 * k)
            if kind == "converged" and it > 14:
                v = 2 + 8 * math.exp(-14 / 8) + 0.02 * math.sin(it + 2 * k)
            if k == 0 and it > 14:
                best = 2 + 8 * math.exp(-14 / 8)
                if kind == "stalls":
                    v = best + 0.8 + 0.02 * (it - 14)
                elif kind == "drifts" and it <= 24:
                    v = best + 2.0
            rows.append({"training_iteration": it, "val": v})
        out[f"t{k}"] = rows
    return out


def test_a_trial_that_stalls_while_its_siblings_improve_is_stopped_with_its_best_named() -> None:
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=VAL)
    # no new best from 15 on: at 26 the last 12 reports (15-26) are all below the best; held 8
    assert feed(engine, stalling_sweep("stalls")) == {"t0": ("quality_stalled", 33)}
    reason = engine.killed("t0")["reason"]
    assert "no new best for more than 12 reports" in reason and "at iteration 14" in reason
    # a drift of 10 reports that comes back, and a population converged together, are spared
    for kind in ("drifts", "converged"):
        assert feed(RuleEngine(BUILTIN, "x", 40, vocabulary=VAL), stalling_sweep(kind)) == {}


def test_recorded_melgans_without_stft_loss_are_stopped_on_every_split_read() -> None:
    # missed by revision 8 on all four splits: they lose 15-55 % of their gain, unevenly
    for split in ("development", "fresh", "fresh2", "fresh3"):
        directory = split_dir(split, which="elsewhere") / "histories"
        trials = [as_trial(History.from_dict(json.loads(p.read_text())))
                  for p in sorted(directory.glob("melgan__*.json"))]
        stops = heuristic_stops(trials, BUILTIN)
        rule, stop = stops["melgan/mel_off_wide_b4"]
        assert rule == "quality_stalled" and 16 < stop <= 38, (split, rule, stop)  # onset 16
        assert "quality_stalled" not in {rule for name, (rule, _) in stops.items()
                                         if name != "melgan/mel_off_wide_b4"}
