"""Typed merging of configuration overrides onto embedded defaults."""

from __future__ import annotations

import copy
from typing import Any


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
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{path}: expected a string, got {value!r}")
    return value
