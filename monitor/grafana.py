"""Grafana: push the generated dashboards, and post kills as annotations.

The URL comes from ``--url`` or ``GRAFANA_URL``; the token only from ``GRAFANA_TOKEN`` (it is
never printed or logged). Uses grafana-client, the maintained successor of grafana-api.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class GrafanaError(RuntimeError):
    """A clear, token-free message about what went wrong talking to Grafana."""


def client(url: str, token: str | None, timeout: float = 5.0):
    """A grafana-client API for ``url``; a URL it cannot even parse is a ``GrafanaError``."""
    from grafana_client import GrafanaApi

    if not url:
        raise GrafanaError("no Grafana URL: pass --url or set GRAFANA_URL")
    try:
        return GrafanaApi.from_url(url=url, credential=token or None, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - ValueError for '[::1', and whatever it meets
        raise GrafanaError(f"{redact(url)} is not a usable Grafana URL "
                           f"({type(exc).__name__}); expected e.g. http://localhost:3000"
                           ) from None


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/+")


def redact(url: str) -> str:
    """``url`` with no secret left in it, whatever its form: everything between the scheme
    (``http://``, ``http:/``, or none at all) and the last ``@`` becomes ``***``, and a
    query or fragment becomes ``?***``; never raises (it does not need a valid URL).

    ``https://user:secret@host`` -> ``https://***@host``; ``admin:secret@host:9`` ->
    ``***@host:9``; ``http://u:p@[::1`` -> ``http://***@[::1``.
    """
    text = str(url)
    if "@" in text:
        scheme = _SCHEME.match(text)
        start = scheme.end() if scheme else 0
        text = text[:start] + "***" + text[text.rindex("@"):]
    for mark in "?#":
        if mark in text:
            text = text[:text.index(mark)] + "?***"
    return text


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries anything ``redact`` would hide."""
    return redact(url) != str(url)


def _explain(exc: Exception, url: str) -> GrafanaError:
    if isinstance(exc, GrafanaError):
        return exc
    url = redact(url)
    from grafana_client.client import (
        GrafanaClientError,
        GrafanaServerError,
        GrafanaTimeoutError,
        GrafanaUnauthorizedError,
    )

    if isinstance(exc, GrafanaUnauthorizedError):
        return GrafanaError(f"Grafana at {url} refused the request (401/403): check that "
                            "GRAFANA_TOKEN is set to a service-account token with Editor rights")
    if isinstance(exc, GrafanaTimeoutError):
        return GrafanaError(f"Grafana at {url} did not answer in time")
    if isinstance(exc, GrafanaClientError):
        code = getattr(exc, "status_code", "?")
        return GrafanaError(f"{url} answered {code} to the Grafana API: is this the URL of a "
                            "Grafana server (e.g. http://localhost:3000)?")
    if isinstance(exc, GrafanaServerError):
        return GrafanaError(f"Grafana at {url} failed ({getattr(exc, 'status_code', '?')})")
    return GrafanaError(f"cannot reach Grafana at {url}: {type(exc).__name__}")


def load_dashboards(directory: Path | None = None) -> list[dict[str, Any]]:
    """The dashboard models in ``directory`` (default: the ``dashboards`` package's JSON, found
    through importlib.resources, so an installed wheel has them too). None is an error."""
    if directory is None:
        import dashboards

        try:
            paths = dashboards.dashboard_files()
        except FileNotFoundError as exc:
            raise GrafanaError(str(exc)) from None
    else:
        paths = sorted(Path(directory).glob("*.json"))
        if not paths:
            raise GrafanaError(f"{directory}: no dashboard JSON files (expected *.json)")
    models = []
    for path in paths:
        try:
            models.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise GrafanaError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return models


def push(url: str, token: str | None, dashboards: list[dict[str, Any]] | None = None,
         folder_uid: str | None = None) -> list[dict[str, Any]]:
    """Create or overwrite every dashboard by uid; return Grafana's answers."""
    api = client(url, token)
    answers = []
    for model in dashboards if dashboards is not None else load_dashboards():
        payload: dict[str, Any] = {"dashboard": {**model, "id": None}, "overwrite": True,
                                   "message": "pushed by monitor dashboards push"}
        if folder_uid:
            payload["folderUid"] = folder_uid
        try:
            answers.append(api.dashboard.update_dashboard(payload))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a clear message
            raise _explain(exc, url) from None
    return answers


class KillAnnotator:
    """Posts each kill to Grafana as an annotation tagged for the dashboards.

    Active when ``GRAFANA_URL`` is set. A failure to post is logged and never raised: the run
    must not depend on Grafana.
    """

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 2.0) -> None:
        self.url = url if url is not None else os.environ.get("GRAFANA_URL", "")
        self._token = token if token is not None else os.environ.get("GRAFANA_TOKEN")
        self.timeout = timeout

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def post(self, verdict: dict[str, Any]) -> bool:
        if not self.enabled:
            return False
        try:
            api = client(self.url, self._token, self.timeout)
            api.annotations.add_annotation(
                time_from=int(verdict["wall_time"] * 1000),
                tags=["tune-health", verdict["experiment"], verdict["trial"], verdict["rule"],
                      verdict["failure"]],
                text=verdict["reason"])
            return True
        except Exception as exc:  # noqa: BLE001 - never break the run
            log.warning("could not post the kill of %s to Grafana: %s", verdict["trial"],
                        _explain(exc, self.url))
            return False

    def __getstate__(self) -> dict[str, Any]:
        """Neither the token nor a URL with credentials is pickled (Tune writes this object
        into the run's ``tuner.pkl``): both are read from the environment again on restore."""
        state = self.__dict__.copy()
        state["_token"] = None
        if has_credentials(self.url):
            state["url"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.url is None:
            self.url = os.environ.get("GRAFANA_URL", "")
        self._token = os.environ.get("GRAFANA_TOKEN")
