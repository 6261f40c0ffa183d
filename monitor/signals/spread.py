"""Activation spread: per-unit standard deviation across batch and time, averaged over units.

Each sampled step adds its per-unit mean and (population) variance from ``torch.var_mean``: one
pass over the activation (Welford accumulation, stable for units with a large mean and a small
spread such as evergreen units), results of one value per unit. The window's steps are combined
in float64 with the parallel-variance formula (Chan et al.): the window variance is the
count-weighted mean of the steps' variances plus the spread of their means. A non-finite
activation makes the layer's spread and mean NaN for that window: they are reported as such.
"""

from __future__ import annotations

import torch

from monitor.signals import Partials


def _combine(items: list[tuple]) -> tuple:
    counts = torch.tensor([float(n) for _, _, n in items], dtype=torch.float64,
                          device=items[0][0].device).unsqueeze(1)
    means = torch.stack([m for m, _, _ in items]).double()
    variances = torch.stack([v for _, v, _ in items]).double()
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (counts * (variances + (means - mean).square())).sum(0) / total
    return mean, var, int(sum(n for _, _, n in items))


class ActivationMoments:
    """Per-unit mean and variance over the window, from per-step ``var_mean``."""

    def __init__(self) -> None:
        self.partials = Partials(_combine)

    def update(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        var, mean = torch.var_mean(view, dim=dims, correction=0)
        count = view.numel() // max(mean.numel(), 1)  # elements per unit: host-side, no sync
        self.partials.add(mean, var, count)

    def values(self) -> dict[str, torch.Tensor]:
        mean, var, _ = self.partials.total()
        mean, var = mean.double(), var.double()
        return {"activation_std": var.clamp_min(0.0).sqrt().mean(),
                "activation_mean": mean.mean()}

    def reset(self) -> None:
        self.partials.clear()
