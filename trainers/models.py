"""Networks: the any-to-any conversion generator, its spectral discriminator, and students."""

from __future__ import annotations

import torch
from torch import nn

from trainers.audio import stft_magnitude

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "relu6": lambda: nn.ReLU6(),
    "prelu": lambda: nn.PReLU(),
}
STRIDE = 16  # samples per encoder frame


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}") from None


class ConvBlock(nn.Module):
    """Dilated conv -> optional FiLM conditioning -> activation, with a residual path."""

    def __init__(self, width: int, dilation: int, cond_dim: int, activation: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, 5, padding=2 * dilation, dilation=dilation)
        self.film = nn.Linear(cond_dim, 2 * width) if cond_dim else None
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.conv(x)
        if self.film is not None and cond is not None:
            scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return x + self.act(h)


class ConvGenerator(nn.Module):
    """Waveform-to-waveform converter: strided encoder, dilated blocks, transposed decoder.

    With ``n_speakers > 0`` it is conditioned on a target-speaker embedding (the master); with
    ``n_speakers == 0`` it converts into one fixed voice (a student).
    """

    def __init__(self, n_speakers: int = 0, width: int = 48, depth: int = 4, emb_dim: int = 16,
                 activation: str = "relu", bias_init: float = 0.0, init_gain: float = 1.0) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        self.embedding = nn.Embedding(n_speakers, emb_dim) if n_speakers else None
        cond_dim = emb_dim if n_speakers else 0
        self.encoder = nn.Conv1d(1, width, 2 * STRIDE, stride=STRIDE, padding=STRIDE // 2)
        self.encoder_act = make_activation(activation)
        self.blocks = nn.ModuleList(
            ConvBlock(width, 2 ** (i % 4), cond_dim, activation) for i in range(depth)
        )
        self.decoder = nn.ConvTranspose1d(width, 1, 2 * STRIDE, stride=STRIDE, padding=STRIDE // 2)
        with torch.no_grad():  # start quiet (about -20 dB of speech level), not loud
            self.decoder.weight.mul_(0.1)
        for m in [self.encoder, *(b.conv for b in self.blocks)]:
            if bias_init:
                nn.init.constant_(m.bias, bias_init)
            if init_gain != 1.0:  # scale of the initial weights (1: PyTorch's default init)
                with torch.no_grad():
                    m.weight.mul_(init_gain)

    def forward(self, audio: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """``audio`` [batch, samples] (samples a multiple of 16) -> [batch, samples]."""
        cond = self.embedding(speaker) if self.embedding is not None else None
        h = self.encoder_act(self.encoder(audio.unsqueeze(1)))
        for block in self.blocks:
            h = block(h, cond)
        return self.decoder(h).squeeze(1)


class SpectralDiscriminator(nn.Module):
    """Multi-resolution spectral discriminator with speaker projection conditioning.

    Each resolution looks at the log-magnitude STFT (frequency bins as channels) through a small
    conv stack with LeakyReLU and returns patch logits; ``features`` are kept for feature matching.
    """

    RESOLUTIONS = ((256, 64), (1024, 256))

    def __init__(self, n_speakers: int, width: int = 32) -> None:
        super().__init__()
        self.stacks = nn.ModuleList()
        self.projections = nn.ModuleList()
        for n_fft, _ in self.RESOLUTIONS:
            self.stacks.append(nn.ModuleList([
                nn.Conv1d(n_fft // 2 + 1, width, 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv1d(width, width, 3, padding=2, dilation=2),
                nn.LeakyReLU(0.2),
                nn.Conv1d(width, 1, 3, padding=1),
            ]))
            self.projections.append(nn.Embedding(n_speakers, width))

    def forward(self, audio: torch.Tensor, speaker: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, features = [], []
        for (n_fft, hop), stack, proj in zip(self.RESOLUTIONS, self.stacks, self.projections):
            h = torch.log(stft_magnitude(audio, n_fft, hop) + 1e-4)
            for layer in stack[:-1]:
                h = layer(h)
                if isinstance(layer, nn.LeakyReLU):
                    features.append(h)
            out = stack[-1](h) + (proj(speaker).unsqueeze(-1) * h).sum(1, keepdim=True) / h.shape[1]
            logits.append(out)
        return logits, features


STUDENT_PRESETS = {
    # quality setting -> (width, depth)
    "low": (8, 2),
    "medium": (16, 3),
    "high": (24, 4),
}


def make_student(preset: str, activation: str = "relu", bias_init: float = 0.0,
                 init_gain: float = 1.0) -> ConvGenerator:
    try:
        width, depth = STUDENT_PRESETS[preset]
    except KeyError:
        raise ValueError(f"student preset must be one of {sorted(STUDENT_PRESETS)}, "
                         f"got {preset!r}") from None
    return ConvGenerator(n_speakers=0, width=width, depth=depth, activation=activation,
                         bias_init=bias_init, init_gain=init_gain)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
