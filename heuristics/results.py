"""Reading the health block of Tune results, nested or flattened."""

from __future__ import annotations

from typing import Any


def unflatten_health(result: dict[str, Any]) -> dict[str, Any]:
    """The ``health`` block of a result, nested again if Tune flattened it.

    Tune hands schedulers *flattened* results (``health/layers/<layer>/<signal>``) and callbacks
    nested ones; layer names never contain "/".
    """
    if isinstance(result.get("health"), dict):
        return result["health"]
    health: dict[str, Any] = {"layers": {}, "model": {}}
    for key, value in result.items():
        if not key.startswith("health/"):
            continue
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "layers":
            health["layers"].setdefault(parts[2], {})[parts[3]] = value
        elif len(parts) == 3 and parts[1] == "model":
            health["model"][parts[2]] = value
        elif len(parts) == 2:
            health[parts[1]] = value
    return health
