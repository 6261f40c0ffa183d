"""Consoles shared by the commands: tables and progress on stdout, errors on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

console = Console()
# Errors are never wrapped: a path or a "file:line" must stay greppable on one line.
error_console = Console(stderr=True, soft_wrap=True, highlight=False)


def print_error(message: str) -> None:
    """Print ``error: message`` on stderr; the message is plain text, never markup."""
    error_console.print(Text.assemble(("error:", "red"), " ", message))
