"""Activation spread: per-unit standard deviation across batch and time, averaged over units.

Moments are summed about a per-unit shift (the unit's mean in the window's first sampled step)
so that units with a large mean and a small spread, such as evergreen units, keep their
variance (no float32 cancellation). Per sampled step: a subtraction into the shared scratch
buffer, a sum, a squaring in place and a sum, chunk by chunk (plain vectorised ops: on CPU
they are several times faster than ``var_mean``'s Welford loop, and no temporary grows with
the activation). Steps add up in float64 once per report. A non-finite activation makes the
layer's spread and mean NaN for that window: they are reported as such, not hidden.
"""

from __future__ import annotations

import torch

from monitor.training.signals import CHUNK, Partials, chunks, scratch, stack


def _combine(items: list[tuple]) -> tuple:
    return (stack(items, 0).double().sum(0), stack(items, 1).double().sum(0),
            sum(item[2] for item in items))


class ActivationMoments:
    """Per-unit sums of shifted values and of their squares over the window."""

    def __init__(self) -> None:
        self.shift: torch.Tensor | None = None
        self.partials = Partials(_combine)

    def update(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        if self.shift is None:
            self.shift = view.mean(dim=dims, keepdim=True, dtype=torch.float32)
        if view.numel() <= CHUNK:  # the usual case: one piece
            d = torch.sub(view, self.shift, out=scratch(view))
            s = d.sum(dim=dims)
            self.partials.add(s, d.square_().sum(dim=dims), view.numel() // s.numel())
            return
        total = total_sq = None
        for part in chunks(view, dims):
            d = torch.sub(part, self.shift, out=scratch(part))
            s = d.sum(dim=dims)
            sq = d.square_().sum(dim=dims)
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
        count = view.numel() // max(1, self.shift.numel())  # per unit: host-side, no sync
        self.partials.add(total, total_sq, count)

    def add(self, total: torch.Tensor, total_sq: torch.Tensor, count: int) -> None:
        """One step's per-unit shifted sums, computed elsewhere (batched) about ``shift``."""
        self.partials.add(total, total_sq, count)

    def values(self) -> dict[str, torch.Tensor]:
        assert self.shift is not None
        total, total_sq, count = self.partials.total()
        centred = total / count
        std = (total_sq / count - centred.square()).clamp_min(0.0).sqrt()
        mean = centred + self.shift.reshape(-1).double()
        return {"activation_std": std.mean(), "activation_mean": mean.mean()}

    def reset(self) -> None:
        self.shift = None
        self.partials.clear()
