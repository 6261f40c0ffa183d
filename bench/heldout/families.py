"""Held-out architecture families: real models on deterministic synthetic data, small enough for
one CPU thread.

Each family is a class whose instance is one trial: data, model(s), optimiser(s), a ``step()``
that trains on one batch, ``validate()`` and ``intervene(failure)`` (the failure applied at its
onset: a change to the training, never a written signal value). None of these models or loss
conventions was used to choose a threshold of the built-in rules.

Families and their vocabulary (the names a new user would pick, some unlike the trainers'):

* ``mlp``: an MLP classifier; reports the last batch's ``loss`` (noisy), ``val_acc`` (max).
* ``cnn``: a small CNN with BatchNorm on synthetic gratings; ``train_loss``, ``val_loss``.
* ``transformer``: a pre-LayerNorm encoder with GELU on a token-histogram task; ``loss``,
  ``val_loss``.
* ``gan``: a 1-D audio GAN with hinge losses (``g_loss = -D(G(z)).mean() + fm``, ``d_loss``),
  quality ``val_spec_db`` (log-spectrum distance to real audio, min); output power observed.
* ``timm``: timm's ConvNeXt (code nobody here wrote), tiny widths, on colour gratings;
  ``train_loss``, ``val_loss``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monitor.training.hooks import ACTIVATION_TYPES

FAILURES = {  # applied once, at the onset; what follows is the training's own dynamics
    "lr_spike": "the (generator's) learning rate multiplied by `spike` from the onset on",
    "bias_shift": "a pre-activation bias (or BatchNorm shift) lowered by 3-4",
    "nan_input": "one sample of one batch replaced by NaN (a corrupted record)",
    "gain_collapse": "weights of the main layers multiplied by 0.001-0.05",
    "d_lr_boost": "the discriminator's learning rate multiplied by `boost` from the onset on",
}


def _optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {name!r}")


def _scale_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for group in opt.param_groups:
        group["lr"] *= factor


class Family:
    """One trial of a family. Subclasses set the vocabulary and implement the training."""

    name = ""
    # The experiment's declaration (heuristics.vocabulary.Vocabulary fields): which reported
    # key plays which role, the validation metric schedulers rank on and its direction.
    vocabulary: dict[str, str] = {}
    steps = 8  # training steps per reported iteration
    per_batch = False  # report the last batch's losses (noisy) instead of the iteration mean
    observe_output = False

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        self.setting = setting
        self.seed = seed
        self.gen = torch.Generator().manual_seed(1000 + seed)  # batch order, noise
        self.poison = False  # the next batch carries a NaN (nan_input)
        self.monitor: Any = None

    @property
    def metric(self) -> str:
        return self.vocabulary["validation"]

    @property
    def mode(self) -> str:
        return self.vocabulary.get("mode", "min")

    def model(self) -> nn.Module:
        raise NotImplementedError

    def monitor_options(self) -> dict[str, Any]:
        """Extra ``attach()`` arguments this family needs."""
        return {}

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]

    def intervene(self, failure: str) -> None:
        """Apply ``failure`` now (its onset)."""
        if failure == "lr_spike":
            for opt in self.optimizers()[:1]:
                _scale_lr(opt, self.setting.get("spike", 50.0))
        elif failure == "nan_input":
            self.poison = True
        elif failure == "bias_shift":
            self.shift_bias()
        elif failure == "gain_collapse":
            self.collapse_gain()
        else:
            raise ValueError(f"{self.name}: failure {failure!r} is not defined for this family")

    def shift_bias(self) -> None:
        raise ValueError(f"{self.name}: no bias_shift")

    def collapse_gain(self) -> None:
        raise ValueError(f"{self.name}: no gain_collapse")

    def _batch(self, x: torch.Tensor, y: torch.Tensor, bs: int) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, x.shape[0], (bs,), generator=self.gen)
        xb = x[idx].clone()
        if self.poison:
            xb[0] = float("nan")  # one corrupted sample in one batch
            self.poison = False
        return xb, y[idx]


# -- (a) MLP classifier -------------------------------------------------------------------------
def teacher_data(n: int, dim: int = 16, classes: int = 4, noise: float = 0.1,
                 seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs N(0, 1); labels from a fixed random two-layer teacher, ``noise`` of them random."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(dim, 32, generator=g), torch.randn(32, classes, generator=g)
    x = torch.randn(n, dim, generator=g)
    y = (torch.tanh(x @ w1 / 2) @ w2).argmax(1)
    flip = torch.rand(n, generator=g) < noise
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    return x, y


class MLP(Family):
    name = "mlp"
    vocabulary = {"train_loss": "loss", "validation": "val_acc", "mode": "max"}
    steps = 16
    per_batch = True

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        x, y = teacher_data(3072)
        self.x, self.y, self.vx, self.vy = x[:2048], y[:2048], x[2048:], y[2048:]
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 4))
        self.opt = _optimizer(setting["optimizer"], self.net.parameters(), setting["lr"])

    def model(self) -> nn.Module:
        return self.net

    def step(self) -> dict[str, float]:
        xb, yb = self._batch(self.x, self.y, self.setting["batch_size"])
        loss = F.cross_entropy(self.net(xb), yb)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            logits = self.net(self.vx)
        return {"val_acc": (logits.argmax(1) == self.vy).float().mean().item(),
                "val_loss": F.cross_entropy(logits, self.vy).item()}

    def shift_bias(self) -> None:
        with torch.no_grad():
            self.net[0].bias -= 4.0  # the first ReLU layer's pre-activations far below zero

    def collapse_gain(self) -> None:
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    m.weight *= 0.02


# -- (b) CNN with BatchNorm --------------------------------------------------------------------
def gratings(n: int, size: int = 16, channels: int = 1, classes: int = 4, noise: float = 1.0,
             seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented sinusoidal gratings (class = orientation) with random phase, frequency and
    colour, in Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    theta = y.float() * math.pi / classes + 0.15 * torch.randn(n, generator=g)
    freq = 0.25 + 0.2 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    r = torch.arange(size).float()
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    proj = (xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None])
    img = torch.sin(2 * math.pi * freq[:, None, None] * proj / 2 + phase[:, None, None])
    colour = 0.5 + torch.rand(n, channels, generator=g)
    x = img[:, None] * colour[:, :, None, None]
    x = x + noise * torch.randn(n, channels, size, size, generator=g)
    return x, y


class ImageClassifier(Family):
    """Image classifiers (``net``, data ``x``/``y``, validation ``vx``/``vy``): one
    cross-entropy step, and validation loss and accuracy."""

    def step(self) -> dict[str, float]:
        self.net.train()
        xb, yb = self._batch(self.x, self.y, self.setting["batch_size"])
        loss = F.cross_entropy(self.net(xb), yb)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"train_loss": loss.item()}

    def validate(self) -> dict[str, float]:
        self.net.eval()
        with torch.no_grad():
            logits = self.net(self.vx)
        return {"val_loss": F.cross_entropy(logits, self.vy).item(),
                "val_acc": (logits.argmax(1) == self.vy).float().mean().item()}


class CNN(ImageClassifier):
    name = "cnn"
    vocabulary = {"train_loss": "train_loss", "validation": "val_loss", "mode": "min"}
    steps = 10

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        x, y = gratings(2560)
        self.x, self.y, self.vx, self.vy = x[:2048], y[:2048], x[2048:], y[2048:]
        torch.manual_seed(seed)

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.net = nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                                 *block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(32, 4))
        self.opt = _optimizer(setting["optimizer"], self.net.parameters(), setting["lr"])

    def model(self) -> nn.Module:
        return self.net

    def shift_bias(self) -> None:
        with torch.no_grad():
            self.net[5].bias -= 3.0  # the second BatchNorm's shift: its ReLU sees ~N(-3, 1)

    def collapse_gain(self) -> None:
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    m.weight *= 1e-3  # BatchNorm hides it forward; gradients grow 1000x


# -- (c) transformer encoder (pre-LayerNorm, GELU) ------------------------------------------------
def histogram_task(n: int, length: int = 12, vocab: int = 6, seed: int = 13
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences; the label of each position is how often its token occurs (1..4+)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    counts = (x[:, :, None] == x[:, None, :]).sum(-1)
    return x, (counts.clamp(max=4) - 1)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.act, self.fc2 = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class Encoder(nn.Module):
    def __init__(self, vocab: int = 6, length: int = 12, d: int = 32, depth: int = 2,
                 classes: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(length, d))
        self.blocks = nn.ModuleList(Block(d, 2) for _ in range(depth))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok(tokens) + self.pos

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h))


class Transformer(Family):
    name = "transformer"
    vocabulary = {"train_loss": "loss", "validation": "val_loss", "mode": "min"}
    steps = 10

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        x, y = histogram_task(2560)
        self.x, self.y, self.vx, self.vy = x[:2048], y[:2048], x[2048:], y[2048:]
        torch.manual_seed(seed)
        self.net = Encoder()
        self.opt = _optimizer(setting["optimizer"], self.net.parameters(), setting["lr"])

    def model(self) -> nn.Module:
        return self.net

    def step(self) -> dict[str, float]:
        idx = torch.randint(0, self.x.shape[0], (self.setting["batch_size"],), generator=self.gen)
        h = self.net.embed(self.x[idx])
        if self.poison:  # a corrupted sample reaches the encoder's input
            h = h.clone()
            h[0] = float("nan")
            self.poison = False
        loss = F.cross_entropy(self.net(h).flatten(0, 1), self.y[idx].flatten())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            logits = self.net(self.net.embed(self.vx))
        return {"val_loss": F.cross_entropy(logits.flatten(0, 1), self.vy.flatten()).item(),
                "val_acc": (logits.argmax(-1) == self.vy).float().mean().item()}

    def collapse_gain(self) -> None:
        with torch.no_grad():
            for b in self.net.blocks:
                b.fc1.weight *= 0.01
                b.fc2.weight *= 0.01
                b.attn.out_proj.weight *= 0.01

    def shift_bias(self) -> None:
        with torch.no_grad():
            for b in self.net.blocks:
                b.fc1.bias -= 4.0  # every GELU sees large negative inputs


# -- (d) 1-D audio GAN with hinge losses ---------------------------------------------------------
SAMPLES = 512


def tones(n: int, seed: int = 17) -> torch.Tensor:
    """Harmonic tones (fundamental 1/32-1/8 of the sample rate, 3 harmonics with random
    amplitudes) under a smooth envelope, peak 0.5: "audio" in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(SAMPLES).float()
    f0 = (1 / 32 + (1 / 8 - 1 / 32) * torch.rand(n, 1, generator=g))
    x = torch.zeros(n, SAMPLES)
    for h in (1, 2, 3):
        amp = torch.rand(n, 1, generator=g) / h
        x += amp * torch.sin(2 * math.pi * h * f0 * t + 2 * math.pi * torch.rand(n, 1, generator=g))
    env = torch.sin(math.pi * (t + 1) / (SAMPLES + 1)) ** 0.5
    return 0.5 * x * env / x.abs().amax(1, keepdim=True)


