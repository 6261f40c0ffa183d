"""Alerts that reach a person: the shipped Prometheus alerting rules (checked and unit-tested
with promtool), the series they read, and a real kill carried by a real Prometheus and a real
Alertmanager to a webhook."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import monitor
from dashboards import alert_rules_file
from monitor.driver.verdicts import VerdictRecorder
from monitor.serving import alertmanager_local
from monitor.serving.exporter import SignalSnapshot
from monitor.serving.prometheus_local import config_text
from tests.prometheus_server import AlertmanagerServer, PrometheusServer, Webhook
from tests.test_api import VOCAB, train_mlp

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian: prometheus)")
REASON = "Trial t1 stopped at iteration 3: the training loss diverged (12.5 > 10)"
KILL = {"experiment": "e", "trial": "t1", "rule": "divergence", "failure": "divergence",
        "action": "kill", "shadow": False, "iteration": 3, "wall_time": 1.7e9, "reason": REASON}
TARGET = {"job": "tune_health", "instance": "127.0.0.1:9", "monitor_run": "e_1"}


def series(name: str, **labels: str) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in {**labels, **TARGET}.items())
    return f"{name}{{{text}}}"


def test_the_kill_and_the_notices_are_series_with_their_reason():
    snap = SignalSnapshot()
    snap.count_verdict({**KILL, "reason": REASON + '\nsee "kill-report"'})
    snap.count_verdict({**KILL, "trial": "t2", "action": "warn"})  # a warning: no kill series
    snap.note("e", "d_too_strong", "discriminator_loss", "rule d_too_strong cannot fire")
    text = snap.exposition().decode()
    kills = [line for line in text.splitlines()
             if line.startswith("tune_health_kill_timestamp_seconds{")]
    assert kills == ['tune_health_kill_timestamp_seconds{experiment="e",failure="divergence",'
                     'iteration="3",reason="' + REASON + '\\\\n'  # one line: \n made visible
                     'see \\"kill-report\\"",rule="divergence",trial="t1"} 1.7e+09']
    assert ('tune_health_notice_info{experiment="e",message="rule d_too_strong cannot fire",'
            'rule="d_too_strong",signal="discriminator_loss"} 1.0') in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr


@needs_promtool
def test_shipped_rules_pass_promtool_check():
    out = subprocess.run(["promtool", "check", "rules", str(alert_rules_file())],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 3 rules found" in out.stdout


def rule_tests(rules: str) -> dict:
    """promtool's unit tests of the three alerts (one sample a minute; time() counts seconds
    from 0, so a kill at 2m is valued 120)."""
    kill = series("tune_health_kill_timestamp_seconds", experiment="e", trial="t1",
                  rule="divergence", failure="divergence", iteration="3", reason=REASON)
    kill_labels = {"severity": "warning", "experiment": "e", "trial": "t1", "rule": "divergence",
                   "failure": "divergence", "iteration": "3", "reason": REASON, **TARGET}
    killed = {"exp_labels": kill_labels, "exp_annotations": {
        "summary": "e: trial t1 killed by rule divergence (divergence) at iteration 3",
        "description": f"{REASON} Evidence: monitor kill-report e_1"}}
    blind = {"experiment": "e", "rule": "d_too_strong", "signal": "discriminator_loss",
             "message": "rule d_too_strong cannot fire: discriminator_loss is not declared"}
    trial = {"experiment": "e", "role": "master"}

    def timing(t: str, last: str, first: str, reports: str) -> list[dict]:
        return [{"series": series(f"tune_health_{name}", **trial, trial=t), "values": values}
                for name, values in (("last_report_timestamp_seconds", last),
                                     ("first_report_timestamp_seconds", first),
                                     ("reports_total", reports))]

    def hung(silence: str) -> dict:
        return {"exp_labels": {"severity": "warning", **trial, "trial": "hung", **TARGET},
                "exp_annotations": {
                    "summary": f"e: trial hung has sent no result for {silence}",
                    "description": f"Trial hung of run e_1 reported last {silence} ago while "
                                   "the run is live: its worker may be hung or lost."}}

    return {"rule_files": [rules], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # killed at 2m, scraped until 5m, then the run ended (its target went away)
            {"series": kill, "values": "_ _ 120x3 stale"},
            {"series": series("tune_health_notice_info", **blind), "values": "1x10"},
            {"series": series("tune_health_notice_info", experiment="e", rule="(input)",
                              signal="t1:loss", message="trial t1 reported loss: text"),
             "values": "1x10"},
            # "hung": a result a minute until 5m, then none while the run goes on
            *timing("hung", "0+60x5 300x40", "0x45", "1+1x5 6x40"),
            # "slow": a result every 20 minutes (its silence of 19 minutes is normal)
            *timing("slow", "0x19 1200x25", "0x45", "1x19 2x25"),
            # "ended": stopped reporting at 5m and left the metrics 30 s after its end
            *timing("ended", "0+60x5 stale", "0x5 stale", "1+1x5 stale"),
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "TuneHealthTrialKilled", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "TuneHealthTrialKilled", "exp_alerts": [killed]},
            {"eval_time": "16m", "alertname": "TuneHealthTrialKilled", "exp_alerts": [killed]},
            {"eval_time": "20m", "alertname": "TuneHealthTrialKilled", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "TuneHealthRuleCannotSeeSignal", "exp_alerts": [
                {"exp_labels": {"severity": "info", **blind, **TARGET}, "exp_annotations": {
                    "summary": "e: rule d_too_strong cannot see discriminator_loss",
                    "description": blind["message"]}}]},
            {"eval_time": "12m", "alertname": "TuneHealthTrialStoppedReporting",
             "exp_alerts": []},
            {"eval_time": "21m", "alertname": "TuneHealthTrialStoppedReporting",
             "exp_alerts": [hung("16m 0s")]},
            {"eval_time": "39m", "alertname": "TuneHealthTrialStoppedReporting",
             "exp_alerts": [hung("34m 0s")]},  # not "slow", 19 minutes after its last result
        ],
    }]}


@needs_promtool
def test_alerts_fire_on_a_kill_a_blind_rule_and_a_hung_trial_only(tmp_path):
    """``promtool test rules``: each alert fires when it should, with its labels and text,
    and stays quiet before a kill, 15 minutes after it, for a slow but regular trial and for
    a trial that ended."""
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(rule_tests(str(alert_rules_file())), sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # The test can fail: a rule that never fires breaks it.
    broken = tmp_path / "broken.yaml"
    broken.write_text(alert_rules_file().read_text().replace("< 900", "< 0"))
    path.write_text(yaml.safe_dump(rule_tests(str(broken)), sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "TuneHealthTrialKilled" in out.stdout + out.stderr


def test_configurations_name_the_rules_and_the_webhook(tmp_path):
    prom = yaml.safe_load(config_text(tmp_path, alertmanagers=["127.0.0.1:9093"]))
    assert prom["rule_files"] == [str(alert_rules_file())]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == \
        ["127.0.0.1:9093"]
    assert "alerting" not in yaml.safe_load(config_text(tmp_path))
    am = yaml.safe_load(alertmanager_local.config_text("https://hooks.example/T0/secret?x=1"))
    assert am["receivers"][0]["webhook_configs"][0]["url"] == "https://hooks.example/T0/secret?x=1"
    with pytest.raises(ValueError, match=r"ALERT_WEBHOOK_URL='ftp://\*\*\*@h': expected an "
                                         r"http:// or https:// URL"):
        alertmanager_local.config_text("ftp://user:pw@h")
    if shutil.which("amtool"):
        path = tmp_path / "alertmanager.yml"
        path.write_text(alertmanager_local.config_text("https://hooks.example/x"))
        out = subprocess.run(["amtool", "check-config", str(path)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_readme_route_passes_amtool(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Alerts"):]
    route = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert yaml.safe_load(route)["receivers"][0]["webhook_configs"][0]["url"].startswith("https")
    if shutil.which("amtool"):
        path = tmp_path / "alertmanager.yml"
        path.write_text(route)
        out = subprocess.run(["amtool", "check-config", str(path)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_alertmanager_start_without_a_webhook_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    assert alertmanager_local.main([]) == 2
    assert capsys.readouterr().err == ("error: ALERT_WEBHOOK_URL: expected the URL alerts are "
                                       "posted to (or --webhook)\n")


def test_the_driver_posts_a_rules_kill_not_a_warning_nor_the_schedulers_stop(
        tmp_path, monkeypatch):
    webhook = Webhook().start()
    try:
        monkeypatch.setenv("MONITOR_ALERT_WEBHOOK", webhook.url)
        recorder = VerdictRecorder(tmp_path / "e_1")
        recorder.record({**KILL, "trial": "asha", "rule": "ASHAScheduler",
                         "policy": "scheduler"})
        recorder.record({**KILL, "trial": "warned", "action": "warn"})
        recorder.record({**KILL, "trial": "shadowed", "shadow": True})
        recorder.record(KILL)
        recorder.close()
    finally:
        webhook.stop()
    assert [(b["trial"], b["run"], b["reason"]) for b in webhook.bodies] == [("t1", "e_1", REASON)]


@pytest.mark.slow
def test_a_kill_is_posted_from_the_driver_and_a_dead_webhook_stops_nothing(
        tmp_path, monkeypatch, caplog):
    """``MONITOR_ALERT_WEBHOOK``: the kill's rule and reason reach a real HTTP server; a
    webhook nobody serves is one warning that hides the URL's token, and the run goes on."""
    webhook = Webhook().start()
    try:
        monkeypatch.setenv("MONITOR_ALERT_WEBHOOK", webhook.url)
        run = monitor.LoopMonitor("direct", signals=VOCAB, budget=6, storage=tmp_path,
                                  rules=["builtin"])
        decisions = train_mlp(8.0, run, "broken")
        run.close()
    finally:
        webhook.stop()
    assert decisions[-1].stop
    [body] = webhook.bodies
    assert body["trial"] == "broken" and body["rule"] == "divergence"
    assert body["reason"] == decisions[-1].reason and body["run"] == run.spec.name
    assert body["text"].startswith("direct: trial broken killed by rule divergence")
    monkeypatch.setenv("MONITOR_ALERT_WEBHOOK", webhook.url + "/T000/SECRET")  # now closed
    run = monitor.LoopMonitor("direct", signals=VOCAB, budget=6, storage=tmp_path,
                              rules=["builtin"])
    decisions = train_mlp(8.0, run, "broken")
    summary = run.close()
    assert decisions[-1].stop and summary["trials"][0]["status"] == "KILLED"
    warnings = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert len(warnings) == 1 and "SECRET" not in warnings[0], warnings
    assert f"http://127.0.0.1:{webhook.server.server_address[1]}/***" in warnings[0]


