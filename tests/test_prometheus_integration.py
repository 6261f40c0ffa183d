"""A real Prometheus server discovers the exporter by file_sd and scrapes a real Tune run."""

from __future__ import annotations

import time

import pytest

from tests.prometheus_server import PrometheusServer
from trainers import experiment
from trainers import tune as runner

pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus(tmp_path):
    server = PrometheusServer(tmp_path / "prom", tmp_path / "runs" / "file_sd")
    (tmp_path / "prom").mkdir()
    server.start()
    yield server
    server.stop()


def test_prometheus_scrapes_dead_ratio_of_every_trial(ray_session, prometheus, tmp_path):
    started = time.time()
    summary = runner.run(experiment.load("smoke"), storage=tmp_path / "runs", max_iterations=8)
    trial_ids = {t["trial_id"] for t in summary["trials"]}
    assert len(trial_ids) == 2
    series = prometheus.api("series", **{"match[]": "tune_health_dead_ratio",
                                         "start": started - 5, "end": time.time() + 5})
    seen = {s["trial"] for s in series}
    assert seen == trial_ids
    assert {s["experiment"] for s in series} == {"smoke"}
    assert {s["role"] for s in series} == {"master"}
    assert {s["layer"] for s in series} >= {"encoder_act", "blocks.0.act", "blocks.1.act"}
    assert all(s["monitor_run"] == summary["name"] for s in series)
    # The exporter announced itself through file_sd and removed the file at the end.
    assert not list((tmp_path / "runs" / "file_sd").glob("*.json"))
