"""Master training: adversarial any-voice-to-any-voice conversion on the synthetic corpus.

``MasterTraining`` holds one training run (models, optimisers, data, monitor) and advances it
one reporting iteration at a time; ``trainers.trainables`` wraps it for Ray Tune.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.nn import functional as F

from monitor.training.hooks import HealthMonitor
from monitor.training.signals.power import power_loss, power_spectrum
from trainers import voices
from trainers.audio import log_mel_distance, spectral_reconstruction
from trainers.config import merge_config
from trainers.models import ConvGenerator, SpectralDiscriminator, parameter_count
from trainers.schedule import clip_gradients, make_optimizer, warm_up

MASTER_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "corpus": {"n_speakers": 24, "n_utterances": 40, "n_validation": 8, "seconds": 0.5,
               "seed": 464},
    "width": 48,
    "depth": 4,
    "activation": "relu",
    "bias_init": 0.0,  # constant bias of the convs feeding each activation (0: PyTorch default)
    "init_gain": 1.0,  # multiplier of the initial conv weights (1: PyTorch default)
    "optimizer": "adam",  # adam | sgd
    "g_lr": 1e-3,
    "d_lr": 1e-4,
    "lr_warmup_iterations": 0,  # linear warm-up of both learning rates (0: none)
    "d_steps": 1,  # discriminator updates per generator update
    "grad_clip": 10.0,  # generator gradient-norm clip (null: none)
    "batch_size": 8,
    "segment": 4096,  # samples per training crop (multiple of 16)
    "steps_per_iteration": 20,
    "max_iterations": 30,
    "checkpoint_every": 5,
    "adv_weight": 0.1,
    "power_weight": 0.01,
    "spectral_weight": 1.0,
    "wave_weight": 0.0,  # waveform L1 (phase-sensitive: pushes towards silence)
    "fm_weight": 1.0,  # discriminator feature matching
    "val_pairs": 4,  # speaker pairs per validation utterance
    "monitor_every": 4,  # sample health signals every N steps
    "keep_audio": True,  # report one validation output clip per iteration (kill-report --html)
}

GAN_BETAS = (0.5, 0.9)  # Adam's betas for both networks, the usual GAN setting


class MasterTraining:
    """One master training run; ``train_iteration()`` returns the metrics of one report."""

    role = "master"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = merge_config(MASTER_DEFAULTS, config or {}, "master config")
        c = self.config
        if c["segment"] % 16:
            raise ValueError(f"segment must be a multiple of 16, got {c['segment']}")
        torch.manual_seed(c["seed"])
        self.corpus = voices.load(voices.CorpusSpec(**c["corpus"]))
        self.audio = torch.from_numpy(self.corpus.audio)
        n_speakers = self.corpus.spec.n_speakers
        self.generator = ConvGenerator(n_speakers, c["width"], c["depth"],
                                       activation=c["activation"], bias_init=c["bias_init"],
                                       init_gain=c["init_gain"])
        self.discriminator = SpectralDiscriminator(n_speakers)
        self.g_opt = make_optimizer(c["optimizer"], self.generator.parameters(), c["g_lr"],
                                    GAN_BETAS)
        self.d_opt = make_optimizer(c["optimizer"], self.discriminator.parameters(), c["d_lr"],
                                    GAN_BETAS)
        self.rng = torch.Generator().manual_seed(c["seed"] + 1)
        self.iteration = 0
        self.step = 0
        self.monitor = HealthMonitor(self.generator, every=c["monitor_every"])
        self._val = self._validation_set()

    # -- data -------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, spec = self.config, self.corpus.spec
        n_train = spec.n_utterances - spec.n_validation
        b = c["batch_size"]
        src = torch.randint(spec.n_speakers, (b,), generator=self.rng)
        tgt = torch.randint(spec.n_speakers, (b,), generator=self.rng)
        utt = torch.randint(n_train, (b,), generator=self.rng)
        off = torch.randint(spec.n_samples - c["segment"] + 1, (b,), generator=self.rng)
        idx = off[:, None] + torch.arange(c["segment"])[None]
        source = self.audio[src, utt].gather(1, idx)
        target = self.audio[tgt, utt].gather(1, idx)
        return source, target, tgt

    def _validation_set(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spec = self.corpus.spec
        g = torch.Generator().manual_seed(spec.seed)
        n = spec.n_samples - spec.n_samples % 16
        sources, targets, speakers = [], [], []
        for u in self.corpus.validation_utterances:
            for _ in range(self.config["val_pairs"]):
                s, t = torch.randint(spec.n_speakers, (2,), generator=g).tolist()
                sources.append(self.audio[s, u, :n])
                targets.append(self.audio[t, u, :n])
                speakers.append(t)
        return torch.stack(sources), torch.stack(targets), torch.tensor(speakers)

    # -- training ---------------------------------------------------------------------------
    def _d_step(self, source, target, speaker, fake) -> torch.Tensor:
        real_logits, _ = self.discriminator(target, speaker)
        fake_logits, _ = self.discriminator(fake.detach(), speaker)
        loss = sum(((r - 1) ** 2).mean() + (f**2).mean()
                   for r, f in zip(real_logits, fake_logits)) / len(real_logits)
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        return loss.detach()

    def _g_step(self, source, target, speaker) -> dict[str, torch.Tensor]:
        c = self.config
        warm_up(c, self.step, (self.g_opt, c["g_lr"]), (self.d_opt, c["d_lr"]))
        self.monitor.step()
        fake = self.generator(source, speaker)
        d_loss = torch.stack([self._d_step(source, target, speaker, fake)
                              for _ in range(c["d_steps"])]).mean()
        fake_logits, fake_feats = self.discriminator(fake, speaker)
        with torch.no_grad():
            _, real_feats = self.discriminator(target, speaker)
        adv = sum(((f - 1) ** 2).mean() for f in fake_logits) / len(fake_logits)
        fm = sum(F.l1_loss(a, b) for a, b in zip(fake_feats, real_feats)) / len(fake_feats)
        phi_fake, phi_real = power_spectrum(fake), power_spectrum(target)
        pw = power_loss(phi_fake, phi_real)
        spectral = spectral_reconstruction(fake, target)
        wave = F.l1_loss(fake, target)
        loss = (c["adv_weight"] * adv + c["fm_weight"] * fm + c["power_weight"] * pw
                + c["spectral_weight"] * spectral + c["wave_weight"] * wave)
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.generator.parameters(), c["grad_clip"])
        self.g_opt.step()
        self.monitor.observe_power(phi_fake, phi_real)
        return {"loss_g": loss.detach(), "loss_d": d_loss, "loss_adv": adv.detach(),
                "loss_fm": fm.detach(), "loss_power": pw.detach(),
                "loss_spectral": spectral.detach(), "loss_wave": wave.detach(),
                "grad_norm": grad_norm.detach()}

    def train_iteration(self) -> dict[str, Any]:
        """Run ``steps_per_iteration`` generator steps; return the report's metrics."""
        start = time.perf_counter()
        self.generator.train()
        self.discriminator.train()
        sums: dict[str, torch.Tensor] = {}
        for _ in range(self.config["steps_per_iteration"]):
            source, target, speaker = self._batch()
            for k, v in self._g_step(source, target, speaker).items():
                sums[k] = sums.get(k, 0) + v
            self.step += 1
        self.iteration += 1
        n = self.config["steps_per_iteration"]
        metrics = {k: float(v) / n for k, v in sums.items()}
        metrics.update(self.evaluate())
        if self.config["keep_audio"]:  # the first validation pair, and its target voice
            metrics.update(self.monitor.keep_audio(self._val_output[0], voices.SAMPLE_RATE,
                                                   reference=self._val[1][0]))
        metrics["health"] = self.monitor.collect()
        metrics["steps"] = self.step
        metrics["step_time_s"] = (time.perf_counter() - start) / n
        return metrics

    @torch.no_grad()
    def convert(self, source: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        self.generator.eval()
        with self.monitor.paused():
            return self.generator(source, speaker)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Quality on the fixed validation set: log-mel distance to the true target voice."""
        source, target, speaker = self._val
        out = self.convert(source, speaker)
        self._val_output = out
        phi_out, phi_tgt = power_spectrum(out), power_spectrum(target)
        ratio = 10 * torch.log10(phi_out.mean().clamp_min(1e-12) / phi_tgt.mean())
        return {"val_logmel": float(log_mel_distance(out, target)),
                "val_power_ratio_db": float(ratio)}

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config, "generator": self.generator.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict(),
                "rng": self.rng.get_state(), "iteration": self.iteration, "step": self.step,
                "n_parameters": parameter_count(self.generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.rng.set_state(state["rng"])
        self.iteration, self.step = state["iteration"], state["step"]

    def close(self) -> None:
        self.monitor.close()
