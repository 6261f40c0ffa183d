"""Safe YAML loading that remembers the line of every key, for errors that name file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A problem in a user's file: says which file, which line, and what was expected."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path, self.line, self.message = str(path), line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


class LineLoader(yaml.SafeLoader):
    """SafeLoader that records the (1-based) line of each mapping key by its key path."""


def load_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Load ``path`` with the safe loader; return the data and ``{key_path: line}``.

    A key path is the tuple of keys and list indexes leading to a value, e.g.
    ``("groups", 0, "rules", 2, "for")``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the file ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(path, line, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple, int] = {}
    if node is None:
        return None, lines
    _walk(node, (), lines)
    return yaml.safe_load(text), lines


def _walk(node: yaml.Node, prefix: tuple, lines: dict[tuple, int]) -> None:
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if key_node.tag else key_node.value
            path = (*prefix, key)
            lines[path] = key_node.start_mark.line + 1
            _walk(value_node, path, lines)
            lines[path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*prefix, i), lines)


def line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    """Line of ``path`` or of its nearest recorded ancestor."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())
