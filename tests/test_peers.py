"""Population-relative evidence (``peer_zscore``) and lagged baselines (``zscore(x, N, K)``):
the expression language, the engine's sibling table (restarts, replays, trials that run one
after another) and the built-in rules that use them, on scripted GAN and CNN populations."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from heuristics.engine import RuleEngine
from heuristics.expr import ExprError, Report, evaluate, max_window, parse
from heuristics.rules import load_rules
from heuristics.vocabulary import Vocabulary
from tests.rule_helpers import feed, heuristic_stops, rule
from tests.rule_helpers import recorded as recorded_split

BUILTIN = load_rules(["builtin"])
HINGE = Vocabulary(generator_loss="g_loss", discriminator_loss="d_loss",
                   adversarial_loss="g_adv", gan_loss="hinge", validation="val_spec_db")


def reports(values: list[float]) -> list[Report]:
    return [Report(i + 1, float(i), {}, {"train_loss": v}) for i, v in enumerate(values)]


# -- zscore / ratio with an offset ---------------------------------------------------------------
def test_offset_baseline_ends_k_reports_earlier() -> None:
    series = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 6.0, 5.0]
    history = reports(series)
    lagged = evaluate(parse("zscore(train_loss, 8, 1)"), history)
    plain_before_jump = evaluate(parse("zscore(train_loss, 8)"), reports(series[:-2] + [5.0]))
    assert lagged == pytest.approx(plain_before_jump)  # the same 8 reports before the jump
    # without the offset the jump sits in the baseline and inflates its spread
    assert evaluate(parse("zscore(train_loss, 8)"), history) < lagged / 2
    assert evaluate(parse("zscore(train_loss, 8, 0)"), history) == evaluate(
        parse("zscore(train_loss, 8)"), history)
    ratio = evaluate(parse("ratio(train_loss, 3, 2)"), history)  # median of 1.05, 0.95, 1.0
    assert ratio == pytest.approx(5.0 / 1.0)


def test_offset_needs_its_reports_and_widens_the_window() -> None:
    # now, 2 skipped, 3 in the baseline: 6 reports
    assert evaluate(parse("zscore(train_loss, 3, 2)"), reports([1.0, 2.0, 3.0, 4.0, 5.0])) is None
    assert evaluate(parse("zscore(train_loss, 3, 2)"),
                    reports([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])) == pytest.approx((9.0 - 2.0) / 1.4826)
    assert max_window(parse("zscore(train_loss, 8, 3) > 5")) == 11


@pytest.mark.parametrize("text, expected", [
    ("zscore(train_loss, 8, -1)", "expected num"),
    ("zscore(train_loss, 8, 1.5)", "offset must be a whole number"),
    ("avg_over(train_loss, 8, 1)", "expected ')'"),
    ("peer_zscore(zscore(train_loss, 8))", "computed from one report"),
    ("peer_zscore(min_ever(train_loss))", "computed from one report"),
])
def test_bad_offsets_and_peer_arguments_are_refused_with_the_column(text: str,
                                                                   expected: str) -> None:
    with pytest.raises(ExprError) as e:
        parse(text)
    assert expected in str(e.value) and "column" in str(e.value)


# -- peer_zscore in the engine -------------------------------------------------------------------
def losses(seed: int, n: int = 40, scale: float = 1.0, jump_at: int | None = None,
           jump: float = 6.0, everyone_jumps_at: int | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for it in range(1, n + 1):
        adv = scale * (1.2 + 0.3 * math.sin(it / 3 + seed) + rng.gauss(0, 0.15))
        if jump_at is not None and it >= jump_at:
            adv += jump * math.exp(-(it - jump_at) / 10)
        if everyone_jumps_at is not None and it >= everyone_jumps_at:
            adv += jump
        out.append({"training_iteration": it, "time_total_s": float(it), "g_adv": adv,
                    "g_loss": adv + 0.2, "d_loss": max(0.0, 0.5 + rng.gauss(0, 0.3)),
                    "val_spec_db": 20 - 0.1 * it})
    return out


def gan_population(**boosted: Any) -> dict[str, list[dict[str, Any]]]:
    population = {f"healthy_{i}": losses(i) for i in range(6)}
    population["boosted"] = losses(99, **boosted)
    return population


def test_builtin_rules_stop_the_gan_whose_discriminator_overpowers_it_and_only_it() -> None:
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    stops = feed(engine, gan_population(jump_at=16))
    assert stops == {"boosted": ("generator_outpaced", 18)}
    reason = engine.killed("boosted")["reason"]
    assert "generator_outpaced" in reason and "sibling" in reason


def test_one_trial_after_another_compares_with_the_finished_ones() -> None:
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    stops = feed(engine, gan_population(jump_at=16), order="sequential")
    assert stops == {"boosted": ("generator_outpaced", 18)}


def test_a_population_that_shares_the_trait_is_left_alone() -> None:
    population = {f"t{i}": losses(i, everyone_jumps_at=16) for i in range(7)}
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    assert feed(engine, population) == {}


def test_a_trial_different_by_design_from_the_start_is_not_an_outlier_that_changed() -> None:
    """Another adversarial weight in a sweep: 5x its siblings' loss from the first report on."""
    population = {f"healthy_{i}": losses(i) for i in range(6)}
    population["weight_5"] = losses(42, scale=5.0)
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    assert feed(engine, population) == {}


