"""Issue 25: nothing a training reports, no damaged file and no full disk ends a run, loses a
verdict or leaks a secret. One test per defect found (numbered as in the issue), on real parts:
real SQLite stores, real files, real subprocesses; Ray Tune runs are in
``test_reliability_tune.py``, the property test in ``test_reliability_property.py``."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch

import monitor
from heuristics.rules import parse_grace
from monitor import durability
from monitor.after import report
from monitor.cli import main as cli
from monitor.driver.rulestate import RuleStateStore
from monitor.driver.run import StorageError, new_run_dir
from monitor.driver.verdicts import VerdictLog, VerdictRecorder
from monitor.durability import DISK_FULL_ENV, write_atomic
from monitor.serving.exporter import Exporter, ExporterError
from monitor.serving.grafana import KillAnnotator, redact
from monitor.store import RunStore

VOCAB = monitor.Vocabulary(train_loss="loss", validation="val_loss", mode="min")
SECRET = "s3cretPASS"
TOKEN = "glsa_T0KENsecret"


def loop(tmp_path: Path, name: str = "rel", **kwargs) -> monitor.LoopMonitor:
    return monitor.LoopMonitor(name, signals=VOCAB, rules=["builtin"], budget=10,
                               storage=tmp_path, **kwargs)


def healthy(run: monitor.LoopMonitor, trial: str, n: int = 3) -> None:
    for i in range(n):
        assert not run.report({"loss": 1.0 / (i + 1), "val_loss": 1.0}, trial=trial).stop


def stored_iterations(run_dir: Path) -> dict[str, int]:
    with RunStore(run_dir, create=False) as store:
        return {t["trial_id"]: t["iterations"] for t in store.trials()}


# -- 1, 2, 12: Grafana credentials ---------------------------------------------------------------
URLS = [f"http://admin:{SECRET}@127.0.0.1:9", f"admin:{SECRET}@127.0.0.1:9",
        f"http:/admin:{SECRET}@127.0.0.1:9", f"http://u:{SECRET}@[::1",
        f"https://admin:{SECRET}@127.0.0.1:9/grafana?x=1", f"http://admin:{SECRET}@[::1]:9/"]


@pytest.mark.parametrize("url", URLS)
def test_2_12_no_form_of_url_prints_its_password(url, capsys, monkeypatch):
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    code = cli(["dashboards", "push", "--url", url])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 2 and "Traceback" not in out
    assert SECRET not in out and TOKEN not in out and "***@" in out
    assert len(captured.err.strip().splitlines()) == 1
    assert SECRET not in redact(url)


def test_1_the_annotator_pickles_no_credentials(monkeypatch):
    """Tune writes the scheduler (and its annotator) into tuner.pkl."""
    monkeypatch.setenv("GRAFANA_URL", URLS[0])
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    annotator = KillAnnotator()
    assert SECRET not in repr(vars(annotator)) and TOKEN not in repr(vars(annotator))
    blob = pickle.dumps(annotator)
    assert SECRET.encode() not in blob and TOKEN.encode() not in blob
    restored = pickle.loads(blob)  # restored where the environment still has them
    assert restored.url == URLS[0] and restored.token == TOKEN
    monkeypatch.setenv("GRAFANA_URL", URLS[2])  # read when it posts, not when it was made
    assert annotator.url == URLS[2]
    explicit = pickle.dumps(KillAnnotator(url=URLS[1], token=TOKEN))
    assert SECRET.encode() not in explicit and TOKEN.encode() not in explicit
    plain = KillAnnotator(url="http://127.0.0.1:3000")
    assert pickle.loads(pickle.dumps(plain)).url == "http://127.0.0.1:3000"


def test_1_a_failed_kill_annotation_logs_no_credentials(monkeypatch, caplog):
    annotator = KillAnnotator(url=URLS[1], token=TOKEN, timeout=0.5)
    verdict = {"wall_time": time.time(), "experiment": "e", "trial": "t", "rule": "r",
               "failure": "f", "reason": "because"}
    assert annotator.post(verdict) is False
    assert caplog.records and SECRET not in caplog.text and TOKEN not in caplog.text


REDACTED = {  # every form a URL may take, and what may be shown of it
    f"http://admin:{SECRET}@127.0.0.1:9": "http://***@127.0.0.1:9",
    f"admin:{SECRET}@127.0.0.1:9": "***@127.0.0.1:9",
    f"http:/admin:{SECRET}@127.0.0.1:9": "http:/***@127.0.0.1:9",
    f"http:admin:{SECRET}@127.0.0.1:9": "http:***@127.0.0.1:9",
    f"http://u:{SECRET}@[::1": "http://***@[::1",
    f"http://admin:{SECRET}@[::1]:9/x": "http://***@[::1]:9/x",
    f"http://admin:{SECRET}": "http://admin:***",  # the host forgotten: the password a port
    f"admin:{SECRET}": "admin:***",
    f"http://u:a/{SECRET}@h:3000/g": "http://***@h:3000/g",
    f"http://u:a#{SECRET}@h/g": "http://***@h/g",
    f"https://h/g?token={SECRET}": "https://h/g?***",
    f"https://h/g#{SECRET}": "https://h/g?***",
    f" http://u:{SECRET}@h\n": "http://***@h",
    "http://localhost:3000/grafana": "http://localhost:3000/grafana",
    "localhost:3000": "localhost:3000",
    "[::1]:3000": "[::1]:3000",
}


@pytest.mark.parametrize("url", sorted(REDACTED))
def test_1_2_12_one_redaction_parses_every_form(url):
    from monitor.serving import webhook

    assert redact(url) == REDACTED[url]
    shown = webhook.shown(url)  # webhook URLs: not even the path
    assert SECRET not in shown and "\n" not in shown and "/g" not in shown


@pytest.mark.parametrize("url", [f"http://127.0.0.1:99999/hooks/{SECRET}",
                                 f"http://127.0.0.1:{SECRET}/hooks",
                                 f"http://u:{SECRET}@[::1/hooks"])
def test_1_a_webhook_url_with_a_bad_port_never_breaks_a_kill(tmp_path, monkeypatch, caplog,
                                                             capsys, url):
    """A port out of range or not a number made ``report`` raise after the kill was recorded
    (``ValueError: Port out of range``): the training never learnt it was stopped."""
    monkeypatch.setenv("MONITOR_ALERT_WEBHOOK", url)
    run = loop(tmp_path)
    healthy(run, "t", 2)
    decision = run.report({"loss": float("nan"), "val_loss": 1.0}, trial="t")
    assert decision.stop and decision.rule == "divergence"
    assert run.close()["kills"] == 1
    out = capsys.readouterr()
    assert "MONITOR_ALERT_WEBHOOK" in caplog.text
    assert SECRET not in caplog.text + out.out + out.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not any(SECRET.encode() in p.read_bytes() for p in files)


# -- 3, 7: every numeric type, every size -------------------------------------------------------
NAN_TYPES = {
    "float": float("nan"), "float32": np.float32("nan"), "float16": np.float16("nan"),
    "array0d": np.array(float("nan")), "tensor": torch.tensor(float("nan")),
    "tensor_bf16": torch.tensor(float("nan"), dtype=torch.bfloat16),
    "decimal": Decimal("NaN"), "huge_int": 10 ** 400, "minus_huge_int": -10 ** 400,
    "longdouble": np.longdouble("nan"), "longdouble_array": np.array(np.longdouble("inf")),
    "decimal_snan": Decimal("sNaN"), "huge_decimal": Decimal("1e400"),
    "object_array": np.array(Decimal("NaN"), dtype=object),
    "tensor_one_element": torch.tensor([float("nan")]), "array_one_element": np.array([[np.inf]]),
}


@pytest.mark.parametrize("kind", sorted(NAN_TYPES))
def test_3_7_a_nonfinite_loss_of_any_type_is_killed_by_divergence(tmp_path, kind):
    run = loop(tmp_path)
    healthy(run, "other", 2)
    healthy(run, kind, 2)
    decision = run.report({"loss": NAN_TYPES[kind], "val_loss": 1.0}, trial=kind)
    assert decision.stop and decision.rule == "divergence", decision
    healthy(run, "other", 1)
    summary = run.close()
    assert {t["trial_id"]: t["status"] for t in summary["trials"]} == {
        kind: "KILLED", "other": "TERMINATED"}
    assert not any("has not reported" in n or "reported" in n and kind in n
                   for n in summary["notices"]), summary["notices"]


@pytest.mark.parametrize("budget", [10 ** 400, float("inf"), float("nan"), Decimal("sNaN")])
def test_3_a_reported_budget_beyond_any_iteration_is_ignored(tmp_path, budget):
    """``max_iterations`` (the budget a trial reports when none is declared) of ``10**400``
    made the engine raise ``OverflowError`` on every report: under Tune the trial was never
    evaluated again (a later NaN not killed), ``LoopMonitor.report`` raised."""
    run = monitor.LoopMonitor("rel", signals=VOCAB, rules=["builtin"], storage=tmp_path)
    for _ in range(2):
        assert not run.report({"loss": 1.0, "val_loss": 1.0, "max_iterations": budget}).stop
    decision = run.report({"loss": float("nan"), "val_loss": 1.0, "max_iterations": budget})
    assert decision.stop and decision.rule == "divergence"
    assert run.close()["kills"] == 1


@pytest.mark.parametrize("kwargs, expected", [
    (dict(budget=10 ** 400), "budget: expected a positive number of iterations"),
    (dict(budget=2 ** 63), "budget: expected a positive number of iterations"),
    (dict(budget=float("inf")), "budget: expected a positive number of iterations"),
    (dict(healthy_threshold=float("nan")), "healthy_threshold: expected a finite number"),
    (dict(healthy_threshold=10 ** 400), "healthy_threshold: expected a finite number"),
])
def test_3_a_budget_or_threshold_no_store_can_hold_is_refused(tmp_path, kwargs, expected):
    """``budget=10**400`` was taken, then every write of the run store failed
    (``OverflowError``: the run recorded nothing); now one line, before anything is made."""
    with pytest.raises(ValueError, match=expected) as info:
        monitor.LoopMonitor("rel", signals=VOCAB, rules=["builtin"], storage=tmp_path, **kwargs)
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_3_a_budget_of_any_whole_numeric_type_is_taken(tmp_path):
    run = monitor.LoopMonitor("rel", signals=VOCAB, rules=["builtin"], storage=tmp_path,
                              budget=np.int64(10), healthy_threshold=np.float32(0.5))
    healthy(run, "t", 2)
    summary = run.close()
    assert summary["trials"][0]["iterations"] == 2 and not summary["not_recorded"]


def test_7_a_finite_loss_of_any_type_is_read_as_its_value(tmp_path):
    run = loop(tmp_path)
    for value in [np.float32(0.5), np.float16(0.25), np.array(0.125), torch.tensor(0.0625),
                  Decimal("0.03125")]:
        assert not run.report({"loss": value, "val_loss": value}, trial="t").stop
    summary = run.close()
    assert summary["trials"][0]["metric"] == pytest.approx(0.03125)
    assert not any("trial t reported" in n for n in summary["notices"]), summary["notices"]


# -- 4, 11, 13: LoopMonitor.report refuses what is not a report, isolates what is odd ----------
@pytest.mark.parametrize("call, expected", [
    (dict(metrics={"loss": 1.0}, iteration=2 ** 63), "iteration: expected a whole number"),
    (dict(metrics={"loss": 1.0}, iteration=float("nan")), "iteration: expected a whole"),
    (dict(metrics={"loss": 1.0}, iteration=-1), "iteration: expected a whole number"),
    (dict(metrics={"loss": 1.0}, iteration=True), "iteration: expected a whole number"),
    (dict(metrics={"loss": 1.0}, iteration=np.uint64(2 ** 63)), "iteration: expected a whole"),
    (dict(metrics={"loss": 1.0}, iteration=torch.tensor(2.5)), "iteration: expected a whole"),
    (dict(metrics={"loss": 1.0}, iteration=Decimal("sNaN")), "iteration: expected a whole"),
    (dict(metrics=None), "metrics: expected a mapping"),
    (dict(metrics=[("loss", 1.0)]), "metrics: expected a mapping"),
    (dict(metrics=np.ones((3, 3))), "metrics: expected a mapping"),
    (dict(metrics={"loss": 1.0}, iteration=torch.ones(4, 4)), "iteration: expected a whole"),
    (dict(metrics={"loss": 1.0}, trial="bad\udcff"), "trial: expected a non-empty name"),
    (dict(metrics={"loss": 1.0}, trial=7), "trial: expected a non-empty name"),
    (dict(metrics={"loss": 1.0}, trial="two\nlines"), "trial: expected a non-empty name"),
])
def test_4_11_13_a_bad_report_is_refused_and_close_still_works(tmp_path, call, expected):
    run = loop(tmp_path)
    healthy(run, "other", 2)  # buffered results of another trial
    with pytest.raises((ValueError, TypeError), match=expected) as info:
        run.report(**{"trial": "bad", **call})
    assert "\n" not in str(info.value)  # one line, naming the trial
    assert "trial" in call or "(trial 'bad')" in str(info.value)
    healthy(run, "other", 1)
    summary = run.close()  # never raises
    assert summary["trials"] and stored_iterations(run.run_dir)["other"] == 3
    assert (run.run_dir / "summary.json").exists()


@pytest.mark.parametrize("metrics, health, notice", [
    ({"loss": 1.0, 3: 2.0, ("a",): 1.0}, None, "is not a name"),
    ({"loss": 1.0}, {"layers": "x"}, "health/layers: expected a mapping of layers"),
    ({"loss": 1.0}, {"layers": {"enc": "x"}, "model": 3}, "expected a mapping of signals"),
    ({"loss": 1.0}, [1, 2], "health: expected the block of HealthMonitor.collect()"),
    ({"loss": 1.0, "time_total_s": "soon"}, None, "time_total_s: expected a finite number"),
    ({"loss": 1.0, "bad\udcffkey": 1.0}, None, "is not a name"),
    ({"loss": 1.0}, {"layers": {"bad\udcff": {"dead_ratio": 0.1}}}, "is not a name"),
    ({"loss": torch.ones(3), "val_loss": 1.0}, None, "loss: an array of shape (3,) is not one"),
    ({"loss": "0.312", "val_loss": 1.0}, None, "loss: '0.312' is text, not a number"),
])
def test_11_13_odd_parts_of_a_report_are_left_out_with_a_notice(tmp_path, metrics, health,
                                                                 notice):
    run = loop(tmp_path)
    healthy(run, "other", 2)
    for _ in range(3):
        assert not run.report(metrics, health=health, trial="odd").stop
    healthy(run, "other", 1)
    summary = run.close()
    assert any(notice in n and "odd" in n for n in summary["notices"]), summary["notices"]
    assert stored_iterations(run.run_dir) == {"other": 3, "odd": 3}
    assert report.build(run.run_dir)["trials"] == 2


def test_13_a_variant_name_with_a_lone_surrogate_is_stored(tmp_path):
    with RunStore(tmp_path) as store:
        store.upsert_trial("t\udcff", variant="v\udcff")
        store.add_result("t\udcff", {"training_iteration": 1, "loss": 1.0,
                                     "health": {"layers": {"l\udcff": {"dead_ratio": 0.1}}}})
    with RunStore(tmp_path, create=False) as store:
        assert store.trials()[0]["variant"] == "v\\udcff"
        assert store.samples("t\\udcff")


def test_4_an_iteration_of_any_whole_numeric_type_is_taken(tmp_path):
    """The iteration is read as reported values are (``results.whole_number``)."""
    run = loop(tmp_path)
    for it in (np.int64(1), torch.tensor(2), np.float32(3.0), Decimal(4), 5.0):
        assert not run.report({"loss": 1.0, "val_loss": 1.0}, trial="t", iteration=it).stop
    run.close()
    with RunStore(run.run_dir, create=False) as store:
        assert [r["training_iteration"] for r in store.results("t")] == [1, 2, 3, 4, 5]


# -- 5: resume reads only what it can, with one line and a way on -------------------------------
def test_5_a_state_file_that_is_not_a_database_is_moved_aside(tmp_path, caplog):
    state = RuleStateStore(tmp_path, keep=10)
    state.path.parent.mkdir(parents=True)
    state.path.write_bytes(os.urandom(4096))
    assert state.load() == {}
    assert "not a readable rule state" in caplog.text and "start afresh" in caplog.text
    assert not state.path.exists()
    assert list(state.path.parent.glob("state.sqlite.damaged-*"))
    state.append("t", {"record": {"iteration": 1}, "first": {}})  # a fresh one is written
    assert state.failed is None and state.path.exists()


@pytest.mark.parametrize("bad, expected", [
    ({"layers": [1]}, "'layers': numbers by signal by layer"),
    ({"v": 2, "cache": {}, "ever": []}, "'ever': values by node by rule"),
    ({"iteration": "2"}, "'iteration': a whole number"),
    ({"streak": {"divergence": 5}}, "'streak': [count, time] by rule"),
])
def test_5_a_record_of_another_shape_in_the_rule_state(tmp_path, caplog, bad, expected):
    """A rule-state record that unpickles but is not what the engine reads (a list of layers,
    a list of running values) failed the restore, or every later result of its trial (a NaN
    never killed): that trial's rules start afresh, with one line naming file and key."""
    from unittest.mock import MagicMock

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from heuristics.rules import load_rules
    from monitor.driver.scheduler import HeuristicScheduler

    def scheduler() -> HeuristicScheduler:
        sched = HeuristicScheduler(load_rules(["builtin"]), tmp_path, "exp", budget=20,
                                   vocabulary=monitor.Vocabulary(train_loss="loss"))
        sched.set_search_properties("loss", "min")
        return sched

    trial, controller = Trial("__fake", stub=True), MagicMock()
    first = scheduler()
    for i in range(1, 4):
        first.on_trial_result(controller, trial, {"training_iteration": i, "loss": 1.0 / i})
    first.state.close()
    db = sqlite3.connect(tmp_path / "heuristics" / "state.sqlite")
    (blob,) = db.execute("SELECT record FROM records WHERE iteration = 2").fetchone()
    record = {**pickle.loads(blob), **bad}
    db.execute("UPDATE records SET record = ? WHERE iteration = 2", (pickle.dumps(record),))
    db.commit()
    db.close()
    restored = scheduler()
    restored.on_trial_add(controller, trial)  # the restore reads the state: never raises
    assert restored.on_trial_result(controller, trial, {"training_iteration": 4,
                                                        "loss": float("nan")}) \
        == TrialScheduler.STOP
    [line] = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert "state.sqlite" in line and f"expected {expected}" in line and "afresh" in line


