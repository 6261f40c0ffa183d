"""Unit classes of a ReLU-family layer: dead, evergreen and healthy fractions.

A unit is a channel. Over a reporting window, a unit is *dead* when its output is never
positive (its maximum is <= 0), *evergreen* when it is always positive (its minimum is > 0, the
nonlinearity does nothing), and *healthy* otherwise. A unit with a NaN output in the window
counts as neither positive nor evergreen (NaN compares false): the layer's ``nonfinite_count``
tells such layers apart from really dead ones.
"""

from __future__ import annotations

import torch


def per_unit_min_max(view: torch.Tensor,
                     dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit minimum and maximum (plain vectorised reductions, no boolean temporaries)."""
    return view.amin(dim=dims), view.amax(dim=dims)


class UnitClasses:
    """Accumulates each unit's minimum and maximum over the window."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def update(self, view: torch.Tensor, dims: tuple[int, ...], scratch: torch.Tensor) -> None:
        lo, hi = per_unit_min_max(view, dims)
        if self.low is None:
            self.low, self.high = lo, hi
        else:
            self.low = torch.minimum(self.low, lo)
            self.high = torch.maximum(self.high, hi)

    def values(self) -> dict[str, torch.Tensor]:
        assert self.low is not None and self.high is not None
        dead = (~(self.high > 0)).float().mean()
        evergreen = (self.low > 0).float().mean()
        return {"dead_ratio": dead, "evergreen_ratio": evergreen,
                "healthy_ratio": 1.0 - dead - evergreen}

    def reset(self) -> None:
        self.low = self.high = None
