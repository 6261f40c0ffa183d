"""Per-unit statistics of hooked activations, one module per measured quantity.

Every quantity follows one pattern: ``update(view, dims)`` runs in the forward hook and
launches only reductions whose results are per unit (or a scalar), so no activation-sized
temporary is ever allocated; each sampled step's partial results are kept in a short list
(``Partials``) and combined once per report by ``values()`` (and folded into one entry when
the list grows long, so memory stays bounded when nobody reports).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

FOLD_AT = 32  # partial results kept before they are folded into one


class Partials:
    """Per-step partial results of one quantity, combined lazily by ``combine``."""

    def __init__(self, combine: Callable[[list[tuple]], tuple]) -> None:
        self.combine = combine
        self.items: list[tuple] = []

    def add(self, *item: object) -> None:
        self.items.append(item)
        if len(self.items) >= FOLD_AT:
            self.items = [self.combine(self.items)]

    def total(self) -> tuple:
        assert self.items, "no sampled step in the window"
        if len(self.items) > 1:
            self.items = [self.combine(self.items)]
        return self.items[0]

    def __bool__(self) -> bool:
        return bool(self.items)

    def clear(self) -> None:
        self.items.clear()


def stack(items: list[tuple], i: int) -> torch.Tensor:
    return torch.stack([item[i] for item in items])
