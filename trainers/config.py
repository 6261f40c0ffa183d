"""Typed merging of configuration overrides onto embedded defaults."""

from __future__ import annotations

import copy
from typing import Any

# Values that type-check but would make every trial fail after Ray has started.
POSITIVE_INTEGERS = {"width", "depth", "batch_size", "segment", "steps_per_iteration",
                     "max_iterations", "checkpoint_every", "d_steps", "val_pairs", "monitor_every",
                     "n_speakers", "n_utterances"}
POSITIVE_NUMBERS = {"g_lr", "d_lr", "lr", "seconds", "init_gain"}
NON_NEGATIVE = {"lr_warmup_iterations", "adv_weight", "power_weight", "spectral_weight",
                "wave_weight", "fm_weight", "grad_clip", "n_validation", "seed", "target_speaker"}
CHOICES = {"optimizer": ("adam", "sgd"),
           "activation": ("relu", "leaky_relu", "relu6", "prelu"),
           "preset": ("low", "medium", "high")}
LIMITS = {"width": 4096, "depth": 64, "batch_size": 4096, "segment": 1 << 20,
          "steps_per_iteration": 100_000, "max_iterations": 1_000_000}


def check_value(key: str, value: Any, path: str) -> None:
    """Refuse a value no trial could run with (``ValueError`` naming ``path``)."""
    if value is None or isinstance(value, (bool, dict)):
        return
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{path}: expected one of {list(CHOICES[key])}, got {value!r}")
    if key in POSITIVE_INTEGERS and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{path}: expected a positive integer, got {value!r}")
    if key in POSITIVE_NUMBERS and not (isinstance(value, (int, float)) and value > 0
                                        and value < float("inf")):
        raise ValueError(f"{path}: expected a positive finite number, got {value!r}")
    if key in NON_NEGATIVE and not (isinstance(value, (int, float)) and value >= 0
                                    and value < float("inf")):
        raise ValueError(f"{path}: expected a finite number >= 0, got {value!r}")
    if key in LIMITS and isinstance(value, int) and value > LIMITS[key]:
        raise ValueError(f"{path}: expected at most {LIMITS[key]}, got {value!r}")


class ConfigKeyError(ValueError):
    """A bad key or value; ``keys`` is the path of keys below the merged mapping."""

    def __init__(self, message: str, keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.keys = keys


def merge_config(defaults: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Deep-merge ``overrides`` onto a copy of ``defaults``.

    Raises ``ValueError`` naming ``where`` and the key for unknown keys and for values whose
    type does not match the default's (ints are accepted for floats; ``None`` is accepted where
    the default is ``None`` or a number, meaning "off").
    """
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        try:
            merged[key] = _merge_value(defaults, key, value, where)
        except ConfigKeyError as exc:
            raise ConfigKeyError(str(exc), (key, *exc.keys)) from None
        except ValueError as exc:
            raise ConfigKeyError(str(exc), (key,)) from None
    return merged


def _merge_value(defaults: dict[str, Any], key: str, value: Any, where: str) -> Any:
    if key not in defaults:
        raise ValueError(f"{where}: unknown key {key!r}; expected one of {sorted(defaults)}")
    default, path = defaults[key], f"{where}.{key}"
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return merge_config(default, value, path)
    if default is None or value is None:
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number or null, got {value!r}")
        check_value(key, value, path)
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        if isinstance(default, int) and not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        check_value(key, value, path)
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{path}: expected a string, got {value!r}")
    check_value(key, value, path)
    return value
