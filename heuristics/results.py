"""The one place that turns a reported result into signals.

A result is what a training reports once per iteration: its own metrics at the top level and
the monitor's ``health`` block (``HealthMonitor.collect()``: ``layers`` and ``model``). Ray Tune
hands schedulers *flattened* results (``health/layers/<layer>/<signal>``) and callbacks nested
ones; both are read here. Tune's bookkeeping keys (``pid``, ``timestamp``...) are never signals.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from heuristics.vocabulary import BOOKKEEPING, Vocabulary

MAX_ITERATION = 2 ** 53  # an iteration a float, SQLite and JSON all hold exactly


def number(x: Any) -> float | None:
    """The one place that turns a reported value into a number: ``float`` for every kind of
    real number a training can hand over (Python ``int``/``float``, ``Decimal`` (a signalling
    NaN too), ``Fraction``, numpy scalars of any width (``longdouble`` too), 0-d numpy
    arrays, torch scalar tensors and anything else with ``ndim == 0`` and ``item()``),
    ``None`` for everything else (text, ``bool``, containers, complex numbers). Numbers
    beyond the float range become ``inf`` with their sign, never ``OverflowError``; NaN stays
    NaN (the ``divergence`` rule's)."""
    kind = type(x)
    if kind is float:
        return x
    if kind is int:
        return _int(x)
    if x is None or kind is bool or kind is str or kind is bytes:
        return None
    if _one_element(x):
        try:  # numpy 0-d arrays and scalars, torch scalar tensors, one-element arrays
            item = x.item()
        except Exception:  # noqa: BLE001 - an object that only looks like an array
            return None
        if type(item) in (float, int, bool, complex) or item is None:
            return number(item)
        x = item  # numpy longdouble: its item() is itself, a numbers.Real
    if isinstance(x, Decimal):
        return math.nan if x.is_nan() else float(x)  # float() refuses a signalling NaN
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        try:
            with warnings.catch_warnings():  # numpy: "overflow encountered in cast"
                warnings.simplefilter("ignore", RuntimeWarning)
                return float(x)
        except OverflowError:
            try:
                return math.inf if x > 0 else -math.inf
            except Exception:  # noqa: BLE001 - a Real that cannot even be compared
                return None
        except Exception:  # noqa: BLE001 - a Real whose float() fails is no number
            return None
    return None


def _one_element(x: Any) -> bool:
    """Whether ``x`` is an array or tensor holding exactly one value (``item()`` reads it)."""
    ndim = getattr(x, "ndim", None)
    if type(ndim) is not int or not callable(getattr(x, "item", None)):
        return False
    if ndim == 0:
        return True
    size = getattr(x, "size", None)  # numpy: an int; torch: a method (numel() counts)
    if callable(size):
        numel = getattr(x, "numel", None)
        size = numel() if callable(numel) else None
    return size == 1


def _shape(x: Any) -> str | None:
    """``x``'s shape if it is an array or tensor of several values (not one number)."""
    shape = getattr(x, "shape", None)
    if type(getattr(x, "ndim", None)) is not int or shape is None or _one_element(x):
        return None
    try:
        return str(tuple(int(n) for n in shape))
    except Exception:  # noqa: BLE001 - something that only looks like an array
        return None


def _int(x: int) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def whole_number(x: Any, limit: int = MAX_ITERATION) -> int | None:
    """``x`` as an ``int`` from 0 to ``limit`` (exclusive) if it is a whole number of any
    numeric type (``3``, ``3.0``, ``numpy.int64(3)``, a torch scalar tensor), else None: the
    one reading of an iteration (``clean_result``, ``LoopMonitor.report``)."""
    if type(x) is int:
        return x if 0 <= x < limit else None
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        try:
            value = int(x)
        except (TypeError, ValueError, OverflowError):
            return None
        return value if 0 <= value < limit else None
    v = number(x)
    if v is None or not math.isfinite(v) or v != int(v) or not 0 <= v < limit:
        return None
    return int(v)


_number = number


def text_ok(name: Any) -> bool:
    """Whether ``name`` is a string every store and file can hold (valid Unicode: no lone
    surrogates)."""
    if type(name) is not str:
        return False
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(x: Any) -> str:
    """``x`` as a refusal or notice quotes it: its ``repr`` on one line (an array's spans
    several), at most 60 characters; never raises."""
    try:
        text = " ".join(repr(x).split())
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(x).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


_shown = shown


def visible(name: str) -> str:
    """``name`` as a notice shows it: on one line, control characters as escapes."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)


def _clean_signals(block: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """``{name: float}`` of a mapping of signals; what is not one is dropped and said."""
    if not isinstance(block, Mapping):
        problems.append(f"{where}: expected a mapping of signals, got {_shown(block)}; ignored")
        return {}
    out: dict[str, Any] = {}
    for key, value in block.items():
        if not text_ok(key) or "/" in key:
            problems.append(f"{where}: key {_shown(key)} is not a name (text without '/'); "
                            "ignored")
            continue
        kind = type(value)
        if kind is float:
            out[key] = value
        elif (v := number(value)) is not None:
            out[key] = v
        elif value is not None:
            problems.append(f"{where}/{visible(key)}: {_shown(value)} is not a number; ignored")
    return out


def clean_health(health: Any, problems: list[str]) -> dict[str, Any] | None:
    """A ``health`` block as ``HealthMonitor.collect()`` makes it (``layers``: layer ->
    signal -> number, ``model``: signal -> number, other numbers), every number a float;
    anything else is dropped and said in ``problems``. ``None`` if nothing is left."""
    if not isinstance(health, Mapping):
        problems.append(f"health: expected the block of HealthMonitor.collect() (a mapping), "
                        f"got {_shown(health)}; ignored")
        return None
    out: dict[str, Any] = {}
    for key, value in health.items():
        if key == "layers":
            if not isinstance(value, Mapping):
                problems.append(f"health/layers: expected a mapping of layers, got "
                                f"{_shown(value)}; ignored")
                continue
            layers = {}
            for layer, signals in value.items():
                if not text_ok(layer) or "/" in layer:
                    problems.append(f"health/layers: layer {_shown(layer)} is not a name "
                                    "(text without '/'); ignored")
                    continue
                layers[layer] = _clean_signals(signals, f"health/layers/{visible(layer)}",
                                               problems)
            out["layers"] = layers
        elif key == "model":
            out["model"] = _clean_signals(value, "health/model", problems)
        elif not text_ok(key) or "/" in key:
            problems.append(f"health: key {_shown(key)} is not a name; ignored")
        elif (v := number(value)) is not None:
            out[key] = v
    return out


# A number formatted as text ("0.312", f"{loss:.3f}"): said in a notice, since no rule reads it.
_NUMERIC_TEXT = re.compile(
    r"\s*[-+]?(\d+\.?\d*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|nan|inf(inity)?)\s*\Z", re.IGNORECASE)
_CLEAN_KEYS: set[str] = set()  # plain keys already seen to be names (keys repeat)
_SPECIAL = {"health", "training_iteration", "time_total_s"}


def _health_key(key: str) -> bool:
    """Whether a flattened ``health/...`` key has the shape Tune gives the block's numbers."""
    parts = key.split("/")
    if len(parts) == 4:
        return parts[1] == "layers" and all(parts[2:])
    if len(parts) == 3:
        return parts[1] == "model" and bool(parts[2])
    return len(parts) == 2 and parts[1] not in ("", "layers", "model")


def clean_result(result: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``result`` as every reader expects it, and what was wrong with it (one sentence each).

    Keys are text (others dropped); every numeric value is a ``float`` (``number``; plain
    ``int``\\s in range stay), ``training_iteration`` a whole number from 0 to 2**53 and
    ``time_total_s`` a finite number (else dropped), the ``health`` block in its shape
    (``clean_health``, nested or as Tune flattens it). The usual result, plain floats under
    text keys, is returned as it is, without a copy.
    """
    problems: list[str] = []
    out: dict[str, Any] | None = None
    for key, value in result.items():
        kind = type(value)
        if kind is float and key in _CLEAN_KEYS:
            continue
        fixed: Any = value
        drop = False
        if not text_ok(key):
            problems.append(f"key {_shown(key)} is not a name (valid text); its value is "
                            "ignored")
            drop = True
        elif key == "health":
            fixed = clean_health(value, problems)
            drop = fixed is None
        elif key == "training_iteration":
            it = whole_number(value)
            if it is None:
                problems.append(f"training_iteration: expected a whole number from 0 to 2**53, "
                                f"got {_shown(value)}; ignored")
                drop = True
            elif kind is not int:
                fixed = it
        elif key == "time_total_s":
            t = number(value)
            if t is None or not math.isfinite(t):
                problems.append(f"time_total_s: expected a finite number of seconds, got "
                                f"{_shown(value)}; ignored")
                drop = True
            elif kind is not float:
                fixed = t
        elif key.startswith("health/"):
            v = number(value)
            if not _health_key(key) or v is None:
                problems.append(f"{visible(key)}: {_shown(value)} is not a signal of the health "
                                "block (a number under health/layers/LAYER/SIGNAL or "
                                "health/model/SIGNAL); ignored")
                drop = True
            elif kind is not float:
                fixed = v
        elif kind is int:
            if not -2 ** 1023 < value < 2 ** 1023:
                fixed = number(value)
        elif kind is not float and kind is not str and (v := number(value)) is not None:
            fixed = v
        elif (shape := _shape(value)) is not None:  # kept (the user's), but no signal
            problems.append(f"{visible(key)}: an array of shape {shape} is not one number; "
                            "the rules do not read it")
        elif kind is str and key not in BOOKKEEPING and _NUMERIC_TEXT.match(value):
            problems.append(f"{visible(key)}: {_shown(value)} is text, not a number (report "
                            "float(...)); the rules do not read it")
            continue  # kept (the user's); notices say it once
        if fixed is value and not drop:
            if kind is float and key not in _SPECIAL and len(_CLEAN_KEYS) < 100_000:
                _CLEAN_KEYS.add(key)
            continue
        if out is None:
            out = dict(result)
        if drop:
            del out[key]
        else:
            out[key] = fixed
    return (out if out is not None else result), problems  # type: ignore[return-value]


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
        if type(value) is not float and (value := number(value)) is None:
            continue
        if type(key) is not str:
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
        nested = clean_health(nested, []) or {}
        layers = nested.get("layers") or {}
        model = nested.get("model") or {}
    roles = {role: metrics[key] for role, key in vocabulary.keys().items() if key in metrics}
    iteration = number(result.get("training_iteration"))
    time_s = number(result.get("time_total_s"))
    role = result.get("role")
    return Observation(
        iteration=int(iteration) if iteration is not None and math.isfinite(iteration)
        else default_iteration,
        time_s=time_s if time_s is not None and math.isfinite(time_s) else 0.0,
        layers=layers, model=model, metrics=metrics, roles=roles,
        role=str(role) if isinstance(role, str) and role else vocabulary.role)
