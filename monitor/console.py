"""Consoles shared by the commands: tables and progress on stdout, errors on stderr.

Text from users (trial and variant names, rule names and annotations, file paths, messages of
errors that quote them) goes through ``safe`` before rich prints it as markup, or ``plain``
where it is printed as is: brackets stay brackets (``killme[/x]``, ``[red]x``), and control
characters (escape sequences, bells, carriage returns, bidi overrides) are shown as visible
escapes (``\\x1b``) instead of reaching the terminal.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

# emoji=False: a name like ":fire:" is printed as typed, never replaced by an emoji.
console = Console(emoji=False)
# Errors are never wrapped: a path or a "file:line" must stay greppable on one line.
error_console = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)

# C0 and C1 controls (ESC starts every terminal escape sequence), DEL, line and paragraph
# separators, and the bidi controls that reorder what the terminal shows.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(m: re.Match) -> str:
    ch = m.group()
    if ch in NAMED:
        return NAMED[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def plain(text: object) -> str:
    """``text`` with every control character replaced by a visible escape (one line)."""
    return CONTROL.sub(_visible, str(text))


def safe(text: object) -> str:
    """``text`` ready for rich markup: control characters made visible, markup escaped, so
    it prints verbatim."""
    return escape(plain(text))


def print_error(message: str) -> None:
    """Print ``error: message`` on stderr; the message is plain text, never markup (its line
    breaks are kept, every other control character is made visible)."""
    text = "\n".join(plain(line) for line in str(message).split("\n"))
    error_console.print(Text.assemble(("error:", "red"), " ", text))


def print_warning(message: str) -> None:
    """Print ``warning: message`` on stderr, one line, as plain text (``print_error``'s kin)."""
    error_console.print(Text.assemble(("warning:", "yellow"), " ", plain(message)))


def print_wide(out: Console, renderable: object) -> None:
    """Print on a terminal at its width; piped or redirected, at the width the content needs
    (a table is never cut at 80 columns, a line never broken inside a word)."""
    if out.is_terminal:
        out.print(renderable)
        return
    if isinstance(renderable, str):
        out.print(renderable, soft_wrap=True)
        return
    from rich.measure import Measurement

    wide = Measurement.get(out, out.options.update_width(10_000), renderable)
    width = out.width
    out.width = max(wide.maximum, width)
    try:
        out.print(renderable)
    finally:
        out.width = width


ONE_LINE = "_monitor_one_line"  # set on an exception whose message says everything


def _one_line_hook(previous: Any) -> Any:
    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if getattr(value, ONE_LINE, False) and not os.environ.get("MONITOR_TRACEBACK"):
            for line in str(value).splitlines() or [kind.__name__]:
                print_error(line)
            return
        previous(kind, value, tb)

    hook.monitor_one_line = True  # type: ignore[attr-defined]
    return hook


def one_line(exc: BaseException) -> BaseException:
    """Mark ``exc`` (a user's mistake whose message names file, line and what was expected)
    so that, if nothing catches it, the program ends with ``error: <message>`` on stderr (one
    line per problem) and no traceback (``MONITOR_TRACEBACK=1`` shows it). Caught, it is the
    exception it was. Only marked exceptions are shown this way: the hook hands every other
    one to the one it replaced."""
    setattr(exc, ONE_LINE, True)
    if not getattr(sys.excepthook, "monitor_one_line", False):
        sys.excepthook = _one_line_hook(sys.excepthook)
    return exc
