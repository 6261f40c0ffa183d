"""Count of non-finite (NaN or infinite) activation values in the window.

Float arithmetic only, in the shared scratch buffer chunk by chunk: ``x - x`` is 0 for a
finite value and NaN otherwise, then NaN -> 1 and a sum (on CPU several times faster than
``isfinite().sum()``, and no boolean mask as large as the activation).

The per-unit minimum and maximum (already computed for the unit classes) are NaN or infinite
exactly when a unit saw a non-finite value. On CPU, where reading a value needs no transfer,
the count runs only then (a finite layer counts 0 without another pass over it); on an
accelerator it always runs, so that a hook never waits for the device.
"""

from __future__ import annotations

import math

import torch

from monitor.training.signals import CHUNK, Partials, chunks, scratch


def nonfinite_count(view: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Number of NaN/Inf elements of ``view`` (a 0-d float32 tensor on its device)."""
    if view.numel() <= CHUNK:  # the usual case: one piece
        return torch.sub(view, view, out=scratch(view)).nan_to_num_(nan=1.0).sum()
    total = None
    for part in chunks(view, dims):
        bad = torch.sub(part, part, out=scratch(part)).nan_to_num_(nan=1.0).sum()
        total = bad if total is None else total + bad
    assert total is not None
    return total


def all_finite_on_cpu(low: torch.Tensor, high: torch.Tensor) -> bool:
    """True when ``low``/``high`` (per-unit minima and maxima) live on the CPU and are all
    finite: then the activation they summarise has no NaN or infinite value."""
    if low.device.type != "cpu":
        return False
    # high - low is NaN or infinite when either is (or, harmlessly, when it overflows)
    return math.isfinite(float(torch.sub(high, low).sum()))


def _combine(items: list[tuple]) -> tuple:
    counts = [c for (c,) in items if isinstance(c, torch.Tensor)]
    total = torch.stack(counts).double().sum() if counts else 0.0
    return (total,)


class NonFinite:
    def __init__(self) -> None:
        self.partials = Partials(_combine)

    def update(self, view: torch.Tensor, dims: tuple[int, ...],
               low: torch.Tensor | None = None, high: torch.Tensor | None = None) -> None:
        """``low``/``high``: this step's per-unit minima and maxima, when known."""
        if low is not None and high is not None and all_finite_on_cpu(low, high):
            self.partials.add(0)
        else:
            self.partials.add(nonfinite_count(view, dims))

    def add(self, count: torch.Tensor | int) -> None:
        """One step's count, computed elsewhere (batched)."""
        self.partials.add(count)

    def values(self) -> dict[str, torch.Tensor]:
        (count,) = self.partials.total()
        return {"nonfinite_count": torch.as_tensor(count, dtype=torch.float64)}

    def reset(self) -> None:
        self.partials.clear()
