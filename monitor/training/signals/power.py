"""Output spectral power: the Parallel WaveNet power loss and power levels in dB.

phi(x) = |STFT(x)|^2 averaged over time (arXiv 1711.10433, eq. 5); the power loss is
||phi(g(z, c)) - phi(x)||^2, here averaged over frequency bins and the batch.
"""

from __future__ import annotations

import torch

N_FFT = 512
HOP = 128


def power_spectrum(audio: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """Time-averaged power spectrum phi of ``audio`` [batch, samples] -> [batch, n_fft//2+1]."""
    if audio.dim() == 3:
        audio = audio.squeeze(1)
    window = torch.hann_window(n_fft, device=audio.device, dtype=torch.float32)
    spec = torch.stft(audio.float(), n_fft, hop, window=window, return_complex=True)
    return spec.abs().square().mean(dim=-1)


def power_loss(phi_out: torch.Tensor, phi_target: torch.Tensor) -> torch.Tensor:
    """Squared distance between time-averaged power spectra, mean over bins and batch."""
    return (phi_out - phi_target).square().mean()


def power_db(phi: torch.Tensor, floor: float = 1e-10) -> torch.Tensor:
    """Mean power of a time-averaged spectrum in dB (a scalar tensor)."""
    return 10.0 * torch.log10(phi.mean().clamp_min(floor))


class OutputPower:
    """Window accumulator of the model's output power, its target's, and the power loss."""

    def __init__(self) -> None:
        self.phi_out: torch.Tensor | None = None
        self.phi_target: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.count = 0

    def update(self, phi_out: torch.Tensor, phi_target: torch.Tensor) -> None:
        phi_out, phi_target = phi_out.detach().float(), phi_target.detach().float()
        out, tgt = phi_out.mean(0), phi_target.mean(0)
        loss = power_loss(phi_out, phi_target)
        if self.phi_out is None:
            self.phi_out, self.phi_target, self.loss = out, tgt, loss
        else:
            self.phi_out, self.phi_target = self.phi_out + out, self.phi_target + tgt
            self.loss = self.loss + loss
        self.count += 1

    def values(self) -> dict[str, torch.Tensor]:
        assert self.phi_out is not None and self.phi_target is not None and self.loss is not None
        out_db, tgt_db = power_db(self.phi_out / self.count), power_db(self.phi_target / self.count)
        return {"output_power_db": out_db, "target_power_db": tgt_db,
                "power_loss": self.loss / self.count, "power_ratio_db": out_db - tgt_db}

    def reset(self) -> None:
        self.phi_out = self.phi_target = self.loss = None
        self.count = 0
