"""Dashboards as code: committed JSON is fresh, valid, and every query returns real data."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from dashboards import build
from monitor.serving.grafana import GrafanaError, KillAnnotator, load_dashboards, push
from tests.prometheus_server import PrometheusServer, free_port
from trainers import experiment
from trainers import tune as runner

JSON_DIR = Path(build.__file__).parent / "json"
VARIABLE = re.compile(r"\$\{?(\w+)")
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__name__"}


def queries(model: dict) -> list[str]:
    out = [t["expr"] for p in model["panels"] for t in p.get("targets", []) if "expr" in t]
    out += [a["expr"] for a in model["annotations"]["list"] if a.get("expr")]
    return out


def test_committed_json_is_what_the_code_generates():
    rendered = build.render()
    assert sorted(rendered) == sorted(p.name for p in JSON_DIR.glob("*.json"))
    for name, text in rendered.items():
        assert (JSON_DIR / name).read_text() == text, f"{name} is stale: run make dashboards"


@pytest.mark.parametrize("model", load_dashboards(), ids=lambda m: m["uid"])
def test_dashboards_are_valid_grafana_json(model):
    assert model["schemaVersion"] >= 36 and model["uid"] and model["title"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in model["templating"]["list"]}
    assert {"datasource", "experiment", "trial"} <= names
    for panel in model["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    used = {m for text in queries(model) + [v.get("query", "") for v in
                                            model["templating"]["list"]
                                            if isinstance(v.get("query"), str)]
            for m in VARIABLE.findall(text)}
    assert used - BUILTIN_VARIABLES <= names, f"undefined variables {used - names}"
    assert any(a["datasource"]["type"] == "grafana" for a in model["annotations"]["list"])


# -- real Prometheus, real run ------------------------------------------------------------------
DASH_EXP = """\
trainer: master
metric: val_logmel
max_iterations: 6
resources: {cpu: 1}
heuristics: [builtin, probe_rules.yaml]
config: {steps_per_iteration: 5, checkpoint_every: 2, width: 24, depth: 2}
variants:
  - name: healthy
  - name: dead_relu_bias_init
    bias_init: -0.5
  - name: evergreen_bias_init
    bias_init: 1.0
"""
# A warning that fires in every run, so the warning panels have data whatever the dynamics
# (the evergreen warning of a 6-iteration run depends on them).
PROBE_RULES = """\
groups:
  - name: probe
    rules:
      - name: probe_warning
        expr: loss_d >= 0
        for: 2
        grace: 2
        labels: {action: warn, failure: probe}
"""


# measured only on recurrent layers (LSTM/GRU/RNN), which the master model does not have
RECURRENT_ONLY = ("tune_health_saturated_ratio",)


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")


@pytest.mark.slow
def test_every_dashboard_query_returns_data(ray_session, tmp_path):
    path = tmp_path / "dash_exp.yaml"
    path.write_text(DASH_EXP)
    (tmp_path / "probe_rules.yaml").write_text(PROBE_RULES)
    server = PrometheusServer(tmp_path / "prom", tmp_path / "runs" / "file_sd")
    (tmp_path / "prom").mkdir()
    server.start()
    try:
        started = time.time()
        summary = runner.run(experiment.load(str(path)), storage=tmp_path / "runs")
        assert any(t.get("killed") for t in summary["trials"])
        time.sleep(2.5)  # the last scrape before the exporter went away
        end = time.time()
        exp = summary["experiment"]
        trials = server.api("label/trial/values", **{"match[]": "tune_health_trial_info",
                                                     "start": started, "end": end})
        layers = server.api("label/layer/values", **{"match[]": "tune_health_dead_ratio",
                                                     "start": started, "end": end})
        assert len(trials) == 3 and layers
        values = {"experiment": exp, "trial": "|".join(trials), "layer": "|".join(layers)}
        for model in load_dashboards():
            for expr in queries(model):
                promql = substitute(expr, values)
                data = server.api("query_range", query=promql, start=started, end=end, step=1)
                if any(metric in promql for metric in RECURRENT_ONLY):
                    continue  # valid PromQL (api() raises otherwise); no recurrent layer here
                assert data["result"], f"{model['uid']}: no data for {promql}"
            for var in model["templating"]["list"]:
                query = var.get("query")
                if var["type"] != "query":
                    continue
                m = re.fullmatch(r"label_values\((.*), (\w+)\)", substitute(query, values))
                found = server.api(f"label/{m.group(2)}/values",
                                   **{"match[]": m.group(1), "start": started, "end": end})
                assert found, f"variable {var['name']} has no values"
    finally:
        server.stop()


# -- Grafana -----------------------------------------------------------------------------------
class FakeGrafana(BaseHTTPRequestHandler):
    """A stand-in for Grafana's HTTP API on loopback (no Grafana server can be installed here):
    checks the bearer token and records what it receives."""

    token = "glsa_test_token"
    received: list = []

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(401, {"message": "Unauthorized"})
        FakeGrafana.received.append((self.path, body))
        if self.path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            return self._reply(200, {"status": "success", "uid": uid, "version": 1,
                                     "url": f"/d/{uid}"})
        if self.path == "/api/annotations":
            return self._reply(200, {"id": 1, "message": "Annotation added"})
        return self._reply(404, {"message": "Not found"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def grafana():
    FakeGrafana.received = []
    server = HTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_creates_or_overwrites_by_uid(grafana):
    answers = push(grafana, FakeGrafana.token)
    assert {a["uid"] for a in answers} == {"tune-health-overview", "tune-health-trial"}
    for path, body in FakeGrafana.received:
        assert path == "/api/dashboards/db" and body["overwrite"] is True
        assert body["dashboard"]["id"] is None


def test_push_errors_are_clear_and_never_show_the_token(grafana):
    with pytest.raises(GrafanaError) as info:
        push(grafana, "wrong-secret-token")
    assert "GRAFANA_TOKEN" in str(info.value) and "wrong-secret-token" not in str(info.value)
    with pytest.raises(GrafanaError, match="cannot reach Grafana"):
        push(f"http://127.0.0.1:{free_port()}", FakeGrafana.token)
    with pytest.raises(GrafanaError, match="is this the URL of a Grafana server"):
        push(f"{grafana}/not-grafana", FakeGrafana.token)
    with pytest.raises(GrafanaError, match="no Grafana URL"):
        push("", FakeGrafana.token)


def test_kills_are_posted_as_annotations_and_failures_never_raise(grafana, caplog):
    verdict = {"wall_time": 1_700_000_000.5, "experiment": "e", "trial": "t1",
               "rule": "dead_relu_collapse", "failure": "dead_relu_collapse",
               "reason": "Trial t1 stopped at iteration 2."}
    assert KillAnnotator(grafana, FakeGrafana.token).post(verdict)
    path, body = FakeGrafana.received[-1]
    assert path == "/api/annotations" and "tune-health" in body["tags"] and "t1" in body["tags"]
    assert body["time"] == 1_700_000_000_500
    assert not KillAnnotator(f"http://127.0.0.1:{free_port()}", "x").post(verdict)
    assert "could not post the kill of t1" in caplog.text
    assert not KillAnnotator("", None).post(verdict)  # not configured: nothing happens
