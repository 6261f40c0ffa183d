"""Families built from model code this project did not write, and unlike its own five.

Each trial is declared as a user of that code would declare it (``monitor.Vocabulary``), fed as
one sweep per family, and broken only by its training's real dynamics, applied at a known
onset: a learning rate raised, the discriminator made much stronger, the gradient penalty
switched off, a loss weight changed. No signal value is ever written. Data are generated, never
downloaded; no pretrained weights.

* ``hifigan``: parallel-wavegan's ``HiFiGANGenerator`` and its multi-scale multi-period
  discriminator, with the HiFi-GAN paper's losses (least squares + feature matching x2 + mel
  L1 x45), from log-mel features of generated speech-like audio; output power observed.
* ``melgan``: parallel-wavegan's ``MelGANGenerator`` and ``MelGANMultiScaleDiscriminator``,
  MelGAN's losses (hinge + feature matching x10), plus its multi-resolution STFT loss as
  parallel-wavegan's MelGAN recipes add it; output power observed.
* ``lstm``: a 2-layer ``nn.LSTM`` language model (embedding, LSTM, linear head; no activation
  module the hooks can see) on text from a random second-order Markov source.
* ``wgan``: a WGAN-GP (Gulrajani et al.: critic 5 steps per generator step, penalty 10, Adam
  1e-4 (0.5, 0.9)) on the 8-Gaussian ring; quality: MMD of samples to the ring.
* ``dcgan``: a non-saturating BCE GAN (``BCEWithLogitsLoss``, as in the DCGAN recipe) on a
  25-Gaussian grid; quality: MMD.
* ``vae``: a VAE (Kingma & Welling: Gaussian encoder, Bernoulli decoder, ELBO) on generated
  binary shapes; quality: the validation negative ELBO.

parallel-wavegan 0.6.1 is a bench dependency (``pip install --no-build-isolation
parallel-wavegan==0.6.1``); without it the vocoder families are skipped.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.heldout.families import Family, _scale_lr

FAILURES = {
    "lr_spike": "the (generator's) learning rate multiplied by `spike` from the onset on",
    "d_lr_boost": "the discriminator's (critic's) learning rate multiplied by `boost` from the "
                  "onset on",
    "g_lr_boost": "the generator's learning rate multiplied by `boost` from the onset on",
    "gp_off": "the gradient penalty switched off from the onset on, the critic's learning rate "
              "x10",
    "mel_off": "the vocoder's spectral (mel / STFT) loss weight set to 0 from the onset on",
    "beta_jump": "the VAE's KL weight multiplied by `beta` from the onset on",
    "decay_jump": "the optimiser's weight decay set to `decay` from the onset on",
    "bias_shift": "a pre-activation bias lowered by 4 (encoder and decoder inputs)",
}


def import_parallel_wavegan() -> Any:
    """``parallel_wavegan`` (0.6.1 calls ``scipy.signal.kaiser``, moved to
    ``scipy.signal.windows`` in scipy 1.13)."""
    import scipy.signal

    if not hasattr(scipy.signal, "kaiser"):
        import scipy.signal.windows

        scipy.signal.kaiser = scipy.signal.windows.kaiser
    import parallel_wavegan.losses
    import parallel_wavegan.models

    return parallel_wavegan


# -- generated audio -----------------------------------------------------------------------------
FS = 16000
SEGMENT = 1024
HOP = 64
N_MELS = 20


def speechlike(n: int, seed: int) -> torch.Tensor:
    """Voiced, speech-like audio [n, SEGMENT] at FS: a gliding pitch (90-260 Hz), harmonics
    shaped by two formants, an amplitude contour, a little breath noise; peak about 0.5."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(SEGMENT).float() / FS
    f_start = 90 + 170 * torch.rand(n, 1, generator=g)
    f_end = f_start * (0.8 + 0.4 * torch.rand(n, 1, generator=g))
    f0 = f_start + (f_end - f_start) * t / t[-1]
    phase = 2 * math.pi * torch.cumsum(f0, dim=1) / FS
    formants = torch.stack([300 + 600 * torch.rand(n, generator=g),
                            900 + 1600 * torch.rand(n, generator=g)], 1)
    x = torch.zeros(n, SEGMENT)
    for h in range(1, 24):
        freq = f0 * h
        gain = sum(torch.exp(-((freq - formants[:, k:k + 1]) / 250) ** 2) for k in range(2))
        gain = gain + 0.05 / h
        x += gain * torch.sin(h * phase) * (freq < FS / 2 - 500)
    contour = 0.6 + 0.4 * torch.sin(2 * math.pi * (3 + 4 * torch.rand(n, 1, generator=g)) * t
                                    + 6.28 * torch.rand(n, 1, generator=g))
    x = x * contour + 0.02 * torch.randn(n, SEGMENT, generator=g)
    return 0.5 * x / x.abs().amax(1, keepdim=True)