def test_5_log_lines_that_are_not_verdicts_are_skipped_and_the_store_fills_the_log(tmp_path,
                                                                                   caplog):
    recorder = VerdictRecorder(tmp_path)
    verdict = {"trial": "t", "rule": "divergence", "failure": "divergence", "action": "kill",
               "iteration": 3, "wall_time": 1.0, "reason": "r", "shadow": False}
    recorder._open_store().add_verdict(verdict)  # recorded in the store only (a crash)
    recorder.close()
    recorder.log.path.parent.mkdir(parents=True, exist_ok=True)
    recorder.log.path.write_text('[1, 2]\n"text"\n{"rule": "x"}\n')
    found = VerdictRecorder(tmp_path).reconcile()
    assert [v["rule"] for v in found] == ["divergence"]
    assert "is not an entry of this log" in caplog.text and "verdicts.jsonl:1" in caplog.text
    assert [v["rule"] for v in VerdictLog(recorder.log.path).read()
            if isinstance(v, dict) and "trial" in v] == ["divergence"]


def test_5_log_entries_of_another_type_are_skipped_not_filed(tmp_path, caplog):
    """Valid JSON objects with the verdict's keys but values of other types (a list as the
    trial) are not verdicts: skipped with file and line, never filed by trial and rule."""
    recorder = VerdictRecorder(tmp_path)
    verdict = {"trial": "t", "rule": "divergence", "failure": "divergence", "action": "kill",
               "iteration": 3, "wall_time": 1.0, "reason": "r", "shadow": False}
    recorder.record(verdict)
    recorder.close()
    odd = [{**verdict, "trial": ["t"]}, {**verdict, "rule": {"a": 1}},
           {**verdict, "iteration": True}, {**verdict, "iteration": "3"}]
    with recorder.log.path.open("a") as f:
        f.writelines(json.dumps(v) + "\n" for v in odd)
    found = VerdictRecorder(tmp_path).reconcile()
    assert [(v["trial"], v["rule"]) for v in found] == [("t", "divergence")]
    for line in (2, 3, 4, 5):
        assert f"verdicts.jsonl:{line}: skipped a line that is not an entry" in caplog.text
    assert "trial (text)" in caplog.text