USER_RULES = """\
groups:
  - name: mine
    rules:
      - name: d_too_strong
        expr: discriminator_loss < 0.01
        labels: {action: warn, failure: discriminator_overpowering}
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None or alertmanager_local.binary() is None,
                    reason="prometheus and prometheus-alertmanager (Debian) not installed")
def test_a_kill_reaches_a_webhook_through_prometheus_and_alertmanager(tmp_path):
    """A real LoopMonitor run serves its metrics; a real Prometheus evaluates the shipped rules
    (the hung-trial threshold cut from 15 minutes to 2 s) and a real Alertmanager posts the
    kill with its rule and reason, the blind rule and the hung trial to a local webhook."""
    started = time.time()
    webhook = Webhook().start()
    alertmanager = prometheus = None
    run = None
    try:
        alertmanager = AlertmanagerServer(tmp_path / "am", webhook.url).start()
        rules = tmp_path / "alerts.yaml"
        rules.write_text(alert_rules_file().read_text().replace(
            "tune_health_last_report_timestamp_seconds) > 900",
            "tune_health_last_report_timestamp_seconds) > 2"))
        prometheus = PrometheusServer(tmp_path / "prom", tmp_path / "runs" / "file_sd",
                                      rule_files=[rules],
                                      alertmanagers=[alertmanager.address])
        (tmp_path / "prom").mkdir()
        prometheus.start()
        (tmp_path / "mine.yaml").write_text(USER_RULES)
        run = monitor.LoopMonitor("alerts", signals=VOCAB, budget=6, storage=tmp_path / "runs",
                                  rules=["builtin", str(tmp_path / "mine.yaml")], exporter=True)
        run.report({"loss": 0.5, "val_loss": 0.5}, trial="hung")  # one result, then silence
        decisions = train_mlp(8.0, run, "broken")
        assert decisions[-1].stop and decisions[-1].rule == "divergence"
        killed = webhook.wait_for({"alertname": "TuneHealthTrialKilled", "trial": "broken"}, 40)
        assert killed["labels"]["rule"] == "divergence"
        assert killed["labels"]["experiment"] == "alerts"
        assert killed["labels"]["reason"] == decisions[-1].reason
        assert killed["annotations"]["description"].startswith(decisions[-1].reason)
        assert f"monitor kill-report {run.spec.name}" in killed["annotations"]["description"]
        assert "killed by rule divergence" in killed["annotations"]["summary"]
        blind = webhook.wait_for({"alertname": "TuneHealthRuleCannotSeeSignal",
                                  "rule": "d_too_strong"}, 20)
        assert "discriminator_loss" in blind["annotations"]["description"]
        hung = webhook.wait_for({"alertname": "TuneHealthTrialStoppedReporting",
                                 "trial": "hung"}, 20)
        assert "has sent no result for" in hung["annotations"]["summary"]
    finally:
        if run is not None:
            run.close()
        for server in (prometheus, alertmanager, webhook):
            if server is not None:
                server.stop()
    assert time.time() - started < 90
