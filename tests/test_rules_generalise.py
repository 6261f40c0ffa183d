"""The built-in rules on trainings unlike the project's own: losses that are negative, cross
zero, sit near zero or live on another scale, a quiet GAN getting louder (no rule may fire), and
a real training of another architecture broken late (killed after its onset)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from bench import policies
from bench.heldout.__main__ import as_trial
from bench.heldout.population import Spec, run_trial
from heuristics.expr import Binary, Call, parse, signals_of, walk
from heuristics.rules import load_rules

RULES = load_rules(["builtin"])
POSITIVE = {"activation_std"}  # quantities positive by nature: the only ones a ratio may read


def fired(results: list[dict[str, Any]], vocabulary: dict[str, str], budget: int = 40
          ) -> list[tuple[str, int]]:
    """(rule, iteration) of every built-in rule that fires (shadow mode) on ``results``."""
    trial = policies.Trial("t", "g", "healthy", None, budget, vocabulary["validation"],
                           vocabulary.get("mode", "min"), results, vocabulary)
    engine, prepare = policies.rule_engine(RULES, trial, shadow=True)
    return [(v.rule, v.iteration) for r in results
            for v in engine.observe("t", prepare(r), wall_time=0.0)]


def layers(rng: random.Random, stds: dict[str, float], jitter: float = 0.08) -> dict[str, Any]:
    return {"layers": {name: {"activation_std": s * (1 + rng.uniform(-jitter, jitter)),
                              "dead_ratio": 0.05, "evergreen_ratio": 0.02,
                              "nonfinite_count": 0.0} for name, s in stds.items()}}


HINGE = {"generator_loss": "g_loss", "discriminator_loss": "d_loss",
         "adversarial_loss": "g_adv", "gan_loss": "hinge", "validation": "val_spec_db",
         "mode": "min"}


def test_no_ratio_on_a_quantity_that_can_be_zero_or_negative() -> None:
    """``ratio`` only over quantities positive by nature; a trial's extremes (``min_ever``,
    ``max_ever``) only inside differences (``x - min_ever(x)``: shift-invariant), never
    multiplied, divided or compared with a constant as they are (``loss > 3 * min_ever(loss)``
    holds at once on a loss around -0.3)."""
    extreme = ("min_ever", "max_ever")
    for rule in RULES:
        for node in walk(parse(rule.expr)):
            if isinstance(node, Call) and node.fn == "ratio":
                names = {s.name for s in signals_of(node.args[0])}
                assert names <= POSITIVE, f"{rule.name}: ratio over {names}"
            if isinstance(node, Binary) and node.op != "-":
                for side in (node.left, node.right):
                    if isinstance(side, Call) and side.fn in extreme:
                        pytest.fail(f"{rule.name}: {side.fn} used as a scale ({node.op}), "
                                    "not inside a difference")


def test_healthy_hinge_gan_with_negative_zero_crossing_losses() -> None:
    """g_loss oscillates around -0.3 and crosses zero; the hinge d_loss touches exactly 0; the
    adversarial term wanders between -0.3 and 3: healthy, so nothing fires."""
    rng = random.Random(0)
    results = []
    for it in range(1, 41):
        g = -0.3 + 0.35 * math.sin(it / 2.5) + rng.gauss(0, 0.08)
        d = max(0.0, 0.6 + 0.5 * math.sin(it / 1.7) + rng.gauss(0, 0.2))
        results.append({"training_iteration": it, "time_total_s": float(it), "g_loss": g,
                        "d_loss": d, "g_adv": 1.3 + 1.4 * math.sin(it / 3.1),
                        "val_spec_db": 20 - 0.2 * it,
                        "health": {**layers(rng, {"g.1": 0.3, "g.3": 0.08, "d.1": 0.5}),
                                   "model": {"power_ratio_db": -2 + rng.gauss(0, 1.5)}}})
    assert min(r["g_loss"] for r in results) < -0.5 < 0 < max(r["g_loss"] for r in results)
    assert min(r["d_loss"] for r in results) == 0.0
    assert fired(results, HINGE) == []


def test_near_zero_late_loss_with_noise_and_another_scale() -> None:
    """A loss that falls to ~0.005 with per-batch noise (a lucky batch sets a tiny minimum,
    bumps are 3-5x it), and the same shape on a 1e5 scale: nothing fires."""
    for scale in (1.0, 1.6e5):
        rng = random.Random(1)
        results = []
        for it in range(1, 41):
            loss = scale * (0.005 + math.exp(-it / 4)) * math.exp(rng.gauss(0, 0.5))
            results.append({"training_iteration": it, "time_total_s": float(it), "loss": loss,
                            "val_loss": 0.1 + math.exp(-it / 5),
                            "health": layers(rng, {"1": 0.4, "3": 0.25})})
        vocabulary = {"train_loss": "loss", "validation": "val_loss", "mode": "min"}
        assert fired(results, vocabulary) == [], scale


def test_quiet_gan_getting_louder_is_not_silence() -> None:
    """Output power -15 dB at first, louder by ~0.8 dB a report: still learning, not silent."""
    rng = random.Random(2)
    results = []
    for it in range(1, 41):
        results.append({"training_iteration": it, "time_total_s": float(it),
                        "g_loss": 1.0 + rng.gauss(0, 0.1), "d_loss": 0.8 + rng.gauss(0, 0.1),
                        "g_adv": 0.9 + rng.gauss(0, 0.1), "val_spec_db": 20 - 0.2 * it,
                        "health": {**layers(rng, {"g.1": 0.3, "d.1": 0.5}),
                                   "model": {"power_ratio_db":
                                             min(-15 + 0.8 * (it - 1), -1) + rng.gauss(0, 0.5)}}})
    assert results[1]["health"]["model"]["power_ratio_db"] < -12
    assert fired(results, HINGE) == []


def test_real_mlp_with_a_late_lr_spike_is_killed_after_its_onset() -> None:
    """A real MLP (bench.heldout's family, noisy per-batch loss) whose Adam learning rate is
    multiplied by 100 at iteration 8: some kill rule fires after the onset, none before; the
    same setting without the spike is never killed."""
    setting = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "spike": 100.0}
    broken = as_trial(run_trial(Spec("mlp", "lr_spike", setting, "lr_spike", onset=8, seed=10,
                                     budget=20)))
    healthy = as_trial(run_trial(Spec("mlp", "healthy", setting, seed=0, budget=20)))
    kills = [(f["rule"], f["iteration"])
             for f in policies.rule_firings([broken], RULES)[broken.name]
             if f["action"] == "kill"]
    assert kills, "no kill rule fired on the lr spike"
    assert min(it for _, it in kills) >= 8
    assert not [f for f in policies.rule_firings([healthy], RULES)[healthy.name]
                if f["action"] == "kill"]
