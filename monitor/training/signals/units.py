"""Unit classes of an activation layer: dead, evergreen and healthy fractions.

A unit is a channel. Over a reporting window, a unit is *dead* when every output lies in its
activation's *flat region* (``DEAD_BAND``: where the function passes almost no gradient),
*evergreen* when it is always positive (its minimum is > 0: the nonlinearity does nothing), and
*healthy* otherwise. For the ReLU family the flat region is "never positive" (the maximum is
<= 0). For smooth activations it is narrower, since a negative input still passes gradient
there: SiLU/Swish, GELU and Mish outputs pinned at about 0 from below (every output in
``[f(-t), 0]``, where ``|f'(-t)|`` is about 1 % of the slope: t = 6, 3, 6), Hardswish outputs
exactly 0, ELU/CELU/SELU outputs pinned at their negative saturation (every output below
``f(-4.5)``: ``e^-4.5`` is 1 %). Only the outputs are read, so a SiLU/GELU/Mish unit whose
inputs all lie within a few hundredths below 0 also counts as dead (its outputs are then
constant at about 0 too). A unit with a NaN output in the window counts as dead and not
evergreen (NaN compares false): the layer's ``nonfinite_count`` tells such layers apart from
really dead ones.

A recurrent layer's output (``h = o * tanh(c)``, bounded by 1) has a fourth class: a unit is
*saturated* when every value in the window lies beyond ``SATURATED_AT`` of that bound on one
side (pinned: its gates pass no gradient, the recurrent analogue of a dead unit).

Only the per-unit minimum and maximum are computed (``amin``, ``amax``), never a boolean mask
of the activation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from monitor.training.signals import Partials, stack

SATURATED_AT = 0.95  # of the bound (1) of a tanh-bounded output

Band = tuple[float, float]
NEVER_POSITIVE: Band = (-math.inf, 0.0)
_SELU_SCALE, _SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


def _below(f, t: float) -> Band:
    """Outputs pinned at about 0 from below: ``[f(-t), 0]``."""
    return (float(f(torch.tensor(-t, dtype=torch.float64))), 0.0)


def _saturated(scale_alpha: float, t: float = 4.5) -> Band:
    """Outputs pinned at the negative saturation ``-scale_alpha`` of an ELU-type function."""
    return (-math.inf, scale_alpha * math.expm1(-t))


def dead_band(function: str, alpha: float = 1.0) -> Band:
    """The interval of outputs in which a unit of ``function`` (``relu``, ``gelu``, ``silu``,
    ``elu``...; a module's class name lower-cased also works) is dead."""
    f = function.lower()
    if "gelu" in f:
        return _below(F.gelu, 3.0)
    if "silu" in f or ("swish" in f and "hard" not in f):
        return _below(F.silu, 6.0)
    if "mish" in f:
        return _below(F.mish, 6.0)
    if "hardswish" in f:
        return (0.0, 0.0)
    if "selu" in f:
        return _saturated(_SELU_SCALE * _SELU_ALPHA)
    if "elu" in f and "relu" not in f:  # elu, celu
        return _saturated(alpha)
    return NEVER_POSITIVE


def module_dead_band(module: nn.Module) -> Band:
    """``dead_band`` of an activation module, with its ``alpha`` (ELU, CELU)."""
    return dead_band(type(module).__name__, float(getattr(module, "alpha", 1.0) or 1.0))


def per_unit_min_max(view: torch.Tensor,
                     dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit minimum and maximum over ``dims`` (NaN propagates). Two plain reductions:
    on CPU ``aminmax`` over several axes is many times slower."""
    return view.amin(dim=dims), view.amax(dim=dims)


def _combine(items: list[tuple]) -> tuple:
    return stack(items, 0).amin(0), stack(items, 1).amax(0)


class UnitClasses:
    """Accumulates each unit's minimum and maximum over the window; ``band`` is the
    activation's dead band (``dead_band``)."""

    def __init__(self, band: Band = NEVER_POSITIVE) -> None:
        self.partials = Partials(_combine)
        self.band = band

    def update(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        self.partials.add(*per_unit_min_max(view, dims))

    def add(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """One step's per-unit minimum and maximum, computed elsewhere (batched)."""
        self.partials.add(low, high)

    def values(self) -> dict[str, torch.Tensor]:
        low, high = self.partials.total()
        floor, ceiling = self.band
        dead = (~(high > ceiling) & ~(low < floor)).float().mean()
        evergreen = (low > 0).float().mean()
        return {"dead_ratio": dead, "evergreen_ratio": evergreen,
                "healthy_ratio": 1.0 - dead - evergreen}

    def saturated(self) -> torch.Tensor:
        """Fraction of units pinned near +-1 over the window (tanh-bounded outputs)."""
        low, high = self.partials.total()
        return ((low >= SATURATED_AT) | (high <= -SATURATED_AT)).float().mean()

    def reset(self) -> None:
        self.partials.clear()