def test_5_a_damaged_run_store_is_moved_aside_and_refilled_from_the_log(tmp_path, caplog):
    """On a restore the driver opens the run store first: one that is not a database is moved
    aside with one warning, a fresh one takes what follows, and the verdict log refills it."""
    recorder = VerdictRecorder(tmp_path)
    verdict = {"trial": "t", "rule": "divergence", "failure": "divergence", "action": "kill",
               "iteration": 3, "wall_time": 1.0, "reason": "r", "shadow": False}
    recorder.record(verdict)
    recorder.close()
    for p in tmp_path.glob("monitor.sqlite-*"):
        p.unlink()
    (tmp_path / "monitor.sqlite").write_bytes(os.urandom(8192))
    restored = VerdictRecorder(tmp_path)
    assert [v["rule"] for v in restored.reconcile()] == ["divergence"]
    assert restored.store_failed is None
    restored.record({**verdict, "trial": "u", "iteration": 4})
    restored.close()
    [warning] = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert "monitor.sqlite: damaged or not a run store" in warning
    assert "moved to monitor.sqlite.damaged-" in warning and "\n" not in warning
    assert list(tmp_path.glob("monitor.sqlite.damaged-*"))
    with RunStore(tmp_path, create=False) as store:
        assert sorted(v["trial"] for v in store.verdicts()) == ["t", "u"]
    assert any("samples recorded before are in the old file only" in w
               for w in durability.losses(tmp_path))


