"""``make prometheus``: a local Prometheus (Debian package) that finds every experiment.

It writes ``runs/prometheus/prometheus.yml`` with a file_sd job over ``runs/file_sd/*.json``
(the files each run's exporter writes) and the shipped alerting rules
(``dashboards/prometheus/tune-health-alerts.yaml``), sends alerts to an Alertmanager when one
is named (``--alertmanager HOST:PORT`` or ``ALERTMANAGER_ADDRESS``; ``make alertmanager``
starts one), and starts ``prometheus`` on 127.0.0.1 in the foreground, its data in
``runs/prometheus/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboards import alert_rules_file
from monitor.durability import write_atomic
from monitor.paths import runs_dir


def config_text(sd_dir: Path, scrape_interval: str = "5s",
                rule_files: Sequence[Path] | None = None,
                alertmanagers: Sequence[str] = ()) -> str:
    """prometheus.yml: the file_sd job, the alerting rules (default: the shipped ones) and the
    Alertmanagers (``host:port``) to send alerts to."""
    rules = [alert_rules_file()] if rule_files is None else list(rule_files)
    text = (f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: "
            f"{scrape_interval}\nscrape_configs:\n  - job_name: tune_health\n"
            f"    file_sd_configs:\n      - files: ['{sd_dir}/*.json']\n"
            f"        refresh_interval: {scrape_interval}\n")
    if rules:
        text += "rule_files:\n" + "".join(f"  - {json.dumps(str(p))}\n" for p in rules)
    if alertmanagers:
        text += ("alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: "
                 f"{json.dumps(list(alertmanagers))}\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", type=Path, default=runs_dir(),
                        help="where runs are (default: $MONITOR_RUNS_DIR or ./runs)")
    parser.add_argument("--host", default=os.environ.get("PROMETHEUS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PROMETHEUS_PORT", 9090)))
    parser.add_argument("--alertmanager", default=os.environ.get("ALERTMANAGER_ADDRESS", ""),
                        help="host:port of an Alertmanager to send alerts to (default: "
                             "$ALERTMANAGER_ADDRESS; none: alerts show in Prometheus only)")
    parser.add_argument("--print-config", action="store_true")
    args = parser.parse_args(argv)
    sd_dir = (args.storage / "file_sd").resolve()
    home = (args.storage / "prometheus").resolve()
    managers = [args.alertmanager] if args.alertmanager else []
    text = config_text(sd_dir, alertmanagers=managers)
    if args.print_config:
        print(text, end="")
        return 0
    binary = shutil.which("prometheus")
    if binary is None:
        print("error: prometheus is not installed (Debian: apt-get install prometheus)",
              file=sys.stderr)
        return 2
    sd_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    write_atomic(home / "prometheus.yml", text)
    sent = f", alerts to {args.alertmanager}" if managers else ""
    print(f"Prometheus on http://{args.host}:{args.port}, discovering runs in {sd_dir}{sent}",
          flush=True)
    os.execv(binary, [binary, f"--config.file={home / 'prometheus.yml'}",
                      f"--storage.tsdb.path={home / 'data'}",
                      f"--web.listen-address={args.host}:{args.port}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
