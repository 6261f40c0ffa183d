"""Safe YAML loading that remembers the line of every key, for errors that name file and line.

Files come from users, so everything that would fail later (or hang, or exhaust memory) is
refused here with the file and line: anything but a regular file (a FIFO, a directory, a
device), files over ``MAX_BYTES``, text that is not UTF-8, nesting deeper than ``MAX_DEPTH``,
aliases that expand to more than ``MAX_ALIAS_NODES`` nodes ("billion laughs"), recursive aliases,
and
numbers longer than ``MAX_NUMBER_CHARS``. The limits are checked on the YAML *events* (an
iterative pass, no expansion), before any node graph or Python object is built.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB: a rule or experiment file is a few KiB
MAX_DEPTH = 64  # nested mappings and sequences
MAX_ALIAS_NODES = 10_000  # nodes that aliases add to the document once expanded
MAX_NUMBER_CHARS = 64  # characters of one number (Python refuses ints over 4,300 digits)

NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class ConfigError(ValueError):
    """A problem in a user's file: says which file, which line, and what was expected."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        message = " ".join(str(message).split())  # always one line
        self.path, self.line, self.message = str(path), line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


class LineLoader(yaml.SafeLoader):
    """SafeLoader that records the (1-based) line of each mapping key by its key path."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text(path: str | Path, what: str = "a YAML file") -> str:
    """The UTF-8 text of ``path``; raise ``ConfigError`` for anything but a small regular file.

    The file is checked with ``os.stat`` before it is opened and opened without blocking, so
    a FIFO or a device is refused at once instead of hanging or reading forever.
    """
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, None, f"is {_kind(st.st_mode)}; expected {what}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())  # the file actually opened (no swap since the stat)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(path, None, f"is {_kind(st.st_mode)}; expected {what}")
            if st.st_size > MAX_BYTES:
                raise ConfigError(path, None, f"is {st.st_size} bytes; expected {what} of at "
                                  f"most {MAX_BYTES} bytes")
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the file ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(path, None, f"is over {MAX_BYTES} bytes; expected {what} of at most "
                          f"{MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError(path, line, f"is not UTF-8 text (byte 0x{data[exc.start]:02X} at "
                          f"column {column}); expected {what} saved as UTF-8") from None


def check_limits(text: str, path: str | Path) -> None:
    """Refuse deep nesting, alias bombs, recursive aliases and huge numbers, from the events.

    Sizes and depths are counted with every alias expanded (an alias counts the nodes of its
    anchor), so a few hundred bytes that would expand to millions of nodes are refused in
    microseconds, without building them.
    """
    loader = LineLoader(text)
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, nesting levels)
    stack: list[list[Any]] = []  # open collections: [anchor, nodes so far, deepest child]
    added = 0  # nodes the aliases add, expanded
    try:
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                stack.append([event.anchor, 1, 0])
                _check_depth(len(stack), path, line)
                continue
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, size, deepest = stack.pop()
                levels = deepest + 1
                if anchor is not None:
                    anchors[anchor] = (size, levels)
            elif isinstance(event, yaml.ScalarEvent):
                size, levels = 1, 0
                _check_number(loader, event, path, line)
                if event.anchor is not None:
                    anchors[event.anchor] = (1, 0)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    recursive = any(entry[0] == event.anchor for entry in stack)
                    problem = ("refers to itself (a recursive alias)" if recursive
                               else "is not defined before")
                    raise ConfigError(path, line, f"alias *{event.anchor} {problem}; expected "
                                      "an alias of an anchor defined earlier")
                size, levels = anchors[event.anchor]
                _check_depth(len(stack) + levels, path, line)
                added += size
                if added > MAX_ALIAS_NODES:
                    raise ConfigError(path, line, f"aliases expand to more than "
                                      f"{MAX_ALIAS_NODES} nodes (aliases of aliases); expected "
                                      f"at most {MAX_ALIAS_NODES}")
            else:
                continue
            if stack:
                stack[-1][1] += size
                stack[-1][2] = max(stack[-1][2], levels)
    finally:
        loader.dispose()


def _check_depth(levels: int, path: str | Path, line: int) -> None:
    if levels > MAX_DEPTH:
        raise ConfigError(path, line, f"nested more than {MAX_DEPTH} levels deep (aliases "
                          f"expanded); expected at most {MAX_DEPTH} levels of mappings and lists")


def _check_number(loader: yaml.SafeLoader, event: yaml.ScalarEvent, path: str | Path,
                  line: int) -> None:
    if len(event.value) <= MAX_NUMBER_CHARS:
        return
    if event.tag in NUMBER_TAGS:
        tag = event.tag
    elif event.tag is None and event.implicit[0]:
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    else:
        return
    if tag in NUMBER_TAGS:
        raise ConfigError(path, line, f"a number of {len(event.value)} characters; expected "
                          f"at most {MAX_NUMBER_CHARS}")


def _yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """Line and one-line message of a YAML error."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[:exc.position].count("\n") + 1
        return line, f"not valid YAML: unacceptable character #x{exc.character:04x}" \
            if isinstance(exc.character, int) else f"not valid YAML: {exc.reason}"
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark else None
    return line, f"not valid YAML: {getattr(exc, 'problem', None) or exc}"


def load_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Load ``path`` with the safe loader; return the data and ``{key_path: line}``.

    A key path is the tuple of keys and list indexes leading to a value, e.g.
    ``("groups", 0, "rules", 2, "for")``. Raises ``ConfigError`` (file, line, what was
    expected) for any problem, never another exception.
    """
    path = Path(path)
    return load_yaml_text(read_text(path), path)


def load_yaml_text(text: str, path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """``load_yaml`` of ``text`` already read (messages name ``path``), with the same limits."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(path, None, f"is over {MAX_BYTES} bytes; expected a YAML file of at "
                          f"most {MAX_BYTES} bytes")
    try:
        check_limits(text, path)
        loader = LineLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        line, message = _yaml_error(exc, text)
        raise ConfigError(path, line, message) from None
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(path, None, f"not valid YAML: {exc}") from None
    lines: dict[tuple, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def _walk(node: yaml.Node, prefix: tuple, lines: dict[tuple, int]) -> None:
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            path = (*prefix, key)
            lines[path] = key_node.start_mark.line + 1
            _walk(value_node, path, lines)
            lines[path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*prefix, i), lines)


def _scalar(node: yaml.Node) -> Any:
    """A mapping key as safe_load would give it (ints stay ints, strings stay strings)."""
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int"):
        try:
            return int(node.value)
        except ValueError:
            return node.value
    return node.value


def line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    """Line of ``path`` or of its nearest recorded ancestor."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())
