"""Grafana dashboards (the generated JSON, the provisioning files) and Prometheus alerting
rules, shipped as package data.

``json_dir()``, ``provisioning_dir()`` and ``alert_rules_file()`` find them through
``importlib.resources``, so they work the same from this checkout and from an installed wheel.
Regenerating the JSON (``make dashboards``, ``dashboards/build.py``) needs the ``dashboards``
extra (grafana-foundation-sdk); reading and pushing it does not.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _resource_dir(name: str) -> Path:
    path = Path(str(files(__name__) / name))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the dashboards package has no {name}/ directory "
                                "(an install without its package data?)")
    return path


def json_dir() -> Path:
    """The directory of the generated dashboard JSON files (one per dashboard)."""
    return _resource_dir("json")


def provisioning_dir() -> Path:
    """Grafana provisioning files: ``datasources/`` and ``dashboards/`` (a file provider)."""
    return _resource_dir("provisioning")


def dashboard_files() -> list[Path]:
    """Every dashboard JSON file, sorted; an error naming the directory when there is none."""
    found = sorted(json_dir().glob("*.json"))
    if not found:
        raise FileNotFoundError(f"{json_dir()}: no dashboard JSON files (expected *.json; "
                                "`make dashboards` generates them)")
    return found


def alert_rules_file() -> Path:
    """Prometheus alerting rules over the exporter's metrics (a kill, a rule that cannot see
    its signal, a trial that stopped reporting): ``prometheus/tune-health-alerts.yaml``."""
    path = _resource_dir("prometheus") / "tune-health-alerts.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the dashboards package")
    return path
