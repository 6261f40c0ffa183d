"""The one redaction of URLs: every URL the monitor stores, prints, logs or pickles goes
through ``redact`` first (Grafana, the kill webhook, Alertmanager, the exporter's host).

It parses every form a user may give, valid or not, without ``urllib`` (which raises on
``http://u:p@[::1`` and on ports that are not numbers): with or without a scheme,
with ``//``, ``/`` or nothing after it, IPv6 hosts with or without their closing bracket.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/*)")
_WEB = {"http", "https", "ws", "wss"}
_HOST = re.compile(r"^(\[[0-9A-Za-z:.%_-]*\]?|[\w.~%-]*)")


def _visible(text: str) -> str:
    """``text`` on one line: control characters and lone surrogates as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def redact(url: object, *, path: bool = True) -> str:
    """``url`` with nothing secret left in it, on one line; never raises.

    Everything before the last ``@`` (after the scheme) becomes ``***``, a port that is not a
    number ``***`` (``http://admin:PASS`` has no ``@``), a query or fragment ``?***``, and with
    ``path=False`` the path ``/***`` (webhook URLs carry their token there). A scheme is
    ``name:`` followed by a ``/``, or ``http:``/``https:`` without one.

    ``https://user:secret@host`` -> ``https://***@host``; ``admin:secret@host:9`` ->
    ``***@host:9``; ``http:/u:p@h`` -> ``http:/***@h``; ``http://u:p@[::1`` ->
    ``http://***@[::1``.
    """
    text = str(url).strip()
    scheme = ""
    match = _SCHEME.match(text)
    if match and (match.group(2) or match.group(1).lower() in _WEB):
        scheme, text = match.group(0), text[match.end():]
    userinfo = "@" in text
    if userinfo:
        text = text[text.rindex("@") + 1:]
    host = _HOST.match(text).group(0)  # type: ignore[union-attr] - the pattern always matches
    rest = text[len(host):]
    port = ""
    if rest.startswith(":"):
        digits = re.match(r"^:\d*", rest).group(0)  # type: ignore[union-attr]
        end = len(rest)
        for mark in "/?#":
            if mark in rest:
                end = min(end, rest.index(mark))
        port = digits if end == len(digits) else ":***"
        rest = rest[end:]
    elif rest and rest[0] not in "/?#":  # neither port nor path: not a host we can read
        port, rest = "***", ""
    query = ""
    for mark in "?#":
        if mark in rest:
            rest, query = rest[:rest.index(mark)], "?***"
    if rest and not path:
        rest = "/***"
    return _visible(f"{scheme}{'***@' if userinfo else ''}{host}{port}{rest}{query}")


def has_credentials(url: object) -> bool:
    """Whether ``url`` carries anything ``redact`` would hide."""
    return redact(url) != str(url)
