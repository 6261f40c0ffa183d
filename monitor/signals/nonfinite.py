"""Count of non-finite (NaN or infinite) activation values in the window."""

from __future__ import annotations

import torch


class NonFinite:
    def __init__(self) -> None:
        self.count: torch.Tensor | None = None

    def update(self, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        bad = torch.isfinite(x).logical_not_().sum()
        self.count = bad if self.count is None else self.count + bad

    def values(self) -> dict[str, torch.Tensor]:
        assert self.count is not None
        return {"nonfinite_count": self.count.float()}

    def reset(self) -> None:
        self.count = None
