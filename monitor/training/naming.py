"""What the hooks watch in a model, and the names they give it.

Layer names do not depend on how the model is wrapped: the path components that
``DistributedDataParallel``/``DataParallel`` (``module``), ``torch.compile`` (``_orig_mod``),
FSDP (``_fsdp_wrapped_module``) and activation checkpointing (``_checkpoint_wrapped_module``)
insert are left out, so ``DDP(torch.compile(model))`` reports the names of ``model``.

Activation modules are recognised by type (``nn.ReLU`` ... ``nn.Mish``) and, for code written
elsewhere, by behaviour: a leaf module (no children) whose class name says it is an activation
(transformers' ``GELUActivation``/``NewGELUActivation``, timm's ``GELU``/``Swish``, a user's
``Snake``...), however it computes (GPT-2's tanh formula makes no activation call at all).
Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) are watched on their output sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Hardswish, nn.Mish,
)
# Wrappers that insert one path component between a model and its modules.
WRAPPER_ATTRS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
DATA_PARALLEL = (nn.parallel.DistributedDataParallel, nn.DataParallel)
# A leaf module with such a class name is an activation, whatever its code (lower case).
_ACTIVATION_NAME = re.compile(r"relu|gelu|silu|swish|mish|snake|activation|(^|[^a-z])(s|c)?elu$")
_NOT_ACTIVATION = re.compile(r"linear|identity|sigmoid|tanh|softmax|glu$")
KINDS = ("activation", "recurrent", "functional", "tap")


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside any ``torch.compile``, DDP, FSDP or checkpoint wrappers."""
    while True:
        inner = _wrapped(model)
        if inner is None:
            return model
        model = inner


def _wrapped(module: nn.Module) -> nn.Module | None:
    if isinstance(module, DATA_PARALLEL):
        return module.module
    for attr in WRAPPER_ATTRS:
        inner = module._modules.get(attr)
        if inner is not None and len(module._modules) == 1:
            return inner
    return None


def named_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` with wrapper components left out of the names (each module
    once, the wrappers themselves not at all)."""
    seen: set[int] = set()

    def walk(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
        inner = _wrapped(module)
        if inner is not None:
            yield from walk(inner, name)
            return
        if id(module) in seen:
            return
        seen.add(id(module))
        yield name, module
        for child_name, child in module._modules.items():
            if child is not None:
                yield from walk(child, f"{name}.{child_name}" if name else child_name)

    yield from walk(model, prefix)


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper, wraps one, or was compiled in place
    (``model.compile()``)."""
    module: nn.Module | None = model
    while module is not None:
        if "_orig_mod" in module._modules or getattr(module, "_compiled_call_impl", None):
            return True
        module = _wrapped(module)
    return False


def activation_kind(module: nn.Module,
                    types: tuple[type[nn.Module], ...] = ACTIVATION_TYPES) -> str | None:
    """``"activation"``, ``"recurrent"`` or None (not watched by type or behaviour)."""
    if isinstance(module, types):
        return "activation"
    if isinstance(module, nn.RNNBase):
        return "recurrent"
    if module._modules:
        return None
    name = type(module).__name__.lower()
    if _ACTIVATION_NAME.search(name) and not _NOT_ACTIVATION.search(name):
        return "activation"
    return None


def units_last(module: nn.Module | None) -> bool:
    """Whether activations computed in or right after ``module``'s children hold their units
    on the last axis: a module built of linear layers (``[batch, time, features]``), not of
    convolutions (``[batch, channels, time]``)."""
    if module is None:
        return False
    children = list(module._modules.values())
    if any(isinstance(c, nn.modules.conv._ConvNd) for c in children):
        return False
    return any(isinstance(c, nn.Linear) or type(c).__name__ == "Conv1D" for c in children)