def log_spectrum(x: torch.Tensor, n_fft: int = 128) -> torch.Tensor:
    """Batch-mean log power spectrum (dB) of [batch, samples]."""
    spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    return 10 * torch.log10(spec.abs().square().mean(dim=(0, 2)) + 1e-4)  # floor: -40 dB


class Generator(nn.Module):
    def __init__(self, z: int = 32, width: int = 32) -> None:
        super().__init__()
        self.fc = nn.Linear(z, width * 32)
        layers: list[nn.Module] = []
        chans = [width, 16, 8]
        for i, o in zip(chans, chans[1:]):
            layers += [nn.Upsample(scale_factor=4), nn.Conv1d(i, o, 9, padding=4),
                       nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv1d(8, 1, 9, padding=4)
        self.width = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width, 32)
        return torch.tanh(self.out(self.body(h))).squeeze(1)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        chans = [1, 16, 32, 64]
        layers: list[nn.Module] = []
        for i, o in zip(chans, chans[1:]):
            layers += [nn.Conv1d(i, o, 9, stride=4, padding=4), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(64 * 8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats, h = [], x[:, None]
        for m in self.body:
            h = m(h)
            if isinstance(m, nn.LeakyReLU):
                feats.append(h)
        return self.head(h.flatten(1)).squeeze(1), feats


class GAN(Family):
    name = "gan"
    vocabulary = {"generator_loss": "g_loss", "discriminator_loss": "d_loss",
                  "adversarial_loss": "g_adv", "gan_loss": "hinge", "validation": "val_spec_db",
                  "mode": "min"}
    steps = 4
    observe_output = True

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        super().__init__(setting, seed)
        self.real, self.val_real = tones(2048), tones(256, seed=18)
        self.val_spec = log_spectrum(self.val_real)
        torch.manual_seed(seed)
        self.g, self.d = Generator(), Discriminator()
        self.val_z = torch.randn(256, 32, generator=torch.Generator().manual_seed(5))
        betas = (0.5, 0.9)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=setting["lr_g"], betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=setting["lr_d"], betas=betas)
        self.fm = setting.get("fm", 1.0)

    def model(self) -> nn.Module:
        return nn.ModuleDict({"g": self.g, "d": self.d})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def intervene(self, failure: str) -> None:
        if failure == "d_lr_boost":
            _scale_lr(self.opt_d, self.setting.get("boost", 20.0))
        else:
            super().intervene(failure)

    def collapse_gain(self) -> None:
        with torch.no_grad():  # every generator convolution x0.05: the output falls ~100 dB
            for m in self.g.modules():
                if isinstance(m, nn.Conv1d):
                    m.weight *= 0.05
                    m.bias *= 0.05

    def step(self) -> dict[str, float]:
        bs = self.setting["batch_size"]
        idx = torch.randint(0, self.real.shape[0], (bs,), generator=self.gen)
        real = self.real[idx]
        z = torch.randn(bs, 32, generator=self.gen)
        if self.poison:
            z[0] = float("nan")
            self.poison = False
        fake = self.g(z)
        d_real, _ = self.d(real)
        d_fake, _ = self.d(fake.detach())
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        d_fake, f_fake = self.d(fake)
        with torch.no_grad():
            _, f_real = self.d(real)
        adv = -d_fake.mean()
        fm = sum((a.mean(0) - b.mean(0)).abs().mean() for a, b in zip(f_fake, f_real))
        g_loss = adv + self.fm * fm
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        if self.monitor is not None:
            self.monitor.observe_output(fake.detach(), real)
        return {"g_loss": g_loss.item(), "d_loss": d_loss.item(), "g_adv": adv.item()}

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            fake = self.g(self.val_z)
        spec = log_spectrum(fake)
        rms = fake.square().mean().sqrt().item()
        real_rms = self.val_real.square().mean().sqrt().item()
        return {"val_spec_db": (spec - self.val_spec).abs().mean().item(),
                "val_rms_ratio_db": 20 * math.log10(max(rms, 1e-12) / real_rms)}


# -- (e) timm ConvNeXt ---------------------------------------------------------------------------
def import_timm() -> Any:
    """``import timm``, also where torchvision's compiled ops cannot load.

    The only torchvision 0.28.0 wheel reachable here is the CUDA build; beside torch+cpu its
    ``_C.so`` fails to load (libc10_cuda.so) and ``import torchvision`` then raises in
    ``_meta_registrations`` (``register_fake("torchvision::nms")`` on an op that was never
    defined). timm needs only torchvision's pure-Python parts, so that one registration is
    skipped while torchvision is first imported; its detection ops (nms) stay unusable.
    """
    try:
        import timm
        return timm
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import sys

    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.",
                                                                                "timm"))]:
        del sys.modules[mod]
    original = torch.library.register_fake

    def tolerant(op: Any, *args: Any, **kwargs: Any) -> Any:
        register = original(op, *args, **kwargs)
        if not (isinstance(op, str) and op.startswith("torchvision::")) or not callable(register):
            return register

        def apply(fn: Any) -> Any:
            try:
                return register(fn)
            except RuntimeError:  # the op was never defined: its C++ library did not load
                return fn
        return apply

    torch.library.register_fake = tolerant
    try:
        import timm
    finally:
        torch.library.register_fake = original
    return timm


