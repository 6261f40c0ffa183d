"""Unit classes of a ReLU-family layer: dead, evergreen and healthy fractions.

A unit is a channel. Over a reporting window, a unit is *dead* when its output is never
positive, *evergreen* when it is always positive (the nonlinearity does nothing), and *healthy*
otherwise. Non-finite outputs count as not positive (NaN > 0 is false); the layer's
``nonfinite_count`` tells such layers apart.
"""

from __future__ import annotations

import torch


class UnitClasses:
    """Accumulates, per unit, whether it was ever positive and whether it was always positive."""

    def __init__(self) -> None:
        self.ever_positive: torch.Tensor | None = None
        self.always_positive: torch.Tensor | None = None

    def update(self, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        positive = x > 0
        ever = positive.any(dim=dims)
        always = positive.all(dim=dims)
        if self.ever_positive is None:
            self.ever_positive, self.always_positive = ever, always
        else:
            self.ever_positive |= ever
            self.always_positive &= always

    def values(self) -> dict[str, torch.Tensor]:
        assert self.ever_positive is not None and self.always_positive is not None
        dead = (~self.ever_positive).float().mean()
        evergreen = self.always_positive.float().mean()
        return {"dead_ratio": dead, "evergreen_ratio": evergreen,
                "healthy_ratio": 1.0 - dead - evergreen}

    def reset(self) -> None:
        self.ever_positive = self.always_positive = None
