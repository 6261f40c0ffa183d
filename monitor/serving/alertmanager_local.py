"""``make alertmanager``: a local Alertmanager (Debian ``prometheus-alertmanager``) that routes
every tune_health alert to one webhook.

The webhook URL comes from ``ALERT_WEBHOOK_URL`` (or ``--webhook``); it is written only to
``runs/alertmanager/alertmanager.yml`` (mode 0600) and printed with its secrets hidden. The
server listens on 127.0.0.1:9093 (``ALERTMANAGER_PORT``), with clustering off; start
Prometheus with ``ALERTMANAGER_ADDRESS=127.0.0.1:9093 make prometheus``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from monitor.durability import write_atomic
from monitor.paths import runs_dir
from monitor.redaction import redact

BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's


def config_text(webhook_url: str, group_wait: str = "10s", group_interval: str = "1m",
                repeat_interval: str = "4h") -> str:
    """alertmanager.yml: one route, grouped per alert, experiment and trial, to the webhook."""
    parts = urlsplit(webhook_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"ALERT_WEBHOOK_URL={redact(webhook_url)!r}: expected an http:// or "
                         "https:// URL")
    return ("route:\n  receiver: webhook\n  group_by: [alertname, experiment, trial]\n"
            f"  group_wait: {group_wait}\n  group_interval: {group_interval}\n"
            f"  repeat_interval: {repeat_interval}\nreceivers:\n  - name: webhook\n"
            f"    webhook_configs:\n      - url: {json.dumps(webhook_url)}\n"
            "        send_resolved: true\n")


def binary() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


def command(config: Path, storage: Path, host: str, port: int) -> list[str]:
    """The Alertmanager command line (clustering off: nothing listens beyond ``host``)."""
    exe = binary()
    if exe is None:
        raise FileNotFoundError("Alertmanager is not installed (Debian: apt-get install "
                                "prometheus-alertmanager)")
    return [exe, f"--config.file={config}", f"--storage.path={storage}",
            f"--web.listen-address={host}:{port}", "--cluster.listen-address="]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhook", default=os.environ.get("ALERT_WEBHOOK_URL", ""),
                        help="where alerts go (default: $ALERT_WEBHOOK_URL)")
    parser.add_argument("--storage", type=Path, default=runs_dir(),
                        help="where runs are (default: $MONITOR_RUNS_DIR or ./runs)")
    parser.add_argument("--host", default=os.environ.get("ALERTMANAGER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("ALERTMANAGER_PORT", 9093)))
    args = parser.parse_args(argv)
    if not args.webhook:
        print("error: ALERT_WEBHOOK_URL: expected the URL alerts are posted to (or --webhook)",
              file=sys.stderr)
        return 2
    try:
        text = config_text(args.webhook)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    home = (args.storage / "alertmanager").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "alertmanager.yml"
    write_atomic(config, text, mode=0o600)  # it holds the webhook URL, which may carry a token
    try:
        cmd = command(config, home / "data", args.host, args.port)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Alertmanager on http://{args.host}:{args.port}, alerts to {redact(args.webhook)}",
          flush=True)
    os.execv(cmd[0], cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