def test_too_few_siblings_give_no_evidence() -> None:
    population = {f"healthy_{i}": losses(i) for i in range(2)}
    population["boosted"] = losses(99, jump_at=16)
    bare = rule("peer_zscore(adversarial_loss) > 5", grace=12)
    assert feed(RuleEngine(bare, "gan", 40, vocabulary=HINGE), population) == {}
    population["healthy_2"] = losses(2)  # three siblings: enough
    assert feed(RuleEngine(bare, "gan", 40, vocabulary=HINGE), population) == {
        "boosted": ("r", 16)}


def test_sibling_values_survive_a_restart_and_a_replay_forgets_the_replayed_ones() -> None:
    population = gan_population(jump_at=16)
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    first = {t: rs[:14] for t, rs in population.items()}
    assert feed(engine, first) == {}
    state = json.loads(json.dumps(engine.state_dict()))
    restored = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    restored.load_state_dict(state)
    assert restored.trials["healthy_0"].peer == engine.trials["healthy_0"].peer
    # healthy_0 restores from a checkpoint at iteration 10 and replays 11..14 with other values
    replay = [{**r, "g_adv": r["g_adv"] + 100.0} for r in population["healthy_0"][10:11]]
    restored.observe("healthy_0", replay[0], wall_time=0.0)
    values = restored.trials["healthy_0"].peer["adversarial_loss"]
    assert max(values) == 11 and values[11] == pytest.approx(replay[0]["g_adv"])
    rest = {t: rs[14:] for t, rs in population.items() if t != "healthy_0"}
    rest["healthy_0"] = population["healthy_0"][11:]
    assert feed(restored, rest) == {"boosted": ("generator_outpaced", 18)}


def test_records_of_a_store_rebuild_the_sibling_table() -> None:
    """A store keeps one record per result (``last_record``); the table comes back from them."""
    population = gan_population(jump_at=16)
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    records: dict[str, list[dict[str, Any]]] = {t: [] for t in population}
    for i in range(14):
        for t, rs in population.items():
            engine.observe(t, rs[i], wall_time=0.0)
            records[t].append(json.loads(json.dumps(engine.last_record(t)["record"])))
    restored = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    for t, recs in records.items():
        restored.load_trial_state(t, {"reports": recs, "killed": None, "first": {}})
    assert restored.trials["boosted"].peer == engine.trials["boosted"].peer


