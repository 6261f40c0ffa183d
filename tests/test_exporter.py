"""The Prometheus exporter: collector over a snapshot, promtool-clean, series lifecycle."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from heuristics.vocabulary import Vocabulary
from monitor.serving.exporter import Exporter, ExporterError, HealthCollector, SignalSnapshot

VOCAB = Vocabulary(generator_loss="loss_g", discriminator_loss="loss_d", validation="val_logmel",
                   grad_norm="grad_norm", step_time_s="step_time_s", role="master")

RESULT = {
    "role": "master", "training_iteration": 3, "loss_g": 2.5, "loss_d": 0.2, "grad_norm": 4.0,
    "val_logmel": 3.1, "step_time_s": 0.07, "variant": {"name": "x"},
    "health": {"layers": {"blocks.0.act": {"dead_ratio": 0.25, "evergreen_ratio": 0.0,
                                           "healthy_ratio": 0.75, "activation_std": 0.3,
                                           "activation_mean": 0.1, "nonfinite_count": 0.0}},
               "model": {"output_power_db": -3.0, "target_power_db": 0.0, "power_loss": 12.0,
                         "power_ratio_db": -3.0}, "sampled_steps": 20},
}


def scrape(snapshot: SignalSnapshot) -> str:
    """What the exporter serves; checked equal to prometheus_client's rendering."""
    text = snapshot.exposition().decode()
    assert text == reference(snapshot)
    return text


def reference(snapshot: SignalSnapshot) -> str:
    registry = CollectorRegistry()  # a fresh registry in every test
    registry.register(HealthCollector(snapshot))
    return generate_latest(registry).decode()


def test_collector_exposes_signals_with_labels():
    snap = SignalSnapshot(vocabulary=VOCAB)
    snap.update("master_v464", "t1", RESULT)
    text = scrape(snap)
    labels = 'experiment="master_v464",layer="blocks.0.act",role="master",trial="t1"'
    assert f"tune_health_dead_ratio{{{labels}}} 0.25" in text
    assert 'tune_health_power_ratio_db{experiment="master_v464",role="master",trial="t1"} -3.0' \
        in text
    assert ('tune_health_loss{experiment="master_v464",loss="generator",role="master",'
            'trial="t1"} 2.5') in text
    assert 'metric="val_logmel"' in text
    assert 'tune_health_reports_total{experiment="master_v464",role="master",trial="t1"} 1.0' \
        in text


def test_recurrent_saturation_is_exported_for_recurrent_layers_only():
    result = json.loads(json.dumps(RESULT))
    result["health"]["layers"]["rnn"] = {**result["health"]["layers"]["blocks.0.act"],
                                         "saturated_ratio": 0.5}
    snap = SignalSnapshot(vocabulary=VOCAB)
    snap.update("lm", "t1", result)
    text = scrape(snap)
    assert 'tune_health_saturated_ratio{experiment="lm",layer="rnn",role="master",trial="t1"} ' \
        '0.5' in text
    assert 'tune_health_saturated_ratio{experiment="lm",layer="blocks.0.act"' not in text


def test_nan_values_are_exported_as_nan():
    snap = SignalSnapshot(vocabulary=VOCAB)
    snap.update("e", "t1", {**RESULT, "loss_g": float("nan")})
    assert 'loss="generator",role="master",trial="t1"} NaN' in scrape(snap)


def test_series_of_ended_trial_are_removed_after_retention():
    snap = SignalSnapshot(retain_s=0.2, vocabulary=VOCAB)
    snap.update("e", "t1", RESULT)
    snap.update("e", "t2", RESULT)
    snap.end("t1")
    assert 'trial="t1"' in scrape(snap)  # still there: the last values can be scraped
    time.sleep(0.3)
    text = scrape(snap)
    assert 'trial="t1"' not in text
    assert 'trial="t2"' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_exposition_passes_promtool_check_metrics():
    snap = SignalSnapshot(vocabulary=VOCAB)
    snap.update("e", "t1", RESULT)
    snap.count_kill("e", "dead_relu_collapse", "dead_relu_collapse")
    proc = subprocess.run(["promtool", "check", "metrics"], input=scrape(snap), text=True,
                          capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_exporter_serves_on_loopback_and_writes_file_sd(tmp_path):
    exporter = Exporter("e", "e_run1", sd_dir=tmp_path)
    port = exporter.start()
    try:
        exporter.snapshot.update("e", "t1", RESULT)
        body = urllib.request.urlopen(exporter.url, timeout=5).read().decode()
        assert "tune_health_dead_ratio" in body
        assert exporter.host == "127.0.0.1"
        sd = json.loads((tmp_path / "e_run1.json").read_text())
        assert sd == [{"targets": [f"127.0.0.1:{port}"], "labels": {"monitor_run": "e_run1"}}]
    finally:
        exporter.stop()
    assert not (tmp_path / "e_run1.json").exists()


def test_stop_waits_for_a_scrape_of_the_final_state():
    """A kill in a run's last seconds must reach Prometheus: once scraped, the exporter stops
    only after a scrape that began after the last change (or a timeout)."""
    import threading

    exporter = Exporter("e", "e_run2")
    exporter.start()
    exporter.snapshot.declare("e", [("dead_relu_collapse", "dead_relu_collapse")], [])
    exporter.snapshot.update("e", "t1", RESULT)
    urllib.request.urlopen(exporter.url, timeout=5).read()  # a Prometheus scrapes us
    exporter.snapshot.count_kill("e", "dead_relu_collapse", "dead_relu_collapse")
    exporter.snapshot.end("t1")
    url, bodies = exporter.url, []

    def late_scrape():
        time.sleep(1.0)
        bodies.append(urllib.request.urlopen(url, timeout=5).read().decode())

    scraper = threading.Thread(target=late_scrape)
    scraper.start()
    exporter.stop(final_scrape_timeout_s=60)
    scraper.join()
    assert bodies and 'tune_health_kills_total{experiment="e",failure="dead_relu_collapse",' \
        'rule="dead_relu_collapse"} 1.0' in bodies[0]


def test_stop_does_not_wait_when_nobody_scrapes():
    exporter = Exporter("e", "e_run3")
    exporter.start()
    exporter.snapshot.update("e", "t1", RESULT)
    started = time.time()
    exporter.stop(final_scrape_timeout_s=60)
    assert time.time() - started < 30


def test_taken_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ExporterError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            Exporter("e", "r", port=port).start()


def test_families_follow_the_declared_vocabulary_not_metric_names():
    """Another team's names (g_loss, d_loss, val_acc) are exported by role; with nothing
    declared, no loss or validation family guesses from names."""
    other = Vocabulary(generator_loss="g_loss", discriminator_loss="d_loss", validation="val_acc",
                       mode="max")
    snap = SignalSnapshot(vocabulary=other)
    snap.update("gan", "t1", {"g_loss": -0.4, "d_loss": 0.0, "val_acc": 0.9, "loss_g": 7.0,
                              "training_iteration": 2})
    text = scrape(snap)
    assert 'tune_health_loss{experiment="gan",loss="generator",role="trial",trial="t1"} -0.4' \
        in text
    assert 'loss="discriminator"' in text and 'metric="val_acc"' in text
    assert "7.0" not in text  # loss_g is not declared here: not exported
    bare = SignalSnapshot()
    bare.update("x", "t1", RESULT)
    assert 'tune_health_loss{' not in scrape(bare)
