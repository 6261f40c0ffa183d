"""The exporter's pre-rendered exposition and its server: same text as prometheus_client,
gzip, stale series, bad host/port settings, wildcard and IPv6 binds, file_sd lifecycle."""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.serving.exporter import (
    Exporter,
    ExporterError,
    HealthCollector,
    SignalSnapshot,
    parse_port,
)

SIGNALS = ("dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std",
           "activation_mean", "nonfinite_count")


def result(i: int, layers: int = 5) -> dict:
    return {"role": "master", "training_iteration": i, "loss_g": 1.0 / (i + 1), "loss": 2.0,
            "loss_d": math.inf, "val_logmel": -math.inf, "master_val_x": 1e22,
            "grad_norm": 12345678.9, "rtf": 1e-7, "n_parameters": 3, "pid": 1234,
            "health": {"layers": {f"blocks.{k}.act": {s: 0.1 * k + i for s in SIGNALS}
                                  for k in range(layers)},
                       "model": {"power_ratio_db": math.nan, "power_loss": 2.0}}}


def reference(snapshot: SignalSnapshot) -> str:
    registry = CollectorRegistry()
    registry.register(HealthCollector(snapshot))
    return generate_latest(registry).decode()


def test_fast_text_equals_prometheus_client_rendering():
    snap = SignalSnapshot()
    snap.declare("e", [("r1", "f1")], [("w", "quiet")])
    for i in range(6):
        snap.update("e", f"t{i}", result(i))
    snap.update("e", 't"odd\\name\n', {**result(9), "role": "stu\"dent"})
    snap.update("e", "t2", result(20))  # an update keeps the trial's place, counts 2 reports
    snap.count_kill("e", "r1", "f1")
    text = snap.exposition().decode()
    assert text == reference(snap)
    assert 'tune_health_reports_total{experiment="e",role="master",trial="t2"} 2.0' in text
    assert 'trial="t\\"odd\\\\name\\n"' in text
    assert "pid" not in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_many_trials_pass_promtool():
    snap = SignalSnapshot()
    snap.declare("e", [("r1", "f1")], [])
    for i in range(40):
        snap.update("e", f"t{i}", result(i, layers=50))
    proc = subprocess.run(["promtool", "check", "metrics"], input=snap.exposition().decode(),
                          text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_body_is_cached_until_a_change():
    snap = SignalSnapshot()
    snap.update("e", "t1", result(1))
    first = snap.exposition()
    assert snap.exposition() is first
    assert gzip.decompress(snap.exposition(gzipped=True)) == first
    snap.count_warning("e", "w", "quiet")
    assert snap.exposition() != first


def test_ended_trials_expire_in_end_order_and_a_resumed_trial_stays():
    snap = SignalSnapshot(retain_s=0.2)
    for t in ("a", "b", "c"):
        snap.update("e", t, result(1))
    snap.end("a")
    snap.end("b")
    snap.update("e", "b", result(2))  # reported again (a restored trial): not stale any more
    time.sleep(0.3)
    text = snap.exposition().decode()
    assert 'trial="a"' not in text and 'trial="b"' in text and 'trial="c"' in text
    assert [t.trial for t in snap.trials()] == ["b", "c"]


def get(url: str, gzipped: bool) -> tuple[bytes, str | None]:
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.read(), r.headers.get("Content-Encoding")


def test_server_gzips_when_asked():
    exporter = Exporter("e", "e_gzip", port=0)
    exporter.start()
    try:
        exporter.snapshot.update("e", "t1", result(1, layers=50))
        plain, enc = get(exporter.url, gzipped=False)
        packed, enc_gz = get(exporter.url, gzipped=True)
        assert enc is None and enc_gz == "gzip"
        assert gzip.decompress(packed) == plain and len(packed) < len(plain) / 4
        assert exporter.snapshot.scraped is not None
    finally:
        exporter.stop(final_scrape_timeout_s=0)


@pytest.mark.parametrize("value", ["abc", "99999", "-1", "8080.5", ""])
def test_bad_port_setting_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("MONITOR_EXPORTER_PORT", value)
    with pytest.raises(ExporterError, match="MONITOR_EXPORTER_PORT=.*expected a port number"
                                            " from 0 to 65535") as info:
        Exporter("e", "r")
    assert "\n" not in str(info.value)
    assert parse_port(" 8080 ") == 8080


def test_port_in_use_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ExporterError, match=f"127.0.0.1:{port}: .*MONITOR_EXPORTER_PORT"):
            Exporter("e", "r", port=str(port)).start()
        assert Exporter.for_run("r") is None


def test_wildcard_bind_warns_and_announces_a_reachable_target(tmp_path, caplog):
    exporter = Exporter("e", "e_any", host="0.0.0.0", sd_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="monitor.serving.exporter"):
        port = exporter.start()
    try:
        assert "every interface" in caplog.text
        [entry] = json.loads((tmp_path / "e_any.json").read_text())
        host = entry["targets"][0].rsplit(":", 1)[0]
        assert entry["targets"] == [f"{host}:{port}"] and host != "0.0.0.0"
        assert exporter.url == f"http://{host}:{port}/metrics"
        exporter.snapshot.update("e", "t1", result(1))
        body, _ = get(exporter.url, gzipped=False)  # the announced target is reachable
        assert b"tune_health_dead_ratio" in body
    finally:
        exporter.stop(final_scrape_timeout_s=0)
    assert not (tmp_path / "e_any.json").exists()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_host_gives_a_valid_url_and_target(tmp_path):
    exporter = Exporter("e", "e_v6", host="::1", sd_dir=tmp_path)
    port = exporter.start()
    try:
        assert exporter.url == f"http://[::1]:{port}/metrics"
        assert json.loads((tmp_path / "e_v6.json").read_text())[0]["targets"] == \
            [f"[::1]:{port}"]
        exporter.snapshot.update("e", "t1", result(1))
        body, _ = get(exporter.url, gzipped=False)
        assert b"tune_health_dead_ratio" in body
    finally:
        exporter.stop(final_scrape_timeout_s=0)
    assert not (tmp_path / "e_v6.json").exists()
