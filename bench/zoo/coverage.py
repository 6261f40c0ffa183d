"""Activation call sites of a model, counted independently of the monitor, and how many of
them the monitor reports.

The count (``call_sites``) runs one eager forward with its own instruments: forward hooks on
every module, for the activation modules of an explicit list of classes (PyTorch's, and
every activation class that transformers and timm define) and recurrent layers; and a
``TorchFunctionMode`` that attributes each activation-function call, by name, to the
innermost module whose ``forward`` is on the Python stack (found by walking the frames, not
by the monitor's module stack) and to its index among that invocation's calls. A call inside
an activation module is that module's. Names follow the monitor's convention (``path`` for
modules, ``path:function.k`` for calls), so the two sets compare directly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from monitor.training.naming import ACTIVATION_TYPES, named_modules

FUNCTIONS = {"relu", "relu_", "leaky_relu", "leaky_relu_", "gelu", "silu", "elu", "elu_",
             "selu", "selu_", "celu", "celu_", "mish", "hardswish", "relu6", "prelu", "rrelu",
             "rrelu_"}
NOT_UNIT_ACTIVATIONS = ("Identity", "Linear", "Sigmoid", "Tanh", "Softmax", "GLU", "Gate")


def activation_classes() -> tuple[type, ...]:
    """PyTorch's activation types and every activation class of transformers and timm."""
    found: list[type] = list(ACTIVATION_TYPES)
    modules = []
    try:
        from transformers import activations
        modules.append(activations)
    except ImportError:  # pragma: no cover - the zoo extra is missing
        pass
    try:
        from timm.layers import activations as timm_activations
        modules.append(timm_activations)
        from timm.layers import activations_me
        modules.append(activations_me)
    except ImportError:  # pragma: no cover
        pass
    for module in modules:
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, nn.Module)
                    and value.__module__ == module.__name__
                    and not any(word in value.__name__ for word in NOT_UNIT_ACTIVATIONS)):
                found.append(value)
    return tuple(found)


class _CallCounter(TorchFunctionMode):
    def __init__(self, modules: dict[int, tuple[str, bool]]) -> None:
        super().__init__()
        self.modules = modules
        self.sites: set[str] = set()
        self.invocations: dict[int, tuple[Any, dict[str, int]]] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in FUNCTIONS:
            self._count(name.rstrip("_"))
        return out

    def _count(self, function: str) -> None:
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if owner is not None and id(owner) in self.modules:
                break
            frame = frame.f_back
        if frame is None:
            return
        path, is_activation = self.modules[id(owner)]
        if is_activation:
            return  # the module's own computation: counted as the module
        last = self.invocations.get(id(owner))
        if last is None or last[0] is not frame:
            last = self.invocations[id(owner)] = (frame, {})
        k = last[1].get(function, 0)
        last[1][function] = k + 1
        self.sites.add(f"{path}:{function}.{k}" if path else f"{function}.{k}")


def call_sites(model: nn.Module, forward: Callable[[nn.Module], torch.Tensor]) -> set[str]:
    """Every activation call site of one eager forward of ``model``."""
    classes = activation_classes()
    named = list(named_modules(model))
    modules = {id(m): (n, isinstance(m, classes)) for n, m in named}
    sites: set[str] = set()
    handles = []
    for name, module in named:
        if name and (isinstance(module, classes) or isinstance(module, nn.RNNBase)):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: sites.add(name)))
    counter = _CallCounter(modules)
    try:
        with counter, torch.no_grad():
            forward(model)
    finally:
        for handle in handles:
            handle.remove()
        counter.invocations.clear()
    return sites | counter.sites


def reported(model: nn.Module, forward: Callable[[nn.Module], torch.Tensor],
             steps: int = 8, **attach: Any) -> tuple[set[str], dict[str, Any]]:
    """The layers ``health.collect()`` reports after ``steps`` training steps with the default
    sampling (``monitor.attach(model)``; a compiled ``model`` as it is), and the report."""
    from monitor.training.hooks import attach as attach_monitor

    health = attach_monitor(model, **attach)
    try:
        for _ in range(steps):
            forward(model).float().mean().backward()
            health.step()
        report = health.collect()
    finally:
        health.close()
    return set(report["layers"]), report
