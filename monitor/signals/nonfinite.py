"""Count of non-finite (NaN or infinite) activation values in the window.

Counted with float arithmetic only (``x - x`` is 0 for finite values and NaN otherwise, then
NaN -> 1 and a sum), which is several times faster on CPU than ``isfinite().sum()``.
"""

from __future__ import annotations

import torch


class NonFinite:
    def __init__(self) -> None:
        self.count: torch.Tensor | None = None

    def update(self, view: torch.Tensor, dims: tuple[int, ...], scratch: torch.Tensor) -> None:
        """``scratch``: a float32 buffer shaped like ``view``, free to overwrite."""
        bad = torch.sub(view, view, out=scratch).nan_to_num_(nan=1.0).sum()
        self.count = bad if self.count is None else self.count + bad

    def values(self) -> dict[str, torch.Tensor]:
        assert self.count is not None
        return {"nonfinite_count": self.count}

    def reset(self) -> None:
        self.count = None
