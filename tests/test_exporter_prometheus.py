"""A real Prometheus finds the exporter through file_sd and scrapes it (gzip, as it asks):
many trials of 50 layers, the kill counter, and the series of an ended trial going away."""

from __future__ import annotations

import shutil
import time

import pytest

from monitor.serving.exporter import Exporter
from tests.prometheus_server import PrometheusServer

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="prometheus is not installed")
SIGNALS = ("dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std",
           "activation_mean", "nonfinite_count")


def result(i: int) -> dict:
    return {"role": "master", "training_iteration": 1, "loss_g": 1.0, "val_logmel": 2.0,
            "health": {"layers": {f"blocks.{k}.act": {s: 0.01 * k + i for s in SIGNALS}
                                  for k in range(50)}, "model": {"power_ratio_db": -3.0}}}


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_real_prometheus_scrapes_many_trials(tmp_path):
    exporter = Exporter("scale", "scale_run", sd_dir=tmp_path / "file_sd", retain_s=1.0)
    exporter.start()
    server = PrometheusServer(tmp_path / "prom", tmp_path / "file_sd")
    (tmp_path / "prom").mkdir()
    server.start()
    try:
        exporter.snapshot.declare("scale", [("dead_relu_collapse", "dead_relu_collapse")], [])
        for i in range(20):
            exporter.snapshot.update("scale", f"t{i:02d}", result(i))
        exporter.snapshot.count_kill("scale", "dead_relu_collapse", "dead_relu_collapse")

        def layers_seen():
            data = server.api("query", query="count(tune_health_dead_ratio)")
            return data["result"] and int(float(data["result"][0]["value"][1])) == 20 * 50

        wait_for(layers_seen)
        kills = server.api("query", query="tune_health_kills_total")["result"]
        assert [(k["metric"]["rule"], k["value"][1]) for k in kills] == \
            [("dead_relu_collapse", "1")]
        up = server.api("query", query='up{job="tune_health"}')["result"]
        assert [u["metric"]["monitor_run"] for u in up] == ["scale_run"]
        exporter.snapshot.end("t00")

        def t00_gone():
            data = server.api("query", query='count(tune_health_dead_ratio{trial="t00"})')
            return not data["result"]

        wait_for(t00_gone)
    finally:
        server.stop()
        exporter.stop(final_scrape_timeout_s=0)
    assert not list((tmp_path / "file_sd").glob("*.json"))
