"""Real short master trainings: healthy improves; each failure configuration fails its way.

The configurations are those of ``trainers/experiments/master_v464.yaml``; every failure comes
from the training dynamics (learning rate, initialisation, loss weights, discriminator strength).
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.slow


def mean_dead(report: dict) -> float:
    layers = report["health"]["layers"].values()
    return sum(v["dead_ratio"] for v in layers) / len(layers)


@pytest.fixture(scope="module")
def healthy(master_runs):
    return master_runs("healthy", 8)


def test_healthy_master_improves_and_stays_healthy(healthy):
    first, last = healthy[0], healthy[-1]
    assert last["val_logmel"] < first["val_logmel"] - 0.5
    assert all(mean_dead(r) < 0.2 for r in healthy)
    assert last["val_power_ratio_db"] > -11.0
    assert all(math.isfinite(r["loss_g"]) for r in healthy)


def test_high_learning_rate_kills_relus_over_time(healthy, master_runs):
    reports = master_runs("dead_relu_high_lr", 8)
    assert mean_dead(reports[0]) < 0.3  # alive at first ...
    assert mean_dead(reports[-1]) > 0.8  # ... then most units of most layers die
    assert mean_dead(reports[-1]) > mean_dead(healthy[-1]) + 0.6


def test_negative_bias_init_gives_dead_relus_from_the_start(healthy, master_runs):
    reports = master_runs("dead_relu_bias_init", 2)
    assert reports[0]["health"]["layers"]["encoder_act"]["dead_ratio"] == 1.0
    assert reports[-1]["val_logmel"] > healthy[-1]["val_logmel"] + 2.0


def test_waveform_regression_collapses_output_power(healthy, master_runs):
    reports = master_runs("silence_collapse", 8)
    assert reports[-1]["val_power_ratio_db"] < -12.0
    assert reports[-1]["val_power_ratio_db"] < healthy[-1]["val_power_ratio_db"] - 4.0
    assert reports[-1]["health"]["model"]["power_ratio_db"] < -12.0
    assert reports[-1]["val_logmel"] > healthy[-1]["val_logmel"]
    # and it is heard: the clip the trainer keeps for the report is the quieter one
    assert clip_db(reports[-1]) < clip_db(healthy[-1]) - 4.0


def clip_db(report: dict) -> float:
    """The level (dB full scale) of the output clip a master report carries."""
    import base64
    import io

    from monitor.training.audio_samples import AUDIO_KEY, read_wav

    samples, _ = read_wav(io.BytesIO(base64.b64decode(report[AUDIO_KEY])))
    return 10 * math.log10(max(float((samples ** 2).mean()), 1e-12))


def test_strong_discriminator_overpowers_generator(healthy, master_runs):
    reports = master_runs("discriminator_overpowering", 5)
    assert reports[-1]["loss_d"] < 0.03
    assert reports[-1]["loss_d"] < healthy[4]["loss_d"] / 2
    assert reports[-1]["loss_adv"] > 0.9  # the generator no longer fools it at all


def test_sgd_without_clipping_diverges_to_nan(master_runs):
    reports = master_runs("divergence", 2)
    assert not math.isfinite(reports[-1]["loss_g"])
    assert any(v["nonfinite_count"] > 0 for v in reports[-1]["health"]["layers"].values())


def test_positive_bias_init_linearises_the_first_layer(healthy, master_runs):
    reports = master_runs("evergreen_bias_init", 5)
    assert all(r["health"]["layers"]["encoder_act"]["evergreen_ratio"] == 1.0 for r in reports)
    assert reports[-1]["val_logmel"] > healthy[4]["val_logmel"]


def test_large_init_gain_explodes_activations_then_recovers(master_runs):
    reports = master_runs("activation_explosion_init", 3)
    spread = [max(v["activation_std"] for v in r["health"]["layers"].values()) for r in reports]
    assert spread[0] > 50  # healthy: below 1
    assert spread[-1] < spread[0]
