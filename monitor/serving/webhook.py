"""A kill posted straight from the driver to a webhook, for teams without Alertmanager.

Set ``MONITOR_ALERT_WEBHOOK`` to an http(s) URL: every kill by a rule (not the wrapped
scheduler's routine stops) is POSTed, once it is recorded, as JSON: ``text`` (one line, as
Slack and Mattermost incoming webhooks read it) and the fields ``experiment``, ``run``,
``trial``, ``rule``, ``failure``, ``iteration``, ``reason``, ``wall_time``. The URL is read
from the environment at each post, never stored (nothing pickled into Tune's ``tuner.pkl``),
and shown only as its scheme, host and port (webhook URLs carry their token in the path). A post
that fails is logged and never stops the run (2 s timeout).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from monitor.console import plain
from monitor.redaction import redact

log = logging.getLogger(__name__)
ENV = "MONITOR_ALERT_WEBHOOK"


class WebhookError(ValueError):
    """``MONITOR_ALERT_WEBHOOK`` is not a URL a kill can be posted to (one line)."""


def shown(url: str) -> str:
    """``url`` without what may be secret: no credentials, path, query or fragment
    (``monitor.redaction``); never raises."""
    return redact(url, path=False)


def webhook_url() -> str | None:
    """The configured URL, or None; ``WebhookError`` if it is set but not http(s)."""
    url = os.environ.get(ENV, "").strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is no port
    except ValueError:
        ok = False
    if not ok:
        raise WebhookError(f"{ENV}: expected an http:// or https:// URL with a host and a "
                           f"port from 0 to 65535, got {shown(url)}")
    return url


def payload(verdict: dict[str, Any], run: str) -> dict[str, Any]:
    text = (f"{verdict['experiment']}: trial {verdict['trial']} killed by rule "
            f"{verdict['rule']} ({verdict['failure']}) at iteration {verdict['iteration']}: "
            f"{verdict['reason']} (monitor kill-report {run})")
    return {"text": plain(text), "run": run,
            **{k: verdict.get(k) for k in ("experiment", "trial", "rule", "failure",
                                           "iteration", "reason", "wall_time")}}


def post_kill(verdict: dict[str, Any], run: str, timeout: float = 2.0) -> bool:
    """POST the kill to ``MONITOR_ALERT_WEBHOOK`` if set; True if the server took it. Never
    raises: a URL it cannot use or a server that fails is one warning (URL redacted)."""
    try:
        url = webhook_url()
    except WebhookError as exc:
        log.warning("kill of %s not posted: %s", verdict.get("trial"), exc)
        return False
    if url is None:
        return False
    try:
        body = json.dumps(payload(verdict, run), default=str).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return True
    except Exception as exc:  # noqa: BLE001 - never break the run (a port out of range too)
        log.warning("could not post the kill of %s to the webhook %s (%s=...): %s",
                    verdict.get("trial"), shown(url), ENV, _why(exc))
        return False


def _why(exc: Exception) -> str:
    """Why a post failed, in words that cannot hold the URL (``http.client`` quotes a bad
    port, which may be a password, in its message)."""
    code, reason = getattr(exc, "code", None), getattr(exc, "reason", None)
    if isinstance(code, int):
        return f"HTTP {code}"
    if isinstance(reason, OSError):
        return reason.strerror or type(reason).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