def test_5_a_locked_store_is_never_moved_aside(tmp_path, monkeypatch):
    """Only a damaged file is moved aside: a store another process holds locked is not."""
    import sqlite3

    from monitor.store import StoreError, open_for_driver

    VerdictRecorder(tmp_path)._open_store().close()
    holder = sqlite3.connect(tmp_path / "monitor.sqlite")
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, **{**k, "timeout": 0.1}))
    try:
        with pytest.raises(StoreError) as info:
            open_for_driver(tmp_path)
        assert not info.value.damaged and "locked" in str(info.value)
    finally:
        holder.rollback()
        holder.close()
    assert not list(tmp_path.glob("monitor.sqlite.damaged-*"))


# -- 6 and the disk-full fault injection at every write ------------------------------------------
@pytest.mark.parametrize("point", ["verdicts.jsonl", "monitor.sqlite", "notices.jsonl",
                                   "summary.json", "file_sd", "all"])
def test_6_a_full_disk_at_any_write_of_a_loop_run(tmp_path, monkeypatch, point):
    """Each write fails as a full disk does; the run goes on, kills go on, each verdict is in
    the store or the log, and the summary names what was not recorded. (A loop keeps no rule
    state; Tune runs, which do, are in ``test_reliability_tune.py``.)"""
    monkeypatch.setenv(DISK_FULL_ENV, point)
    monkeypatch.setenv("MONITOR_EXPORTER_PORT", "0")
    run = loop(tmp_path, exporter=True)
    healthy(run, "ok", 4)
    assert run.report({"loss": 1.0, "val_los": 1.0}, trial="typo").stop is False
    for _ in range(6):
        run.report({"loss": 1.0, "val_los": 1.0}, trial="typo")  # notices: val_loss missing
    decision = run.report({"loss": float("nan"), "val_loss": 1.0}, trial="nan")
    assert decision.stop and decision.rule == "divergence"
    summary = run.close()
    gaps = " ".join(summary["not_recorded"])
    expected = {"verdicts.jsonl": "verdict log",
                "monitor.sqlite": "run store", "notices.jsonl": "notices",
                "summary.json": "summary", "file_sd": "file_sd"}
    for name, words in expected.items():
        if point in (name, "all"):
            assert words in gaps, (point, summary["not_recorded"])
    assert summary["kills"] == 1
    monkeypatch.delenv(DISK_FULL_ENV)
    durable = VerdictLog(run.run_dir / "heuristics" / "verdicts.jsonl").read()
    if (run.run_dir / "monitor.sqlite").exists():
        with RunStore(run.run_dir, create=False) as store:
            durable += store.verdicts()
    if point == "all":
        assert "recorded nowhere" in gaps  # said, since nothing could hold it
    else:
        assert any(v["trial"] == "nan" and v["rule"] == "divergence" for v in durable)
    if point in ("summary.json", "all"):
        assert not (run.run_dir / "summary.json").exists()
        assert not list(run.run_dir.glob(".summary.json.*"))  # no torn or temporary file
    else:
        assert json.loads((run.run_dir / "summary.json").read_text())["kills"] == 1


