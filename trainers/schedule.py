"""Optimisers, learning-rate warm-up and gradient clipping shared by the trainers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Fraction of the peak learning rate at optimiser step ``step`` (0-based).

    Rises linearly from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps; 1 without warm-up.
    A warm-up to a rate the network cannot take is a classic way for a training to diverge
    late rather than at once.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def warm_up(config: dict[str, Any], step: int,
            *schedules: tuple[torch.optim.Optimizer, float]) -> None:
    """Before optimiser step ``step``: set each (optimiser, peak rate) to its warmed-up rate,
    over ``config["lr_warmup_iterations"]`` iterations (0: leave the rates alone)."""
    if not config["lr_warmup_iterations"]:
        return
    f = warmup_factor(step, config["lr_warmup_iterations"] * config["steps_per_iteration"])
    for optimizer, peak in schedules:
        set_lr(optimizer, f * peak)


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float | None
                   ) -> torch.Tensor:
    """Clip the gradients' total norm to ``max_norm`` (None: no clipping); return the norm
    before clipping."""
    return torch.nn.utils.clip_grad_norm_(params, math.inf if max_norm is None else max_norm)


def make_optimizer(name: str, params, lr: float,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """``adam`` (with ``betas``) or ``sgd`` (momentum 0.9)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
