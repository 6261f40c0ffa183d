"""Unit classes of a ReLU-family layer: dead, evergreen and healthy fractions.

A unit is a channel. Over a reporting window, a unit is *dead* when its output is never
positive (its maximum is <= 0), *evergreen* when it is always positive (its minimum is > 0, the
nonlinearity does nothing), and *healthy* otherwise. A unit with a NaN output in the window
counts as neither positive nor evergreen (NaN compares false): the layer's ``nonfinite_count``
tells such layers apart from really dead ones.

Only the per-unit minimum and maximum are computed (``aminmax``: one pass over the
activation, results of one value per unit), never a boolean mask of the activation.
"""

from __future__ import annotations

import torch

from monitor.signals import Partials, stack

ONE_PASS_FROM = 1 << 18  # elements: above this, one aminmax pass beats amin + amax


def per_unit_min_max(view: torch.Tensor,
                     dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit minimum and maximum over ``dims`` (NaN propagates)."""
    if len(dims) == 1:
        return torch.aminmax(view, dim=dims[0])
    if view.numel() < ONE_PASS_FROM:  # small: two launches instead of three
        return view.amin(dim=dims), view.amax(dim=dims)
    lo, hi = torch.aminmax(view, dim=dims[-1])  # [batch, units]: small
    rest = dims[:-1]
    return lo.amin(dim=rest), hi.amax(dim=rest)


def _combine(items: list[tuple]) -> tuple:
    return stack(items, 0).amin(0), stack(items, 1).amax(0)


class UnitClasses:
    """Accumulates each unit's minimum and maximum over the window."""

    def __init__(self) -> None:
        self.partials = Partials(_combine)

    def update(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        self.partials.add(*per_unit_min_max(view, dims))

    def values(self) -> dict[str, torch.Tensor]:
        low, high = self.partials.total()
        dead = (~(high > 0)).float().mean()
        evergreen = (low > 0).float().mean()
        return {"dead_ratio": dead, "evergreen_ratio": evergreen,
                "healthy_ratio": 1.0 - dead - evergreen}

    def reset(self) -> None:
        self.partials.clear()