def test_9_an_interrupted_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, '{"old": true}')
    monkeypatch.setenv(DISK_FULL_ENV, "summary.json")
    with pytest.raises(OSError):
        write_atomic(path, '{"new": true}')
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_9_an_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    """A temporary file is 0o600: the summary and the file_sd file (which a Prometheus running
    as another user reads) get what ``open()`` would give, a replaced file keeps its mode,
    and a file holding a secret can ask for 0o600."""
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "summary.json", "{}")
        write_atomic(tmp_path / "clip.wav", b"RIFF")
        (tmp_path / "kept.json").write_text("{}")
        (tmp_path / "kept.json").chmod(0o640)
        write_atomic(tmp_path / "kept.json", "[]")
        write_atomic(tmp_path / "secret.yml", "token", mode=0o600)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"summary.json": 0o644, "clip.wav": 0o644, "kept.json": 0o640,
                     "secret.yml": 0o600}
    assert (tmp_path / "clip.wav").read_bytes() == b"RIFF"


# -- 8: where runs go ------------------------------------------------------------------------------
def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("where", ["file", "devnull", "read_only"])
def test_8_runs_dir_that_cannot_hold_runs_is_one_line(tmp_path, monkeypatch, capsys, where):
    from trainers import tune as tune_cli

    target = {"file": tmp_path / "a_file", "devnull": Path("/dev/null"),
              "read_only": tmp_path / "ro"}[where]
    if where == "file":
        target.write_text("x")
    if where == "read_only":
        target.mkdir()
        if os.geteuid() == 0:
            if not _chattr("+i", target):
                pytest.skip("chattr +i is not available here")
        else:
            target.chmod(0o555)
    monkeypatch.setenv("MONITOR_RUNS_DIR", str(target))
    try:
        with pytest.raises(StorageError, match="runs cannot be written there"):
            new_run_dir("exp")
        code = tune_cli.main(["smoke"])
    finally:
        if where == "read_only":
            _chattr("-i", target) if os.geteuid() == 0 else target.chmod(0o755)
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err + captured.out
    [line] = captured.err.strip().splitlines()
    assert line.startswith("error: ") and str(target) in line and "MONITOR_RUNS_DIR" in line


