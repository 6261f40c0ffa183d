"""The measurement as an operator of its own, for models run under ``torch.compile``.

A compiled graph runs no Python hook: the hooks, and the activation-function mode, run while
dynamo *traces* the model and what they do becomes part of the graph. There they call
``voice_monitor::observe(x, token, monitor, layer, unit_dim)``, an opaque custom operator that the
graph keeps (it is declared to write ``token``, so it is never pruned as dead code) and that
runs the same eager measurement on the activation the compiled code produced. Dynamo guards
on the monitor's ``measuring`` flag: a graph for sampled steps, with the operator, and one for
the others, without (nothing is measured there and nothing costs); where the model makes no
activation call, a sampled graph traced without the activation mode from the second window.
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from monitor.training.hooks import HealthMonitor

_MONITORS: weakref.WeakValueDictionary[int, HealthMonitor] = weakref.WeakValueDictionary()
_IDS = itertools.count(1)


def register(monitor: HealthMonitor) -> int:
    """A number naming ``monitor`` inside compiled graphs."""
    key = next(_IDS)
    _MONITORS[key] = monitor
    return key


@torch.compiler.disable
def _measure(monitor: int, layer: str, x: torch.Tensor, unit_dim: int) -> None:
    target = _MONITORS.get(monitor)
    if target is not None:
        target._measure_named(layer, x, unit_dim)


# Defined with the low-level library API, not ``torch.library.custom_op``: the latter's
# Python layers (autograd wrapper, default filling, mutation checks) cost about 0.3-0.5 ms a
# call on this CPU, a quarter of a small compiled BERT's training step for its two calls;
# here the dispatcher calls ``_observe`` directly (about 20 us more than the measurement).
_LIBRARY = torch.library.Library("voice_monitor", "DEF")
_LIBRARY.define("observe(Tensor x, Tensor(a!) token, int monitor, str layer, int unit_dim) -> ()")


def _observe(x: torch.Tensor, token: torch.Tensor, monitor: int, layer: str,
             unit_dim: int) -> None:
    """Measure ``x`` as ``layer`` of monitor number ``monitor`` (gone monitors: nothing)."""
    _measure(monitor, layer, x, unit_dim)


_LIBRARY.impl("observe", _observe, "CompositeExplicitAutograd")


@torch.library.register_fake("voice_monitor::observe")
def _observe_fake(x: torch.Tensor, token: torch.Tensor, monitor: int, layer: str,
                  unit_dim: int) -> None:
    return None


observe = torch.ops.voice_monitor.observe.default
