"""Real Prometheus and Alertmanager servers (Debian packages) on free loopback ports, and a
webhook that records what Alertmanager posts, for tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitor.serving import alertmanager_local
from monitor.serving.prometheus_local import config_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _LoopbackServer:
    """A server process on a free loopback port: started with its log in ``workdir``,
    ready when ``/-/ready`` answers, stopped (terminated, then killed) with its log closed."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, command: list[str], timeout: float) -> None:
        log_path = self.workdir / f"{self.name}.log"
        self.log = open(log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(log_path.read_text()) from None
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


class PrometheusServer(_LoopbackServer):
    name = "prometheus"

    def __init__(self, workdir: Path, sd_dir: Path, rule_files: Sequence[Path] | None = None,
                 alertmanagers: Sequence[str] = ()) -> None:
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("prometheus is not installed (Debian package 'prometheus'; "
                               ".ci/run installs it)")
        super().__init__(workdir)
        self.sd_dir = sd_dir
        self.rule_files, self.alertmanagers = rule_files, alertmanagers

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.sd_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        # The configuration `make prometheus` uses, scraping every second for the tests.
        config.write_text(config_text(self.sd_dir, scrape_interval="1s",
                                      rule_files=self.rule_files,
                                      alertmanagers=self.alertmanagers))
        self._run([self.binary, f"--config.file={config}",
                   f"--storage.tsdb.path={self.workdir / 'data'}",
                   f"--web.listen-address=127.0.0.1:{self.port}"], timeout)
        return self

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]


class AlertmanagerServer(_LoopbackServer):
    """``make alertmanager``'s configuration and command line, routing to ``webhook_url`` with
    short waits, on a free loopback port."""

    name = "alertmanager"

    def __init__(self, workdir: Path, webhook_url: str) -> None:
        super().__init__(workdir)
        self.webhook_url = webhook_url

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AlertmanagerServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "alertmanager.yml"
        config.write_text(alertmanager_local.config_text(self.webhook_url, group_wait="0s",
                                                         group_interval="1s"))
        self._run(alertmanager_local.command(config, self.workdir / "data", "127.0.0.1",
                                             self.port), timeout)
        return self


class Webhook:
    """An HTTP server on loopback that keeps every JSON document posted to it, and the alerts
    of Alertmanager's ones (``{"alerts": [{"status", "labels", "annotations", ...}]}``)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.bodies: list[Any] = []  # every JSON document posted
        self.arrived = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with webhook.arrived:
                    webhook.bodies.append(json.loads(body))
                    webhook.alerts += webhook.bodies[-1].get("alerts", [])
                    webhook.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def start(self) -> Webhook:
        self.thread.start()
        return self

    def wait_for(self, wanted: dict[str, str], timeout: float) -> dict[str, Any]:
        """The first firing alert whose labels include ``wanted``; AssertionError after
        ``timeout`` seconds, naming what did arrive."""

        def found() -> dict[str, Any] | None:
            return next((a for a in self.alerts if a["status"] == "firing"
                         and wanted.items() <= a["labels"].items()), None)

        with self.arrived:
            if self.arrived.wait_for(found, timeout):
                return found()
            raise AssertionError(f"no firing alert with labels {wanted} within {timeout} s; "
                                 f"got {[a['labels'] for a in self.alerts]}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