class TimmConvNeXt(ImageClassifier):
    name = "timm"
    vocabulary = {"train_loss": "train_loss", "validation": "val_loss", "mode": "min"}
    steps = 6

    def __init__(self, setting: dict[str, Any], seed: int) -> None:
        timm = import_timm()
        super().__init__(setting, seed)
        x, y = gratings(2304, size=32, channels=3, noise=1.0, seed=19)
        self.x, self.y, self.vx, self.vy = x[:2048], y[:2048], x[2048:], y[2048:]
        torch.manual_seed(seed)
        self.net = timm.create_model("convnext_atto", pretrained=False, num_classes=4,
                                     dims=(16, 32, 64, 96), depths=(1, 1, 2, 1), in_chans=3)
        self.opt = _optimizer(setting["optimizer"], self.net.parameters(), setting["lr"])

    def model(self) -> nn.Module:
        return self.net

    def monitor_options(self) -> dict[str, Any]:
        # timm builds its own activation classes (timm.layers.activations.GELU subclasses
        # nn.Module, not nn.GELU): attach() sees none of them unless told.
        activations = import_timm().layers.activations
        extra = tuple({type(m) for m in self.net.modules()
                       if type(m).__module__ == activations.__name__})
        return {"activation_types": ACTIVATION_TYPES + extra}

    def shift_bias(self) -> None:
        with torch.no_grad():
            for stage in self.net.stages:
                for blk in stage.blocks:
                    blk.mlp.fc1.bias -= 4.0  # every GELU of the MLPs sees large negatives


FAMILIES: dict[str, type[Family]] = {c.name: c for c in (MLP, CNN, Transformer, GAN,
                                                         TimmConvNeXt)}
