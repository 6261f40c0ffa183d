"""The one place that turns a reported result into signals.

A result is what a training reports once per iteration: its own metrics at the top level and
the monitor's ``health`` block (``HealthMonitor.collect()``: ``layers`` and ``model``). Ray Tune
hands schedulers *flattened* results (``health/layers/<layer>/<signal>``) and callbacks nested
ones; both are read here. Tune's bookkeeping keys (``pid``, ``timestamp``...) are never signals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from heuristics.vocabulary import BOOKKEEPING, Vocabulary


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


METRIC, SKIP = ("metric",), ("skip",)
_KEYS: dict[str, tuple[str, ...]] = {}  # result key -> where it goes (keys repeat every result)
_MAX_KEYS = 200_000


def _where(key: str) -> tuple[str, ...]:
    """Where a (flattened) result key goes: ``METRIC``, ``SKIP``, ``("layer", layer, signal)``,
    ``("model", signal)`` or ``("health", name)``; remembered, since a training reports the
    same keys every time. The one parser of flattened keys (``observe``, ``unflatten_health``).
    """
    where = SKIP
    if "/" not in key:
        where = SKIP if key in BOOKKEEPING else METRIC
    elif key.startswith("health/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "layers":
            where = ("layer", parts[2], parts[3])
        elif len(parts) == 3 and parts[1] == "model":
            where = ("model", parts[2])
        elif len(parts) == 2:
            where = ("health", parts[1])
    if len(_KEYS) >= _MAX_KEYS:
        _KEYS.clear()
    _KEYS[key] = where
    return where


def unflatten_health(result: dict[str, Any]) -> dict[str, Any]:
    """The ``health`` block of a result, nested again if Tune flattened it (layer names never
    contain "/")."""
    if isinstance(result.get("health"), dict):
        return result["health"]
    health: dict[str, Any] = {"layers": {}, "model": {}}
    for key, value in result.items():
        if not key.startswith("health/"):
            continue
        where = _KEYS.get(key) or _where(key)
        if where[0] == "layer":
            health["layers"].setdefault(where[1], {})[where[2]] = value
        elif where[0] == "model":
            health["model"][where[1]] = value
        elif where[0] == "health":
            health[where[1]] = value
    return health


@dataclass
class Observation:
    """The signals of one result.

    ``layers``: per-layer health signals; ``model``: model-level health signals (power);
    ``metrics``: every other number the training reported, by its own key; ``roles``: the
    declared roles (``train_loss``, ``validation``...) with their values.
    """

    iteration: int
    time_s: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    model: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    roles: dict[str, float] = field(default_factory=dict)
    role: str = "trial"

    def scalars(self) -> dict[str, float]:
        """Every scalar a rule can name: model signals, roles, then the training's own keys."""
        return {**self.metrics, **self.model, **self.roles}


def observe(result: dict[str, Any], vocabulary: Vocabulary | None = None,
            default_iteration: int = 0) -> Observation:
    """The ``Observation`` of one result under ``vocabulary`` (no roles without one)."""
    vocabulary = vocabulary or Vocabulary()
    layers: dict[str, dict[str, float]] = {}
    model: dict[str, float] = {}
    metrics: dict[str, float] = {}
    nested = result.get("health")
    flat = not isinstance(nested, dict)
    for key, value in result.items():  # one pass: results carry hundreds of flattened keys
        kind = type(value)
        if kind is float or kind is int:
            value = float(value)
        elif (value := _number(value)) is None:
            continue
        where = _KEYS.get(key) or _where(key)
        if where is METRIC:
            metrics[key] = value
        elif not flat:
            continue
        elif where[0] == "layer":
            signals = layers.get(where[1])
            if signals is None:
                signals = layers[where[1]] = {}
            signals[where[2]] = value
        elif where[0] == "model":
            model[where[1]] = value
    if isinstance(nested, dict):
        layers = {str(layer): {k: float(v) for k, v in sig.items() if _number(v) is not None}
                  for layer, sig in (nested.get("layers") or {}).items()
                  if isinstance(sig, dict)}
        model = {k: float(v) for k, v in (nested.get("model") or {}).items()
                 if _number(v) is not None}
    roles = {role: metrics[key] for role, key in vocabulary.keys().items() if key in metrics}
    iteration = _number(result.get("training_iteration"))
    time_s = _number(result.get("time_total_s"))
    role = result.get("role")
    return Observation(
        iteration=int(iteration) if iteration is not None and math.isfinite(iteration)
        else default_iteration,
        time_s=time_s if time_s is not None else 0.0,
        layers=layers, model=model, metrics=metrics, roles=roles,
        role=str(role) if isinstance(role, str) and role else vocabulary.role)
