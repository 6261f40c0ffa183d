"""The held-out population built from model code written elsewhere (``bench.heldout.elsewhere``):
its declaration (families, vocabularies, onsets, seeds apart from every other split), failures
that change the training and never a signal, and a few seconds of real training of the
third-party models (parallel-wavegan's HiFi-GAN, an LSTM, a WGAN-GP)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.heldout import elsewhere
from bench.heldout.population import (
    ELSEWHERE_SPLITS,
    SPLITS,
    Spec,
    elsewhere_population,
    population,
    run_trial,
    split_dir,
)
from heuristics.vocabulary import Vocabulary


def test_each_family_is_a_sweep_of_healthy_settings_and_late_failures() -> None:
    specs = elsewhere_population()
    families = {s.family for s in specs}
    assert families == {"hifigan", "melgan", "lstm", "wgan", "dcgan", "vae"}
    for family in families:
        members = [s for s in specs if s.family == family]
        healthy = [s for s in members if s.failure == "healthy"]
        broken = [s for s in members if s.failure != "healthy"]
        assert len(healthy) == 6 and len(broken) == 3
        assert all(12 <= s.onset <= 16 for s in broken)  # 30-40 % of 40 reports
        assert all(s.failure in elsewhere.FAILURES for s in broken)


def test_every_loss_convention_is_declared_as_a_user_would() -> None:
    conventions = {}
    for name, family in elsewhere.FAMILIES.items():
        vocabulary = Vocabulary(**family.vocabulary)  # validates like monitor.Vocabulary
        assert vocabulary.validation
        if "gan_loss" in family.vocabulary:
            conventions[name] = family.vocabulary["gan_loss"]
    assert set(conventions.values()) == {"lsgan", "hinge", "wasserstein", "bce"}


def test_splits_have_seeds_no_other_split_uses() -> None:
    used = {f"own/{split}": {s.seed for s in population(split=split)} for split in SPLITS}
    used |= {f"elsewhere/{split}": {s.seed for s in elsewhere_population(split=split)}
             for split in ELSEWHERE_SPLITS}
    for a in used:  # (families of one split share seeds, as in the own population)
        for b in used:
            assert a == b or not used[a] & used[b], (a, b)
    assert split_dir("fresh", which="elsewhere").parts[-2:] == ("elsewhere", "fresh")


def test_failures_change_the_training_not_a_signal() -> None:
    wgan = elsewhere.WGANGP({"lr_g": 1e-3, "lr_d": 1e-3, "batch_size": 8}, 0)
    wgan.intervene("gp_off")
    assert wgan.gp == 0 and wgan.opt_d.param_groups[0]["lr"] == pytest.approx(1e-2)
    lstm = elsewhere.LSTMLanguageModel({"optimizer": "adamw", "lr": 1e-3, "batch_size": 8,
                                        "decay": 5.0}, 0)
    lstm.intervene("decay_jump")
    assert lstm.opt.param_groups[0]["weight_decay"] == 5.0
    vae = elsewhere.VAE({"optimizer": "adam", "lr": 1e-3, "batch_size": 8, "jump": 10.0}, 0)
    vae.intervene("beta_jump")
    assert vae.beta == 10.0
    with pytest.raises(ValueError, match="not defined"):
        vae.intervene("mel_off")


@pytest.mark.parametrize("family, setting", [
    ("wgan", {"lr_g": 1e-3, "lr_d": 1e-3, "batch_size": 32}),
    ("lstm", {"optimizer": "adamw", "lr": 3e-3, "batch_size": 16}),
    ("hifigan", {"lr_g": 1e-3, "lr_d": 1e-3, "batch_size": 2}),
])
def test_a_few_seconds_of_real_training(family: str, setting: dict) -> None:
    if family == "hifigan":
        pytest.importorskip("librosa")
        elsewhere.import_parallel_wavegan()
    threads = torch.get_num_threads()
    try:
        history = run_trial(Spec(family, "smoke", setting, budget=2))
    finally:
        torch.set_num_threads(threads)
    vocabulary = elsewhere.FAMILIES[family].vocabulary
    assert [r["training_iteration"] for r in history.results] == [1, 2]
    for r in history.results:
        for role in ("train_loss", "generator_loss", "discriminator_loss", "validation"):
            if role in vocabulary:
                assert math.isfinite(r[vocabulary[role]])
    if family == "hifigan":  # the vocoder's output power is observed
        assert "power_ratio_db" in history.results[-1]["health"]["model"]
        assert history.results[-1]["health"]["layers"]  # its LeakyReLU modules are hooked