# -- loss_explosion's lagged baseline ------------------------------------------------------------
def cnn_results(shift_at: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """A CNN whose BatchNorm shift is lowered at ``shift_at``: the loss jumps 7x and decays,
    one layer's spread falls 18x and stays low (the held-out CNN's bias_shift, scripted)."""
    rng = random.Random(seed)
    out = []
    for it in range(1, 41):
        loss = 0.1 + 0.6 * math.exp(-it / 3) + rng.gauss(0, 0.008)
        spread = 0.565
        if shift_at is not None and it >= shift_at:
            loss += 0.62 * math.exp(-(it - shift_at) / 5)
            spread = 0.03 + 0.002 * (it - shift_at)
        layer = {"dead_ratio": 0.0, "evergreen_ratio": 0.0, "nonfinite_count": 0.0}
        out.append({"training_iteration": it, "time_total_s": float(it), "train_loss": loss,
                    "val_loss": loss + 0.05,
                    "health": {"layers": {
                        "2": {**layer, "activation_std": 0.58 * (1 + rng.uniform(-.01, .01))},
                        "6": {**layer, "activation_std": spread * (1 + rng.uniform(-.01, .01))},
                        "10": {**layer, "activation_std": 0.8 * (1 + rng.uniform(-.01, .01))}}}})
    return out


def test_loss_jump_with_a_collapsed_layer_is_caught_on_its_second_report() -> None:
    vocabulary = Vocabulary(train_loss="train_loss", validation="val_loss")
    engine = RuleEngine(BUILTIN, "cnn", 40, vocabulary=vocabulary)
    stops = feed(engine, {"shifted": cnn_results(14), "healthy": cnn_results(None, seed=1)})
    assert stops == {"shifted": ("loss_explosion", 15)}
    # the same data under the rule without the offset: the jump in its own baseline hides it
    old = rule("zscore(train_loss, 8) > 5 and (max(ratio(activation_std, 5)) > 2 or "
               "min(ratio(activation_std, 5)) < 0.5)", hold=2, grace=9)
    assert feed(RuleEngine(old, "cnn", 40, vocabulary=vocabulary),
                {"shifted": cnn_results(14)}) == {}


def spike_results(spread_from: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """A loss 20x above its history at iterations 12-13; a layer's spread 3x its own level
    from ``spread_from`` on (None: the spreads never move, a benign loss spike)."""
    rng = random.Random(seed)
    out = []
    for it in range(1, 41):
        loss = 0.1 + 0.5 * math.exp(-it / 3) + rng.gauss(0, 0.005)
        if it in (12, 13):
            loss += 2.0
        moved = spread_from is not None and it >= spread_from
        layer = {"dead_ratio": 0.0, "evergreen_ratio": 0.0, "nonfinite_count": 0.0}
        out.append({"training_iteration": it, "time_total_s": float(it), "train_loss": loss,
                    "val_loss": loss,
                    "health": {"layers": {
                        "1": {**layer, "activation_std": (1.5 if moved else 0.5)
                              * (1 + rng.uniform(-.01, .01))},
                        "2": {**layer, "activation_std": 0.7 * (1 + rng.uniform(-.01, .01))}}}})
    return out


def test_activations_that_move_a_report_after_the_loss_still_confirm_it() -> None:
    """A learning-rate spike moves the loss in its own report and the activations in the
    next: the loss held for 2 reports with the spreads moving on either is a divergence; the
    same loss spike with the spreads still is not."""
    vocabulary = Vocabulary(train_loss="train_loss", validation="val_loss")
    engine = RuleEngine(BUILTIN, "x", 40, vocabulary=vocabulary)
    stops = feed(engine, {"spiked": spike_results(13), "benign": spike_results(None, seed=1)})
    assert stops == {"spiked": ("loss_explosion", 13)}


# -- on recorded real trainings (held-out split fresh3: the histories in the repository) ---------
def recorded(family: str) -> list[Any]:
    return recorded_split(family, "fresh3")


def test_recorded_gans_lose_only_the_one_whose_discriminator_was_boosted() -> None:
    """Nine real hinge-GAN trainings (5 healthy settings x seeds, 3 broken): the built-in rules
    stop the boosted-discriminator GAN by its adversarial loss against its siblings', two
    reports after its onset (held 3; its spreads moved less than 3x for 2 reports), and no
    healthy GAN."""
    trials = recorded("gan")
    assert len(trials) == 9 and sum(t.failure == "healthy" for t in trials) == 6
    stopped = heuristic_stops(trials, BUILTIN)
    assert stopped["gan/d_lr_boost_ttur_b32"] == ("generator_outpaced", 14)  # held 3
    assert not any(t.failure == "healthy" and t.name in stopped for t in trials)


def test_recorded_cnn_batchnorm_shift_is_caught_a_report_after_its_onset() -> None:
    trials = recorded("cnn")
    stopped = heuristic_stops(trials, BUILTIN)
    assert stopped["cnn/bias_shift_adam_b64"] == ("loss_explosion", 15)
    assert not any(t.name in stopped for t in trials if t.failure == "healthy")


def test_the_rule_state_store_keeps_every_population_input_across_a_restart(tmp_path) -> None:
    """The store prunes records no window reads; a trial's population inputs stay whole, so
    trials run one after another still compare with the whole of the earlier ones."""
    from monitor.driver.rulestate import RuleStateStore

    population = gan_population(jump_at=16)
    engine = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    store = RuleStateStore(tmp_path, keep=4)
    finished = {t: rs for t, rs in population.items() if t != "boosted"}
    for trial, results in finished.items():  # one after another, to the end
        for r in results:
            engine.observe(trial, r, wall_time=0.0)
            store.append(trial, engine.last_record(trial))
    # healthy_0 was restored from iteration 30 and replayed it once more
    engine.observe("healthy_0", {**population["healthy_0"][29], "g_adv": 50.0}, wall_time=0.0)
    store.append("healthy_0", engine.last_record("healthy_0"))
    store.close()

    reopened = RuleStateStore(tmp_path, keep=4)
    restored = RuleEngine(BUILTIN, "gan", 40, vocabulary=HINGE)
    for trial, data in reopened.load().items():
        assert len(data["reports"]) <= 8  # pruned
        restored.load_trial_state(trial, data)
    values = restored.trials["healthy_0"].peer["adversarial_loss"]
    assert sorted(values) == list(range(1, 31)) and values[30] == 50.0
    assert restored.trials["healthy_1"].peer == engine.trials["healthy_1"].peer
    assert feed(restored, {"boosted": population["boosted"]}) == {
        "boosted": ("generator_outpaced", 18)}
