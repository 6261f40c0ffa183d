"""Activation spread: per-unit standard deviation across batch and time, averaged over units.

Moments are summed about a per-unit shift (the unit's mean in the window's first sampled step)
so that units with a large mean and a small spread, such as evergreen units, keep their
variance (no float32 cancellation). Only plain vectorised ops run in the hook: a subtraction,
a squaring and two sums per sampled step, in a scratch buffer shared by all layers (no
activation-sized temporaries, which on CPU cost page faults). A non-finite activation makes
the layer's spread and mean NaN for that window: they are reported as such, not hidden.
"""

from __future__ import annotations

import torch


class ActivationMoments:
    """Per-unit sums of shifted values and of their squares over the window."""

    def __init__(self) -> None:
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None
        self.count = 0  # elements per unit (host-side: known from shapes, no sync)

    def update(self, view: torch.Tensor, dims: tuple[int, ...], scratch: torch.Tensor) -> None:
        """``scratch``: a float32 buffer shaped like ``view``, free to overwrite."""
        if self.shift is None:
            self.shift = view.mean(dim=dims, keepdim=True, dtype=torch.float32)
        d = torch.sub(view, self.shift, out=scratch)
        s = d.sum(dim=dims)
        sq = d.square_().sum(dim=dims)
        if self.sum is None:
            self.sum, self.sum_sq = s, sq
        else:
            self.sum += s
            self.sum_sq += sq
        self.count += view.numel() // s.numel()

    def values(self) -> dict[str, torch.Tensor]:
        assert self.shift is not None and self.sum is not None and self.sum_sq is not None
        centred = self.sum / self.count
        std = (self.sum_sq / self.count - centred.square()).clamp_min(0.0).sqrt()
        mean = centred + self.shift.reshape(-1)
        return {"activation_std": std.mean(), "activation_mean": mean.mean()}

    def reset(self) -> None:
        self.shift = self.sum = self.sum_sq = None
        self.count = 0
