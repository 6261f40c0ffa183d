"""Unit classes of a ReLU-family layer: dead, evergreen and healthy fractions.

A unit is a channel. Over a reporting window, a unit is *dead* when its output is never
positive (its maximum is <= 0), *evergreen* when it is always positive (its minimum is > 0, the
nonlinearity does nothing), and *healthy* otherwise. A unit with a NaN output in the window
counts as neither positive nor evergreen (NaN compares false): the layer's ``nonfinite_count``
tells such layers apart from really dead ones.

A recurrent layer's output (``h = o * tanh(c)``, bounded by 1) has a fourth class: a unit is
*saturated* when every value in the window lies beyond ``SATURATED_AT`` of that bound on one
side (pinned: its gates pass no gradient, the recurrent analogue of a dead unit).

Only the per-unit minimum and maximum are computed (``amin``, ``amax``), never a boolean mask
of the activation.
"""

from __future__ import annotations

import torch

from monitor.signals import Partials, stack

SATURATED_AT = 0.95  # of the bound (1) of a tanh-bounded output


def per_unit_min_max(view: torch.Tensor,
                     dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit minimum and maximum over ``dims`` (NaN propagates). Two plain reductions:
    on CPU ``aminmax`` over several axes is many times slower."""
    return view.amin(dim=dims), view.amax(dim=dims)


def _combine(items: list[tuple]) -> tuple:
    return stack(items, 0).amin(0), stack(items, 1).amax(0)


class UnitClasses:
    """Accumulates each unit's minimum and maximum over the window."""

    def __init__(self) -> None:
        self.partials = Partials(_combine)

    def update(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        self.partials.add(*per_unit_min_max(view, dims))

    def add(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """One step's per-unit minimum and maximum, computed elsewhere (batched)."""
        self.partials.add(low, high)

    def values(self) -> dict[str, torch.Tensor]:
        low, high = self.partials.total()
        dead = (~(high > 0)).float().mean()
        evergreen = (low > 0).float().mean()
        return {"dead_ratio": dead, "evergreen_ratio": evergreen,
                "healthy_ratio": 1.0 - dead - evergreen}

    def saturated(self) -> torch.Tensor:
        """Fraction of units pinned near +-1 over the window (tanh-bounded outputs)."""
        low, high = self.partials.total()
        return ((low >= SATURATED_AT) | (high <= -SATURATED_AT)).float().mean()

    def reset(self) -> None:
        self.partials.clear()
