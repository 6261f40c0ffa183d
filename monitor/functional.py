"""Activation *functions*, seen wherever a model's code calls them.

Forward hooks see modules only; ``F.leaky_relu(x)`` inside a HiFi-GAN residual block, or
``torch.relu``/``x.relu()`` anywhere, runs no hook. During a sampled forward the monitor makes
``ActivationMode`` (a ``TorchFunctionMode``) active: every torch function called from Python
passes through it, and the watched ones (``WATCHED``) hand their output to the monitor, which
names it after the innermost module running (its path, the function and the call's index in
that module's forward: ``resblocks.0:leaky_relu.3``). A call inside a module that is itself
hooked (``nn.ReLU`` calls ``F.relu``) is that module's and is not counted again.

Why a mode and not patching ``torch.nn.functional``: the mode sees every spelling (``F.relu``,
``torch.relu``, ``Tensor.relu``, in-place forms), nothing global is replaced, and
``torch.compile`` traces through it (the compiled graph then calls the measurement as an
operator of its own, ``monitor.compiled``). It is active only inside the model's forward on
sampled steps; an unsampled step runs without it. Its cost while active: one Python call per
torch function of the forward (measured at 0.1 % of a CNN's and 1.2 % of a small BERT's
training step on one CPU thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from monitor.hooks import HealthMonitor


def _watched() -> dict[Any, str]:
    table: dict[Any, str] = {}
    spellings = {
        "relu": (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu,
                 torch.Tensor.relu_),
        "leaky_relu": (F.leaky_relu, F.leaky_relu_),
        "relu6": (F.relu6,),
        "prelu": (F.prelu, torch.prelu),
        "rrelu": (F.rrelu, F.rrelu_),
        "elu": (F.elu, F.elu_),
        "selu": (F.selu, torch.selu, torch.selu_),
        "celu": (F.celu, torch.celu, torch.celu_),
        "gelu": (F.gelu,),
        "silu": (F.silu,),
        "mish": (F.mish,),
        "hardswish": (F.hardswish,),
    }
    for name, functions in spellings.items():
        for function in functions:
            table[function] = name
    return table


WATCHED: dict[Any, str] = _watched()


class ActivationMode(TorchFunctionMode):
    """Hands the output of every watched activation function to ``monitor``."""

    def __init__(self, monitor: HealthMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        kind = WATCHED.get(func)
        if kind is not None and isinstance(out, torch.Tensor):
            self.monitor._functional(kind, out)
        return out
