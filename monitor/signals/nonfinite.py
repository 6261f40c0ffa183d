"""Count of non-finite (NaN or infinite) activation values in the window.

A sampled step counts the *finite* values; the window's count is the elements seen minus
that, computed once per report. Small activations: ``isfinite`` then a sum. Large ones go
through a fixed-size float scratch buffer shared by every layer, chunk by chunk (``x - x`` is
0 for a finite value and NaN otherwise; NaN -> 1; sum), so that no temporary grows with the
activation (a per-chunk boolean mask would be allocated anew for every chunk, and on CPU the
allocator keeps that memory).
"""

from __future__ import annotations

import torch

from monitor.signals import Partials

CHUNK = 1 << 19  # elements: one isfinite pass up to this; chunks of this size above
_SCRATCH: dict[torch.device, torch.Tensor] = {}  # float32 [CHUNK] per device (2 MiB)


def release_scratch() -> None:
    """Free the shared chunk buffers (they are made again when needed)."""
    _SCRATCH.clear()


def _scratch(device: torch.device, n: int) -> torch.Tensor:
    buffer = _SCRATCH.get(device)
    if buffer is None or buffer.numel() < n:
        buffer = _SCRATCH[device] = torch.empty(max(n, CHUNK), dtype=torch.float32,
                                                device=device)
    return buffer[:n]


def finite_count(x: torch.Tensor) -> torch.Tensor:
    """Number of finite elements of ``x`` (a 0-d int64 tensor on its device)."""
    n = x.numel()
    if n <= CHUNK or x.dim() == 0:
        return torch.isfinite(x).sum()
    if x.is_contiguous():
        parts = x.view(-1).split(CHUNK)
    else:  # whole rows of the leading axis
        parts = x.split(max(1, CHUNK // max(1, n // x.shape[0])))
    bad = []
    for part in parts:
        scratch = _scratch(x.device, part.numel()).view(part.shape)
        bad.append(torch.sub(part, part, out=scratch).nan_to_num_(nan=1.0).sum())
    return (n - torch.stack(bad).sum()).long()


def _combine(items: list[tuple]) -> tuple:
    return torch.stack([c for c, _ in items]).sum(), sum(n for _, n in items)


class NonFinite:
    def __init__(self) -> None:
        self.partials = Partials(_combine)

    def update(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        self.partials.add(finite_count(view), view.numel())

    def values(self) -> dict[str, torch.Tensor]:
        finite, seen = self.partials.total()
        return {"nonfinite_count": seen - finite}

    def reset(self) -> None:
        self.partials.clear()
