"""Grafana: push the generated dashboards, and post kills as annotations.

The URL comes from ``--url`` or ``GRAFANA_URL``; the token only from ``GRAFANA_TOKEN`` (it is
never printed or logged). Uses grafana-client, the maintained successor of grafana-api.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from monitor.redaction import has_credentials, redact

log = logging.getLogger(__name__)
__all__ = ["GrafanaError", "KillAnnotator", "client", "has_credentials", "load_dashboards",
           "push", "redact"]


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


def _explain(exc: Exception, url: str) -> GrafanaError:
    if isinstance(exc, GrafanaError):
        return exc
    url = redact(url)
    try:
        from grafana_client.client import (
            GrafanaClientError,
            GrafanaServerError,
            GrafanaTimeoutError,
            GrafanaUnauthorizedError,
        )
    except ImportError:
        return GrafanaError(f"cannot reach Grafana at {url}: {type(exc).__name__}")

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

    Active when ``GRAFANA_URL`` is set. The URL and ``GRAFANA_TOKEN`` are read from the
    environment at each post and never kept (Tune pickles this object into the run's
    ``tuner.pkl``); a ``url`` given explicitly is kept only without credentials. A failure to
    post is logged (redacted) and never raised: the run must not depend on Grafana.
    """

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 2.0) -> None:
        self._url = url  # None: GRAFANA_URL, read when posting
        self._token = token  # None: GRAFANA_TOKEN, read when posting
        self.timeout = timeout

    @property
    def url(self) -> str:
        return self._url if self._url is not None else os.environ.get("GRAFANA_URL", "")

    @property
    def token(self) -> str | None:
        return self._token if self._token is not None else os.environ.get("GRAFANA_TOKEN")

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def post(self, verdict: dict[str, Any]) -> bool:
        url = ""
        try:
            url = self.url
            if not url:
                return False
            api = client(url, self.token, self.timeout)
            api.annotations.add_annotation(
                time_from=int(verdict["wall_time"] * 1000),
                tags=["tune-health", verdict["experiment"], verdict["trial"], verdict["rule"],
                      verdict["failure"]],
                text=verdict["reason"])
            return True
        except Exception as exc:  # noqa: BLE001 - never break the run
            log.warning("could not post the kill of %s to Grafana: %s", verdict.get("trial"),
                        _explain(exc, url))
            return False

    def __getstate__(self) -> dict[str, Any]:
        """No token and no URL with credentials in the pickle: those given explicitly are
        dropped (then read from the environment), those from the environment never kept."""
        state = self.__dict__.copy()
        state["_token"] = None
        if self._url is not None and has_credentials(self._url):
            state["_url"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "url" in state:  # pickled by an earlier version: its URL, if any, came from GRAFANA_URL
            state = {**state, "_url": None}
            state.pop("url")
        self.__dict__.update({"_url": None, "_token": None, "timeout": 2.0, **state})
