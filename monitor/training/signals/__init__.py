"""Per-unit statistics of hooked activations, one module per measured quantity.

Every quantity follows one pattern: ``update(view, dims)`` runs in the forward hook and keeps
only results of one value per unit (or a scalar); each sampled step's partial results are kept
in a short list (``Partials``) and combined once per report by ``values()`` (and folded into
one entry when the list grows long, so memory stays bounded when nobody reports).

Element-wise work (a shifted copy to square, a finiteness test) goes through one float32
scratch buffer of at most ``CHUNK`` elements shared by every layer, chunk by chunk (``chunks``):
no temporary grows with the activation, and small layers (the usual case) are one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

FOLD_AT = 32  # partial results kept before they are folded into one
CHUNK = 1 << 19  # elements of the shared scratch buffer (2 MiB of float32)
_SCRATCH: dict[torch.device, torch.Tensor] = {}
_VIEWS: dict[tuple, torch.Tensor] = {}  # (device, shape) -> a view of that device's buffer


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


def scratch(like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A float32 buffer shaped like ``like`` (or ``shape``, on ``like``'s device; at most
    ``CHUNK`` elements, or one row of it), shared by every layer and quantity: free to
    overwrite, valid until the next call."""
    shape = like.shape if shape is None else torch.Size(shape)
    key = (like.device, shape)
    view = _VIEWS.get(key)
    if view is None:
        n = shape.numel()
        buffer = _SCRATCH.get(like.device)
        if buffer is None or buffer.numel() < n:
            buffer = _SCRATCH[like.device] = torch.empty(max(n, CHUNK), dtype=torch.float32,
                                                         device=like.device)
            _VIEWS.clear()
        if len(_VIEWS) > 256:
            _VIEWS.clear()
        view = _VIEWS[key] = buffer[:n].view(shape)
    return view


def release_scratch() -> None:
    """Free the shared buffers (they are made again when needed)."""
    _VIEWS.clear()
    _SCRATCH.clear()


def chunks(view: torch.Tensor, dims: tuple[int, ...]) -> Iterator[torch.Tensor]:
    """``view`` in pieces of at most ``CHUNK`` elements along its reduced axes (itself when
    small), each reducing over ``dims`` to the same per-unit shape."""
    n = view.numel()
    if n <= CHUNK:  # callers test this first on their hot path
        yield view
        return
    row = n // max(1, view.shape[0])
    if row <= CHUNK or len(dims) == 1:  # whole rows of the leading axis (contiguous pieces)
        yield from view.split(max(1, CHUNK // max(1, row)), dim=0)
        return
    # [batch, units, rest] with huge rows: pieces of the innermost axis
    yield from view.split(max(1, CHUNK // (view.shape[0] * view.shape[1])), dim=2)