# -- 9: the student experiment reads every master summary safely ---------------------------------
def test_9_a_torn_master_summary_is_skipped(tmp_path, capsys):
    from trainers.tune import latest_summary

    good = tmp_path / "master_v464_20260101-000000_aaaa"
    good.mkdir()
    (good / "summary.json").write_text(json.dumps({"experiment": "master_v464",
                                                   "finished": 1.0, "name": good.name}))
    for i, text in enumerate(['{"experiment": "master_v464", "fini', "[1, 2]", ""]):
        torn = tmp_path / f"master_v464_20260102-00000{i}_bbbb"
        torn.mkdir()
        (torn / "summary.json").write_text(text)
    assert latest_summary(tmp_path, "master_v464")["name"] == good.name
    err = capsys.readouterr().err
    assert err.count("not a readable run summary") == 3 and "Traceback" not in err


# -- 10: the kill report shows the notices ------------------------------------------------------
def test_10_kill_report_shows_what_rules_cannot_see(tmp_path, capsys, monkeypatch):
    from monitor import console as console_module

    monkeypatch.setattr(console_module.console, "size", (300, 50))
    run = monitor.LoopMonitor("rel", signals={"train_loss": "loss", "validation": "val_loss"},
                              rules=["builtin"], budget=10, storage=tmp_path)
    for _ in range(6):
        run.report({"loss": 1.0, "val_los": 1.0}, trial="typo")  # validation never reported
    run.report({"loss": float("nan")}, trial="nan")
    summary = run.close()
    assert summary["notices"]
    capsys.readouterr()
    for fmt in ("table", "markdown", "json"):
        assert cli(["kill-report", str(run.run_dir), "--format", fmt]) == 0
        out = capsys.readouterr().out
        for notice in summary["notices"]:
            assert notice.split(":")[0] in out, (fmt, notice)
    assert report.build(run.run_dir)["notices"] == summary["notices"]


# -- 14, 15: monitor label ----------------------------------------------------------------------
def _labelled_run(tmp_path: Path) -> Path:
    run = loop(tmp_path)
    healthy(run, "t1", 2)
    run.close()
    return run.run_dir


def test_14_label_on_a_read_only_store_says_so(tmp_path, capsys):
    run_dir = _labelled_run(tmp_path)
    store = run_dir / "monitor.sqlite"
    for p in run_dir.iterdir():
        if p.name.startswith("monitor.sqlite-"):
            p.unlink()
    if os.geteuid() == 0:
        if not (_chattr("+i", store) and _chattr("+i", run_dir)):
            pytest.skip("chattr +i is not available here")
    else:
        store.chmod(0o444)
        run_dir.chmod(0o555)
    try:
        code = cli(["label", str(run_dir), "t1", "--failure", "divergence"])
    finally:
        if os.geteuid() == 0:
            _chattr("-i", run_dir), _chattr("-i", store)
        else:
            run_dir.chmod(0o755), store.chmod(0o644)
    err = capsys.readouterr().err
    assert code == 2 and "damaged" not in err and "cannot be written" in err
    assert "read-only" in err


@pytest.mark.parametrize("name", ["Divergence", "x; DROP TABLE trials", "", "a" * 80, "healthy",
                                  "new\nline", "dead-relu"])
def test_15_label_accepts_only_failure_names(tmp_path, capsys, name):
    run_dir = _labelled_run(tmp_path)
    code = cli(["label", str(run_dir), "t1", "--failure", name])
    assert code == 2
    assert cli(["label", str(run_dir), "t1", "--failure", "dead_relu_collapse"]) == 0
    with RunStore(run_dir, create=False) as store:
        assert store.trials()[0]["outcome"] == "dead_relu_collapse"


