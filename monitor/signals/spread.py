"""Activation spread: per-unit standard deviation across batch and time, averaged over units.

Moments are summed in float32 (also under AMP) about a per-unit shift, the unit's mean in the
window's first sample, so that units with a large mean and a small spread (evergreen units) do
not lose their variance to cancellation. A non-finite activation makes the layer's
spread and mean non-finite for that window: they are reported as NaN, not hidden.
"""

from __future__ import annotations

import torch


class ActivationMoments:
    """Per-unit sum and sum of squares over every sampled element of the window."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        self.count = 0  # elements per unit (host-side: known from shapes, no sync)

    def update(self, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if self.shift is None:
            self.shift = xf.mean(dim=dims, keepdim=True)
        d = xf - self.shift
        s = d.sum(dim=dims)
        sq = torch.linalg.vector_norm(d, 2, dim=dims).square()
        n = x.numel() // s.numel()
        if self.sum is None:
            self.sum, self.sum_sq = s, sq
        else:
            self.sum += s
            self.sum_sq += sq
        self.count += n

    def values(self) -> dict[str, torch.Tensor]:
        assert self.sum is not None and self.sum_sq is not None
        assert self.shift is not None
        centred = self.sum / self.count
        var = (self.sum_sq / self.count - centred.square()).clamp_min(0.0)
        mean = centred + self.shift.reshape(-1)
        return {"activation_std": var.sqrt().mean(), "activation_mean": mean.mean()}

    def reset(self) -> None:
        self.sum = self.sum_sq = self.shift = None
        self.count = 0
