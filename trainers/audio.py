"""Spectral features shared by the trainers: multi-resolution STFTs and log-mel."""

from __future__ import annotations

import functools
import math

import torch

from trainers.voices import SAMPLE_RATE


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT| of ``audio`` [batch, samples] (or [batch, 1, samples]) -> [batch, bins, frames]."""
    if audio.dim() == 3:
        audio = audio.squeeze(1)
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)
    return spec.abs()


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_fft: int = 512, n_mels: int = 40, fmin: float = 60.0) -> torch.Tensor:
    """Triangular mel filterbank [n_mels, n_fft//2+1] (HTK mel scale)."""

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    mels = torch.linspace(hz_to_mel(fmin), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz = mel_to_hz(mels)
    bins = torch.linspace(0, SAMPLE_RATE / 2, n_fft // 2 + 1)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lower) / (centre - lower)
    down = (upper - bins[None]) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0)


def log_mel(audio: torch.Tensor, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """Log-mel spectrogram [batch, mels, frames] with a -80 dB-ish floor."""
    mag = stft_magnitude(audio, n_fft, hop)
    mel = torch.einsum("mf,bft->bmt", mel_filterbank(n_fft).to(mag.device), mag.square())
    return torch.log(mel + 1e-5)


def log_mel_distance(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute log-mel difference (lower is better); the quality metric."""
    return (log_mel(output) - log_mel(target)).abs().mean()


def spectral_reconstruction(output: torch.Tensor, target: torch.Tensor,
                            resolutions: tuple[tuple[int, int], ...] = ((256, 64), (1024, 256))
                            ) -> torch.Tensor:
    """Multi-resolution log-magnitude L1 distance (phase-free reconstruction loss)."""
    total = output.new_zeros(())
    for n_fft, hop in resolutions:
        a = stft_magnitude(output, n_fft, hop)
        b = stft_magnitude(target, n_fft, hop)
        total = total + (torch.log(a + 1e-4) - torch.log(b + 1e-4)).abs().mean()
    return total / len(resolutions)