def test_15_label_checks_the_name_against_the_known_failures(tmp_path, capsys):
    """A typo of a known failure (which would teach ``calibrate`` a failure nobody has) is
    refused with the closest known name; ``--new`` takes a name no rule names yet."""
    run_dir = _labelled_run(tmp_path)
    assert cli(["label", str(run_dir), "t1", "--failure", "dead_relu_colapse"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "did you mean 'dead_relu_collapse'?" in line and "--new" in line
    assert "divergence" in line  # the known names are listed
    with RunStore(run_dir, create=False) as store:
        assert store.trials()[0]["outcome"] != "dead_relu_colapse"
    assert cli(["label", str(run_dir), "t1", "--failure", "tokenizer_drift", "--new"]) == 0
    assert cli(["label", str(run_dir), "t1", "--failure", "tokenizer_drift"]) == 0  # now known
    assert cli(["label", str(run_dir), "t1", "--failure", "divergence"]) == 0


# -- 16: grace ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["5 or 6 or 7%", "5 or 6", "or 5%", "5 or 7% or 8%"])
def test_16_grace_with_more_than_two_parts_is_refused(text):
    with pytest.raises(ValueError, match="grace: expected"):
        parse_grace(text)
    assert parse_grace("5 or 20%").iterations == 5


# -- 17: the exporter's host ---------------------------------------------------------------------
def test_17_an_unresolvable_exporter_host_is_named(tmp_path):
    exporter = Exporter("e", "r", host="no-such-host.invalid", port=0, sd_dir=tmp_path)
    with pytest.raises(ExporterError) as info:
        exporter.start()
    message = str(info.value)
    assert "does not resolve" in message and "MONITOR_EXPORTER_HOST" in message
    assert "choose another port" not in message


@pytest.mark.parametrize("host, words", [
    ("192.0.2.77", "is not an address of this machine"),  # TEST-NET-1: never local
    ("two\nlines", "is not a host name or address"),
    (f"http://admin:{SECRET}@127.0.0.1", "is not a host name or address"),
])
def test_17_a_host_the_exporter_cannot_serve_on_is_named_not_the_port(tmp_path, host, words):
    exporter = Exporter("e", "r", host=host, port=0, sd_dir=tmp_path)
    with pytest.raises(ExporterError) as info:
        exporter.start()
    message = str(info.value)
    assert words in message and "MONITOR_EXPORTER_HOST" in message, message
    assert "choose another port" not in message and SECRET not in message
    assert "\n" not in message


# -- 18: names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["two\nlines", "cr\r", "esc\x1b[2J", "bad\udcff", "tab\t"])
def test_18_control_characters_never_reach_run_directories(tmp_path, name):
    with pytest.raises(ValueError, match="no control characters"):
        monitor.LoopMonitor(name, storage=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_18_a_variant_name_with_a_line_break_is_refused_with_its_line(tmp_path):
    from heuristics.yamlfile import ConfigError
    from trainers import experiment

    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent("""\
        trainer: master
        metric: val_logmel
        mode: min
        max_iterations: 2
        variants:
          - name: "ok"
          - name: "two\\nlines"
        """))
    with pytest.raises(ConfigError, match=r"exp.yaml:7: .*no control characters"):
        experiment.load(str(path))


# -- 19: a plain loop SIGKILLed between the store and the log ------------------------------------
KILLED_LOOP = """
import monitor
run = monitor.LoopMonitor("crashy", signals={{"train_loss": "loss"}}, rules=["builtin"],
                          budget=10, storage={storage!r})
run.report({{"loss": 1.0}}, trial="t")
run.report({{"loss": float("nan")}}, trial="t")
"""


def test_19_a_loop_killed_between_store_and_log_is_repaired_by_the_next(tmp_path):
    env = {**os.environ, "MONITOR_CRASH_AT": "kill:after-store"}
    proc = subprocess.run([sys.executable, "-c", KILLED_LOOP.format(storage=str(tmp_path))],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (crashed,) = tmp_path.glob("crashy_*")
    log_path = crashed / "heuristics" / "verdicts.jsonl"
    assert not VerdictLog(log_path).read()  # the kill is in the store only
    run = monitor.LoopMonitor("crashy", signals={"train_loss": "loss"}, rules=["builtin"],
                              storage=tmp_path)
    logged = VerdictLog(log_path).read()
    assert [(v["trial"], v["rule"]) for v in logged] == [("t", "divergence")]
    run.close()
    monitor.LoopMonitor("crashy", storage=tmp_path).close()  # repaired once, never twice
    assert len(VerdictLog(log_path).read()) == 1


def test_19_a_live_run_is_not_touched_by_another_monitor(tmp_path):
    first = loop(tmp_path, "live")
    first.report({"loss": float("nan")}, trial="t")
    first.recorder.log.path.write_text("")  # as if the log were behind: a live run is its own
    second = loop(tmp_path, "live")
    assert VerdictLog(first.recorder.log.path).read() == []
    second.close()
    first.close()



# -- 20: nested windows -------------------------------------------------------------------------
@pytest.mark.parametrize("expr, reads", [
    ("avg_over(max_over(loss, 10000), 10000) > 1", 20000),
    ("max_over(zscore(loss, 100), 9950) > 1", 10050),
    ("avg_over(loss, 6000) > 1 and min_over(loss, 6000) < 0", 12000),
])
def test_20_windows_that_read_too_much_per_report_are_refused(tmp_path, capsys, expr, reads):
    path = tmp_path / "rules.yaml"
    path.write_text(f"groups:\n  - name: g\n    rules:\n      - name: r\n        expr: '{expr}'\n"
                    "        labels: {action: warn, failure: f}\n")
    assert cli(["rules", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: rule 'r': expr: its windows read {reads} earlier reports" in err


def test_20_nested_windows_within_the_limit_load():
    from heuristics.expr import parse
    from heuristics.rules import window_reads

    assert window_reads(parse("avg_over(max_over(loss, 100), 1000) > 1")) == 1100
    assert window_reads(parse("change(avg_over(loss, 10), 5000) > 1")) == 11
    assert window_reads(parse("avg_over(loss, 10000) > 1")) == 10000


# Long windows are computed incrementally (``heuristics.expr._sliding``): the same value as the
# plain fold (min/max bit for bit, NaN included; avg the correctly rounded mean), through
# replays of iterations, restores and nested windows, at a cost that does not grow with history.
SLIDING_EXPRS = ["min_over(x, {n})", "max_over(x, {n})", "avg_over(x, {n})",
                 "avg_over(max_over(x, {n}), {m})", "min_over(avg_over(x, {m}), {n})",
                 "max_over(zscore(x, 5), {n})"]


def _report(seq: int, value):
    from heuristics.expr import Report

    r = Report(seq + 1, float(seq), {}, {} if value is None else {"x": value})
    r.seq = seq
    return r


def overflowed(got, want) -> bool:
    """The plain fold's running sum overflowed (1e308 + 1e308); the exact mean did not."""
    import math

    return want is not None and math.isinf(want) and got is not None and math.isfinite(got) \
        and abs(got) > 1e300


def _same(a, b, signed: bool = False) -> bool:
    import math

    return (a is None and b is None) or (a is not None and b is not None and (
        (a == b and (not signed or math.copysign(1, a) == math.copysign(1, b)))
        or (a != a and b != b)))


@pytest.mark.parametrize("template", SLIDING_EXPRS)
def test_20_long_windows_equal_the_plain_fold(template, monkeypatch):
    import math
    import random
    from fractions import Fraction

    from heuristics import expr as expr_module
    from heuristics.expr import Report, annotate, evaluate, parse

    rng = random.Random(template)
    n, m = 70, 66
    text = template.format(n=n, m=m)
    fast_tree, plain_tree = parse(text), parse(text)
    annotate(fast_tree), annotate(plain_tree)
    fast: list[Report] = []
    plain: list[Report] = []
    values = [0.0, -0.0, 1.0, -1.0, 5e-324, math.inf, -math.inf, math.nan, None]
    if template.count("(") == 1:  # one window over x: there the plain sum may overflow
        values += [1e308, -1e308]
    for step in range(600):
        if step % 97 == 96:  # a restored trial replays iterations after its checkpoint
            cut = rng.randint(1, 40)
            del fast[-cut:], plain[-cut:]
        if step % 151 == 150:  # a restored driver: records reloaded, no running state
            fast = [Report.from_dict(r.to_dict()) for r in fast[-(n + m + 32):]]
            plain = plain[-(n + m + 32):]
            for seq, r in enumerate(fast):
                r.seq = seq
        if 200 <= step < 400:  # ties of 0.0 and -0.0, NaN first in the window, gaps
            value = rng.choice([0.0, -0.0, math.nan, None, 1.0])
        else:
            value = rng.choice(values) if rng.random() < 0.2 else rng.uniform(-10, 10)
        seq = fast[-1].seq + 1 if fast else 0
        fast.append(_report(seq, value))
        plain.append(_report(seq, value))
        got = evaluate(fast_tree, fast, "r")
        monkeypatch.setattr(expr_module, "SLIDING_FROM", 10 ** 9)
        want = evaluate(plain_tree, plain, "r")
        monkeypatch.undo()
        if text.startswith("avg_over(x"):
            window = [r.scalars["x"] for r in plain[-n:] if "x" in r.scalars]
            finite = [v for v in window if math.isfinite(v)]
            if window and len(finite) == len(window):
                exact = float(sum(map(Fraction, finite)) / len(finite))
                assert got == exact, (step, got, exact)
            assert _same(got, want) or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-300) \
                or overflowed(got, want), (step, got, want)
        elif text.startswith(("min_over(x", "max_over(x")):
            assert _same(got, want, signed=True), (step, got, want)  # -0.0 too
        else:
            assert _same(got, want) or math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) \
                or overflowed(got, want), (step, got, want)


def test_20_the_cost_of_a_report_does_not_grow_with_history(monkeypatch):
    """Earlier reports read per report by a rule of nested long windows: the same at report
    300 and at report 3,000 (the plain fold read 600 and 6,000)."""
    from heuristics import expr as expr_module
    from heuristics.engine import RuleEngine
    from heuristics.rules import load_rules_text

    rules = load_rules_text(
        "groups:\n  - name: g\n    rules:\n      - name: r\n        expr: "
        "'avg_over(max_over(loss, 4000), 4000) > 1e9 or min_over(loss, 2000) < -1e9'\n"
        "        labels: {action: warn, failure: f}\n", "nested.yaml")
    engine = RuleEngine(rules, vocabulary=monitor.Vocabulary(train_loss="loss"))
    reads = []
    past = expr_module._past

    def counted(*args):
        reads[-1] += 1
        return past(*args)

    monkeypatch.setattr(expr_module, "_past", counted)
    for i in range(1, 3001):
        reads.append(0)
        engine.observe("t", {"loss": (i * 7919 % 1000) / 1000, "training_iteration": i})
    late = max(reads[2900:])
    assert max(reads[250:300]) <= 8 and late <= 8, (max(reads[250:300]), late)
    assert sum(reads) < 8 * 3000 + 2 * 4000  # each block folded once
