"""A real headless Chromium driven through the DevTools protocol over a pipe (no extra package).

``Browser().open(url)`` loads a page and collects what its console and log report; ``eval``
runs JavaScript in it (awaiting promises); ``screenshot`` writes a PNG of the whole page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((p for name in CHROMIUM if (p := shutil.which(name))), None)


class Browser:
    def __init__(self, timeout: float = 60.0) -> None:
        binary = find_chromium()
        if binary is None:
            raise FileNotFoundError("chromium not found (Debian package chromium)")
        self.timeout = timeout
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        self.profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"chromium-test-{os.getpid()}"
        # the protocol's pipe: the browser reads fd 3 and writes fd 4 (mapped by the shell:
        # no preexec_fn in a process with threads)
        r, w = to_browser_r, from_browser_w
        if w == 3:  # move it out of the way first
            w = os.dup(w)
            os.close(from_browser_w)
            from_browser_w = w
        closes = "".join(f" {fd}<&-" for fd in (r, w) if fd not in (3, 4))
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w}{closes}', binary,
             "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(r, w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []

    def _send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(f"{method}: no answer in {self.timeout} s")

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def open(self, url: str) -> None:
        target = self._send("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self._send("Target.attachToTarget", {
            "targetId": target["targetId"], "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self._send(f"{domain}.enable")
        self._send("Emulation.setDeviceMetricsOverride", {
            "width": 1300, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        self._send("Page.navigate", {"url": url})
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: not loaded in {self.timeout} s")
            self._read()

    def eval(self, expression: str) -> Any:
        result = self._send("Runtime.evaluate", {"expression": expression,
                                                 "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Every error the page reported: console.error, uncaught exceptions, log errors
        (a resource that failed to load, a refused script)."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error",
                                                                                "assert"):
                out.append(" ".join(str(a.get("value", a.get("description")))
                                    for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("exception", {}).get(
                    "description", p["exceptionDetails"].get("text")))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry'].get('source')}: {p['entry']['text']}")
        return out

    def screenshot(self, path: Path) -> Path:
        """The whole page (not only the window) as a PNG."""
        size = self._send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self._send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "clip": clip})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._send("Browser.close", session=False)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
