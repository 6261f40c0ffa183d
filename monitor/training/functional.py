"""Activation *functions*, seen wherever a model's code calls them.

Forward hooks see modules only; ``F.leaky_relu(x)`` inside a HiFi-GAN residual block, or
``torch.relu``/``x.relu()`` anywhere, runs no hook. During a sampled forward the monitor hands
the output of every watched activation function (``WATCHED``) to itself, which names it after
the innermost module running (its path, the function and the call's index in that module's
forward: ``resblocks.0:leaky_relu.3``). A call inside a module that is itself hooked
(``nn.ReLU`` calls ``F.relu``) is that module's and is not counted again.

Two instruments, one result:

* ``ActivationMode`` (a ``TorchFunctionMode``) sees every spelling of a call (``F.relu``,
  ``torch.relu``, ``Tensor.relu``, in-place forms, a function bound to a name before the
  forward ran) and ``torch.compile`` traces through it (the compiled graph then calls the
  measurement as an operator of its own, ``compiled``). Its price: one Python call per
  torch function of the forward, watched or not (4-10 % of a small vocoder's training step on
  one CPU thread, where the kernels are small).
* ``watch`` (eager forwards): the watched spellings of ``torch.nn.functional``, ``torch``
  and ``torch.Tensor`` are replaced, for the sampled forward only, by wrappers that hand their
  output on; the forward's other torch calls run untouched. The wrappers pass straight
  through in any thread with no monitor watching and inside another watched call (``F.selu``
  calls ``torch.selu``: one call), and the originals are back after the forward.

An eager model is looked at with the mode on its first sampled forward and every
``PROBE_WINDOWS``-th window after, the wrappers in place as well: a watched call the mode sees
and no wrapper does (a spelling bound before the forward) makes that monitor keep the mode.
Otherwise its sampled forwards use the wrappers alone. A compiled model uses the mode (dynamo
traces through it; where the first window found no activation call, sampled steps run a graph
traced without it: ``HealthMonitor._root_pre``).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from monitor.training.hooks import HealthMonitor


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


def _quiet_types() -> frozenset[type]:
    names = ("Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
             "ConvTranspose2d", "ConvTranspose3d", "Embedding", "EmbeddingBag", "LayerNorm",
             "GroupNorm", "RMSNorm", "LocalResponseNorm", "BatchNorm1d", "BatchNorm2d",
             "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d",
             "InstanceNorm3d", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
             "AlphaDropout", "Identity", "Flatten", "Unflatten", "MaxPool1d", "MaxPool2d",
             "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
             "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
             "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Upsample", "PixelShuffle",
             "PixelUnshuffle", "ZeroPad1d", "ZeroPad2d", "ConstantPad1d", "ConstantPad2d",
             "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
             "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "Softmax",
             "LogSoftmax", "Tanh", "Sigmoid", "LSTM", "GRU", "RNN")
    return frozenset(t for t in (getattr(torch.nn, n, None) for n in names) if t is not None)


# Modules of exactly these ``torch.nn`` types call no activation function in their forward:
# they need no entry on the monitor's module stack (two hooks fewer per conv or norm layer).
# A subclass, which may, keeps its entry.
QUIET_TYPES: frozenset[type] = _quiet_types()


class ActivationMode(TorchFunctionMode):
    """Hands the output of every watched activation function to ``monitor``; with
    ``coverage`` (eager, the wrappers in place), also whether a wrapper made the call (one it
    measures that no wrapper made sets the monitor's ``_uncovered``)."""

    def __init__(self, monitor: HealthMonitor, coverage: bool = False) -> None:
        super().__init__()
        self.monitor = monitor
        self.coverage = coverage

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        covered = self.coverage and _LOCAL.inside  # read before the call: a wrapper's flag
        out = func(*args, **(kwargs or {}))
        kind = WATCHED.get(func)
        if kind is not None and isinstance(out, torch.Tensor):
            self.monitor._functional(kind, out, covered or not self.coverage)
        return out


class _Local(threading.local):
    def __init__(self) -> None:
        self.watchers: list[HealthMonitor] = []  # monitors fed by the wrappers
        self.active = 0  # monitors in a sampled forward with the wrappers in place
        self.inside = False  # within a watched call (its nested calls are its own)


_LOCAL = _Local()
_LOCK = threading.Lock()
_INSTALLED = 0  # forwards (any thread) with the wrappers in place
_PATCHES: list[tuple[Any, str, Any, Any, bool]] = []  # owner, name, original, wrapper, own


def _wrap(original: Any, kind: str) -> Any:
    @functools.wraps(original)
    def watched(*args: Any, **kwargs: Any) -> Any:
        local = _LOCAL
        if local.inside or not local.active:
            return original(*args, **kwargs)
        local.inside = True
        try:
            out = original(*args, **kwargs)
        finally:
            local.inside = False
        if local.watchers and isinstance(out, torch.Tensor):
            for monitor in local.watchers:
                monitor._call(kind, out)
        return out
    return watched


def _patches() -> list[tuple[Any, str, Any, Any, bool]]:
    """Every watched spelling that is an attribute of ``torch.nn.functional``, ``torch`` or
    ``torch.Tensor``: (owner, name, original, wrapper, whether the owner defines it itself)."""
    if not _PATCHES:
        names = {getattr(f, "__name__", "") for f in WATCHED}
        for owner in (F, torch, torch.Tensor):
            for name in sorted(names):
                original = getattr(owner, name, None)
                kind = WATCHED.get(original)
                if kind is not None:
                    _PATCHES.append((owner, name, original, _wrap(original, kind),
                                     name in vars(owner)))
        # ``F.leaky_relu`` hands the mode itself by its global name, then the wrapper's
        WATCHED.update((wrapper, WATCHED[original]) for _, _, original, wrapper, _ in _PATCHES)
    return _PATCHES


def _install() -> None:
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            for owner, name, _, wrapper, _ in _patches():
                setattr(owner, name, wrapper)
        _INSTALLED += 1


def _uninstall() -> None:
    global _INSTALLED
    with _LOCK:
        _INSTALLED -= 1
        if not _INSTALLED:
            for owner, name, original, _, own in _patches():
                if own:
                    setattr(owner, name, original)
                else:  # inherited (``Tensor.relu`` is ``TensorBase``'s): drop the shadow
                    delattr(owner, name)


def watch(monitor: HealthMonitor | None) -> None:
    """Put the wrappers in place (for every thread; they pass through where nobody watches)
    until the matching ``unwatch``; calls in this thread feed ``monitor`` (``None``: nobody,
    the wrappers only mark the calls they make, for ``ActivationMode``'s coverage)."""
    _install()
    _LOCAL.active += 1
    if monitor is not None:
        _LOCAL.watchers.append(monitor)


def unwatch(monitor: HealthMonitor | None) -> None:
    """End a ``watch(monitor)`` (the originals are back once no forward watches)."""
    local = _LOCAL
    if monitor is not None:
        local.watchers.remove(monitor)
    local.active -= 1
    _uninstall()