class Vocoder(Family):
    """A GAN vocoder from parallel-wavegan: log-mel in, waveform out."""

    observe_output = True
    steps = 2
    fm_weight = 2.0
    spectral_weight = 45.0
    loss_type = "mse"

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        pwg = import_parallel_wavegan()
        losses = pwg.losses
        self.audio, self.val_audio = speechlike(512, 31), speechlike(32, 32)
        self.mel = losses.MelSpectrogram(fs=FS, fft_size=256, hop_size=HOP, num_mels=N_MELS,
                                         fmin=50, fmax=FS // 2)
        with torch.no_grad():
            self.feats = self.features(self.audio)
            self.val_feats = self.features(self.val_audio)
        torch.manual_seed(seed)
        self.g, self.d = self.build(pwg.models)
        betas = (0.8, 0.99)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=setting["lr_g"], betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=setting["lr_d"], betas=betas)
        self.gen_adv = losses.GeneratorAdversarialLoss(loss_type=self.loss_type)
        self.dis_adv = losses.DiscriminatorAdversarialLoss(loss_type=self.loss_type)
        self.fm = losses.FeatureMatchLoss()
        self.mel_loss = losses.MelSpectrogramLoss(fs=FS, fft_size=256, hop_size=HOP,
                                                  num_mels=N_MELS, fmin=50, fmax=FS // 2)
        self.w_spec = setting.get("spectral_weight", self.spectral_weight)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel frames [n, N_MELS, SEGMENT / HOP] (parallel-wavegan's MelSpectrogram)."""
        mel = self.mel(audio)  # [n, mels, frames (+1, centred)]
        return mel[..., :SEGMENT // HOP]

    def build(self, models: Any) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def model(self) -> nn.Module:
        return nn.ModuleDict({"generator": self.g, "discriminator": self.d})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def intervene(self, failure: str) -> None:
        if failure == "d_lr_boost":
            _scale_lr(self.opt_d, self.setting.get("boost", 30.0))
        elif failure == "mel_off":
            self.w_spec = 0.0
        else:
            super().intervene(failure)

    def spectral(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.mel_loss(fake, real)

    def step(self) -> dict[str, float]:
        bs = self.setting["batch_size"]
        idx = torch.randint(0, self.audio.shape[0], (bs,), generator=self.gen)
        real, c = self.audio[idx][:, None], self.feats[idx]
        fake = self.g(c)[..., :SEGMENT]
        # generator: adversarial + feature matching + spectral (parallel-wavegan's order)
        p_fake = self.d(fake)
        with torch.no_grad():
            p_real = self.d(real)
        adv = self.gen_adv(p_fake)
        fm = self.fm(p_fake, p_real)
        spec = self.spectral(fake.squeeze(1), real.squeeze(1))
        g_loss = adv + self.fm_weight * fm + self.w_spec * spec
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        # discriminator
        real_loss, fake_loss = self.dis_adv(self.d(fake.detach()), self.d(real))
        d_loss = real_loss + fake_loss
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        if self.monitor is not None:
            self.monitor.observe_output(fake.detach().squeeze(1), real.squeeze(1))
        return {"generator_loss": g_loss.item(), "adversarial_loss": adv.item(),
                "feature_matching_loss": fm.item(), "spectral_loss": spec.item(),
                "discriminator_loss": d_loss.item(), "real_loss": real_loss.item(),
                "fake_loss": fake_loss.item()}

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            fake = self.g(self.val_feats)[..., :SEGMENT].squeeze(1)
            mel = self.mel_loss(fake, self.val_audio).item()
        return {"eval_mel_loss": mel if math.isfinite(mel) else float("nan")}


class HiFiGAN(Vocoder):
    name = "hifigan"
    vocabulary = {"generator_loss": "generator_loss", "discriminator_loss": "discriminator_loss",
                  "adversarial_loss": "adversarial_loss", "gan_loss": "lsgan",
                  "validation": "eval_mel_loss", "mode": "min"}
    fm_weight = 2.0
    spectral_weight = 45.0
    loss_type = "mse"

    def build(self, models: Any) -> tuple[nn.Module, nn.Module]:
        width = self.setting.get("channels", 32)
        g = models.HiFiGANGenerator(
            in_channels=N_MELS, channels=width, kernel_size=7, upsample_scales=(4, 4, 4),
            upsample_kernel_sizes=(8, 8, 8), resblock_kernel_sizes=(3, 7),
            resblock_dilations=[(1, 3), (1, 3)])
        d = models.HiFiGANMultiScaleMultiPeriodDiscriminator(
            scales=2,
            scale_discriminator_params={
                "in_channels": 1, "out_channels": 1, "kernel_sizes": [15, 41, 5, 3],
                "channels": 16, "max_downsample_channels": 64, "max_groups": 4, "bias": True,
                "downsample_scales": [2, 2, 4, 1], "nonlinear_activation": "LeakyReLU",
                "nonlinear_activation_params": {"negative_slope": 0.1}},
            periods=[2, 3, 5],
            period_discriminator_params={
                "in_channels": 1, "out_channels": 1, "kernel_sizes": [5, 3], "channels": 8,
                "downsample_scales": [3, 3, 1], "max_downsample_channels": 64, "bias": True,
                "nonlinear_activation": "LeakyReLU",
                "nonlinear_activation_params": {"negative_slope": 0.1},
                "use_weight_norm": True, "use_spectral_norm": False})
        return g, d


class MelGAN(Vocoder):
    name = "melgan"
    vocabulary = {"generator_loss": "generator_loss", "discriminator_loss": "discriminator_loss",
                  "adversarial_loss": "adversarial_loss", "gan_loss": "hinge",
                  "validation": "eval_mel_loss", "mode": "min"}
    fm_weight = 10.0
    spectral_weight = 2.5
    loss_type = "hinge"

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        self.stft = import_parallel_wavegan().losses.MultiResolutionSTFTLoss(
            fft_sizes=[256, 512, 128], hop_sizes=[32, 64, 16], win_lengths=[160, 320, 64])

    def spectral(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        sc, mag = self.stft(fake, real)
        return sc + mag

    def build(self, models: Any) -> tuple[nn.Module, nn.Module]:
        width = self.setting.get("channels", 64)  # >= prod(upsample_scales)
        g = models.MelGANGenerator(in_channels=N_MELS, channels=width,
                                   upsample_scales=[4, 4, 4], stacks=2)
        d = models.MelGANMultiScaleDiscriminator(scales=2, channels=8,
                                                 max_downsample_channels=64,
                                                 downsample_scales=[4, 4])
        return g, d


# -- recurrent language model --------------------------------------------------------------------
def markov_text(n: int, length: int, vocab: int = 24, seed: int = 41) -> torch.Tensor:
    """Token sequences [n, length] from a fixed random second-order Markov source whose next
    token follows from the previous two (each pair allows 3 of ``vocab`` tokens)."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.randint(0, vocab, (vocab, vocab, 3), generator=g)
    probs = torch.tensor([0.6, 0.3, 0.1])
    out = torch.zeros(n, length, dtype=torch.long)
    out[:, :2] = torch.randint(0, vocab, (n, 2), generator=g)
    for t in range(2, length):
        pick = torch.multinomial(probs, n, replacement=True, generator=g)
        out[:, t] = allowed[out[:, t - 2], out[:, t - 1], pick]
    return out


class LSTMModel(nn.Module):
    def __init__(self, vocab: int, emb: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.head(h)


class LSTMLanguageModel(Family):
    name = "lstm"
    vocabulary = {"train_loss": "loss", "validation": "val_ppl", "mode": "min"}
    steps = 6

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        text = markov_text(2304, 33)
        self.x, self.vx = text[:2048], text[2048:]
        torch.manual_seed(seed)
        self.net = LSTMModel(24)
        name, lr = setting["optimizer"], setting["lr"]
        if name == "sgd":
            self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9)
        else:
            self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr,
                                         weight_decay=setting.get("weight_decay", 0.01))
        self.clip = setting.get("clip", 1.0)

    def model(self) -> nn.Module:
        return self.net

    def intervene(self, failure: str) -> None:
        if failure == "decay_jump":
            for group in self.opt.param_groups:
                group["weight_decay"] = self.setting.get("decay", 20.0)
        else:
            super().intervene(failure)

    def step(self) -> dict[str, float]:
        self.net.train()
        bs = self.setting["batch_size"]
        xb = self.x[torch.randint(0, self.x.shape[0], (bs,), generator=self.gen)]
        logits = self.net(xb[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        return {"loss": loss.item()}

    def validate(self) -> dict[str, float]:
        self.net.eval()
        with torch.no_grad():
            logits = self.net(self.vx[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   self.vx[:, 1:].reshape(-1)).item()
        return {"val_ppl": math.exp(min(loss, 50.0)) if math.isfinite(loss) else float("nan")}


# -- 2-D GANs: WGAN-GP and a BCE GAN ------------------------------------------------------------
def ring(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05,
         gen: torch.Generator | None = None) -> torch.Tensor:
    k = torch.randint(0, modes, (n,), generator=gen).float()
    centres = torch.stack([torch.cos(2 * math.pi * k / modes),
                           torch.sin(2 * math.pi * k / modes)], 1) * radius
    return centres + std * torch.randn(n, 2, generator=gen)


def grid(n: int, gen: torch.Generator | None = None) -> torch.Tensor:
    k = torch.randint(0, 25, (n,), generator=gen)
    centres = torch.stack([(k % 5).float() - 2, (k // 5).float() - 2], 1) * 1.0
    return centres + 0.05 * torch.randn(n, 2, generator=gen)


def mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared MMD with RBF kernels (bandwidths 0.1, 0.5, 2)."""
    if not torch.isfinite(x).all():
        return float("nan")
    xy = torch.cat([x, y])
    d = torch.cdist(xy, xy).square()
    k = sum(torch.exp(-d / (2 * s * s)) for s in (0.1, 0.5, 2.0))
    n = x.shape[0]
    return (k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()).item()


def mlp(i: int, o: int, width: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, width), act(), nn.Linear(width, width), act(),
                         nn.Linear(width, width), act(), nn.Linear(width, o))


class GAN2D(Family):
    """A GAN on 2-D points: ``d_steps`` critic steps per generator step."""

    steps = 10
    d_steps = 1
    z_dim = 8

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        vg = torch.Generator().manual_seed(77)
        self.val_real = self.sample(1024, vg)
        self.val_z = torch.randn(1024, self.z_dim, generator=vg)
        torch.manual_seed(seed)
        width = setting.get("width", 64)
        self.g = mlp(self.z_dim, 2, width, nn.ReLU)
        self.d = mlp(2, 1, width, self.critic_activation())
        betas = setting.get("betas", (0.5, 0.9))
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=setting["lr_g"], betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=setting["lr_d"], betas=betas)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def critic_activation(self) -> type[nn.Module]:
        return nn.ReLU

    def model(self) -> nn.Module:
        return nn.ModuleDict({"generator": self.g, "critic": self.d})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def intervene(self, failure: str) -> None:
        if failure == "d_lr_boost":
            _scale_lr(self.opt_d, self.setting.get("boost", 30.0))
        elif failure == "g_lr_boost":
            _scale_lr(self.opt_g, self.setting.get("boost", 100.0))
        else:
            super().intervene(failure)

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            fake = self.g(self.val_z)
        return {"val_mmd": mmd(fake, self.val_real)}


class WGANGP(GAN2D):
    name = "wgan"
    vocabulary = {"generator_loss": "g_loss", "discriminator_loss": "critic_loss",
                  "adversarial_loss": "g_loss", "gan_loss": "wasserstein",
                  "validation": "val_mmd", "mode": "min"}
    steps = 4
    d_steps = 5

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        self.gp = setting.get("gp", 10.0)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return ring(n, gen=gen)

    def intervene(self, failure: str) -> None:
        if failure == "gp_off":
            self.gp = 0.0
            _scale_lr(self.opt_d, 10.0)
        else:
            super().intervene(failure)

    def step(self) -> dict[str, float]:
        bs = self.setting["batch_size"]
        for _ in range(self.d_steps):
            real = self.sample(bs, self.gen)
            with torch.no_grad():
                fake = self.g(torch.randn(bs, self.z_dim, generator=self.gen))
            wdist = self.d(real).mean() - self.d(fake).mean()
            loss = -wdist
            if self.gp:
                eps = torch.rand(bs, 1, generator=self.gen)
                mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad, = torch.autograd.grad(self.d(mix).sum(), mix, create_graph=True)
                loss = loss + self.gp * (grad.norm(dim=1) - 1).square().mean()
            self.opt_d.zero_grad()
            loss.backward()
            self.opt_d.step()
        fake = self.g(torch.randn(bs, self.z_dim, generator=self.gen))
        g_loss = -self.d(fake).mean()
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        return {"g_loss": g_loss.item(), "critic_loss": loss.item(),
                "wasserstein_estimate": wdist.item()}


class BCEGAN(GAN2D):
    name = "dcgan"
    vocabulary = {"generator_loss": "loss_G", "discriminator_loss": "loss_D",
                  "adversarial_loss": "loss_G", "gan_loss": "bce",
                  "validation": "val_mmd", "mode": "min"}
    steps = 12

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return grid(n, gen=gen)

    def critic_activation(self) -> type[nn.Module]:
        return lambda: nn.LeakyReLU(0.2)  # type: ignore[return-value]

    def step(self) -> dict[str, float]:
        bs = self.setting["batch_size"]
        bce = nn.BCEWithLogitsLoss()
        real = self.sample(bs, self.gen)
        fake = self.g(torch.randn(bs, self.z_dim, generator=self.gen))
        ones, zeros = torch.ones(bs, 1), torch.zeros(bs, 1)
        loss_d = bce(self.d(real), ones) + bce(self.d(fake.detach()), zeros)
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        loss_g = bce(self.d(fake), ones)  # non-saturating
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        return {"loss_G": loss_g.item(), "loss_D": loss_d.item()}


# -- VAE -----------------------------------------------------------------------------------------
def shapes(n: int, size: int = 12, seed: int = 51) -> torch.Tensor:
    """Binary images [n, size * size]: a filled rectangle or a ring at a random place."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(),
                            indexing="ij")
    out = torch.zeros(n, size, size)
    for i in range(n):
        cx, cy = (2 + (size - 4) * torch.rand(2, generator=g)).tolist()
        r = 1.5 + 2.5 * torch.rand(1, generator=g).item()
        if torch.rand(1, generator=g).item() < 0.5:
            out[i] = ((xx - cx).abs() < r) & ((yy - cy).abs() < r * 0.7)
        else:
            d = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
            out[i] = (d < r + 0.7) & (d > r - 0.7)
    return out.flatten(1)


class VAENet(nn.Module):
    def __init__(self, dim: int, latent: int = 8, width: int = 128) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU())
        self.mu, self.logvar = nn.Linear(width, latent), nn.Linear(width, latent)
        self.dec = nn.Sequential(nn.Linear(latent, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + eps * (0.5 * logvar).exp()
        return self.dec(z), mu, logvar


class VAE(Family):
    name = "vae"
    vocabulary = {"train_loss": "loss", "validation": "val_neg_elbo", "mode": "min"}
    steps = 25

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        data = shapes(2304)
        self.x, self.vx = data[:2048], data[2048:]
        self.val_eps = torch.randn(256, 8, generator=torch.Generator().manual_seed(3))
        torch.manual_seed(seed)
        self.net = VAENet(self.x.shape[1])
        name, lr = setting["optimizer"], setting["lr"]
        self.opt = (torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9) if name == "sgd"
                    else torch.optim.Adam(self.net.parameters(), lr=lr))
        self.beta = setting.get("beta", 1.0)

    def model(self) -> nn.Module:
        return self.net

    def intervene(self, failure: str) -> None:
        if failure == "beta_jump":
            self.beta *= self.setting.get("jump", 30.0)
        else:
            super().intervene(failure)

    def shift_bias(self) -> None:
        with torch.no_grad():
            self.net.enc[0].bias -= 4.0
            self.net.dec[0].bias -= 4.0

    def elbo_terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, mu, logvar = self.net(x, eps)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum() / x.shape[0]
        return recon, kl

    def step(self) -> dict[str, float]:
        bs = self.setting["batch_size"]
        xb, _ = self._batch(self.x, self.x, bs)
        recon, kl = self.elbo_terms(xb, torch.randn(bs, 8, generator=self.gen))
        loss = recon + self.beta * kl
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "recon": recon.item(), "kl": kl.item()}

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            recon, kl = self.elbo_terms(self.vx[:256], self.val_eps)
        return {"val_neg_elbo": (recon + kl).item()}


FAMILIES: dict[str, type[Family]] = {c.name: c for c in (HiFiGAN, MelGAN, LSTMLanguageModel,
                                                         WGANGP, BCEGAN, VAE)}
