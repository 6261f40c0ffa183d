"""The early-kill scheduler on scripted result sequences (stub Trial, mock controller, as in
Ray's own scheduler tests)."""

from __future__ import annotations

import math
from unittest.mock import MagicMock

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from heuristics.rules import load_rules
from monitor.driver.rulestate import RuleStateStore
from monitor.driver.scheduler import HeuristicScheduler
from monitor.driver.verdicts import VerdictLog
from monitor.serving.exporter import Exporter

RULES = """\
groups:
  - name: test
    rules:
      - name: low_d
        expr: avg_over(loss_d, 2) < 0.01
        for: 2
        grace: 3
        labels: {action: kill, failure: discriminator_overpowering}
        annotations: {summary: "D loss {{ $value }}"}
      - name: quiet
        expr: power_ratio_db < -12
        for: 1
        labels: {action: warn, failure: silence_collapse}
      - name: nan
        expr: nonfinite(loss_g) or nonfinite(val_logmel)
        labels: {action: kill, failure: divergence}
"""


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rules([str(path)])


def result(i, loss_d=0.5, power=-3.0, loss_g=1.0, val=2.0):
    return {"training_iteration": i, "time_total_s": float(i), "loss_d": loss_d,
            "loss_g": loss_g, "val_logmel": val, "health/model/power_ratio_db": power,
            "health/layers/enc/dead_ratio": 0.1}


def make(rules, tmp_path, **kwargs):
    sched = HeuristicScheduler(rules, tmp_path / "run", "exp", budget=20, run="run1", **kwargs)
    sched.set_search_properties("val_logmel", "min")
    return sched


def feed(sched, trial, results):
    controller = MagicMock()
    return [sched.on_trial_result(controller, trial, r) for r in results]


def test_kill_after_for_and_grace(rules, tmp_path):
    sched, trial = make(rules, tmp_path), Trial("__fake", stub=True)
    # low D loss from iteration 1: the window average crosses at 2, "for: 2" is met at 3,
    # and grace 3 allows action from iteration 3 on.
    decisions = feed(sched, trial, [result(i, loss_d=0.001) for i in range(1, 6)])
    assert decisions[:3] == [TrialScheduler.CONTINUE] * 2 + [TrialScheduler.STOP]
    log = VerdictLog(tmp_path / "run" / "heuristics" / "verdicts.jsonl").read()
    kill = [v for v in log if v["action"] == "kill"]
    assert len(kill) == 1 and kill[0]["iteration"] == 3 and kill[0]["rule"] == "low_d"
    assert kill[0]["trial"] == trial.trial_id
    assert kill[0]["window"]["loss_d"] == [[1, 0.001], [2, 0.001], [3, 0.001]]
    assert "stopped at iteration 3 (15% of its 20-iteration budget)" in kill[0]["reason"]
    assert "D loss 0.001" in kill[0]["reason"]


def test_streak_is_broken_by_a_report_where_the_condition_fails(rules, tmp_path):
    sched, trial = make(rules, tmp_path), Trial("__fake", stub=True)
    losses = [0.001, 0.001, 0.5, 0.001, 0.001, 0.001]
    decisions = feed(sched, trial, [result(i, loss_d=x) for i, x in enumerate(losses, 1)])
    # avg_over(.., 2) is high at 3 and 4 (0.5 in the window); holds again at 5 and 6.
    assert decisions == [TrialScheduler.CONTINUE] * 5 + [TrialScheduler.STOP]


def test_warn_records_once_per_streak_and_never_stops(rules, tmp_path):
    sched, trial = make(rules, tmp_path), Trial("__fake", stub=True)
    powers = [-15, -15, -3, -14]
    decisions = feed(sched, trial, [result(i, power=p) for i, p in enumerate(powers, 1)])
    assert decisions == [TrialScheduler.CONTINUE] * 4
    warns = VerdictLog(tmp_path / "run" / "heuristics" / "verdicts.jsonl").read()
    assert [(v["rule"], v["iteration"]) for v in warns] == [("quiet", 1), ("quiet", 4)]


def test_non_finite_metric_is_stopped(rules, tmp_path):
    """ASHA never stops a NaN trial; this scheduler must."""
    sched, trial = make(rules, tmp_path), Trial("__fake", stub=True)
    decisions = feed(sched, trial, [result(1), result(2, loss_g=math.nan, val=math.nan)])
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.STOP]


def test_shadow_mode_records_would_be_kills_and_stops_nothing(rules, tmp_path):
    sched, trial = make(rules, tmp_path, shadow=True), Trial("__fake", stub=True)
    decisions = feed(sched, trial, [result(i, loss_d=0.001) for i in range(1, 7)])
    assert set(decisions) == {TrialScheduler.CONTINUE}
    log = VerdictLog(tmp_path / "run" / "heuristics" / "verdicts.jsonl").read()
    assert [(v["rule"], v["iteration"], v["shadow"]) for v in log] == [("low_d", 3, True)]
    assert "would have been stopped (shadow mode)" in log[0]["reason"]


def test_delegates_to_a_wrapped_scheduler_when_no_rule_fires(rules, tmp_path):
    inner = MagicMock()
    inner.on_trial_result.return_value = TrialScheduler.PAUSE
    sched, trial = make(rules, tmp_path, scheduler=inner), Trial("__fake", stub=True)
    assert feed(sched, trial, [result(1)]) == [TrialScheduler.PAUSE]
    assert inner.set_search_properties.called
    assert feed(sched, trial, [result(2, loss_g=math.nan)]) == [TrialScheduler.STOP]
    assert inner.on_trial_result.call_count == 1  # a killed result is not passed on
    inner.on_trial_remove.assert_called_once()


def test_wraps_asha(rules, tmp_path):
    sched = make(rules, tmp_path, scheduler=ASHAScheduler(max_t=20, grace_period=1))
    trial = Trial("__fake", stub=True)
    sched.on_trial_add(MagicMock(), trial)
    assert feed(sched, trial, [result(1)]) == [TrialScheduler.CONTINUE]
    assert "AsyncHyperBand" in sched.debug_string() or "ASHA" in sched.debug_string()


def test_state_survives_a_restart(rules, tmp_path):
    """A fresh scheduler (as after Tuner.restore) reloads kills and streaks from disk."""
    first = make(rules, tmp_path)
    killed, pending = Trial("__fake", stub=True), Trial("__fake", stub=True)
    feed(first, killed, [result(i, loss_d=0.001) for i in range(1, 4)])  # killed at 3
    feed(first, pending, [result(i, loss_d=0.001) for i in range(1, 3)])  # streak of 1 at 2
    second = make(rules, tmp_path)
    # The killed trial is never resumed and never killed twice.
    assert feed(second, killed, [result(4, loss_d=0.001)]) == [TrialScheduler.STOP]
    # The pending trial's streak continues: one more low report completes "for: 2".
    assert feed(second, pending, [result(3, loss_d=0.001)]) == [TrialScheduler.STOP]
    log = VerdictLog(tmp_path / "run" / "heuristics" / "verdicts.jsonl").read()
    kills = [(v["trial"], v["iteration"]) for v in log if v["action"] == "kill"]
    assert kills == [(killed.trial_id, 3), (pending.trial_id, 3)]


def test_replayed_iterations_after_restore_roll_back_the_streak(rules, tmp_path):
    sched, trial = make(rules, tmp_path), Trial("__fake", stub=True)
    feed(sched, trial, [result(1, loss_d=0.001), result(2, loss_d=0.001)])
    # Restored from a checkpoint at iteration 1: iteration 2 comes again, now healthy.
    assert feed(sched, trial, [result(2, loss_d=0.5), result(3, loss_d=0.001)]) == \
        [TrialScheduler.CONTINUE] * 2
    state = RuleStateStore(tmp_path / "run", keep=100).load()[trial.trial_id]
    assert [r["iteration"] for r in state["reports"]] == [1, 2, 3]


def test_kills_are_counted_in_the_exporter(rules, tmp_path):
    exporter = Exporter("exp", "run1")
    exporter.start()
    try:
        sched, trial = make(rules, tmp_path), Trial("__fake", stub=True)
        feed(sched, trial, [result(1, loss_g=math.nan)])
        assert exporter.snapshot.kills() == {("exp", "nan", "divergence"): 1,
                                             ("exp", "low_d", "discriminator_overpowering"): 0}
        assert exporter.snapshot.warnings() == {("exp", "quiet", "silence_collapse"): 0}
    finally:
        exporter.stop()


def test_torn_last_log_line_is_skipped(tmp_path):
    log = VerdictLog(tmp_path / "v.jsonl")
    log.append({"rule": "a"})
    with open(log.path, "a") as f:
        f.write('{"rule": "b", "trunc')
    assert log.read() == [{"rule": "a"}]


def test_tampered_rule_state_runs_no_code_and_its_trial_starts_afresh(rules, tmp_path, caplog):
    """A record holding a reference to a function (a pickle that would call it) is refused:
    nothing runs, the trial's rules start afresh, the kill recorded in the verdicts stays."""
    sched, killed, other = make(rules, tmp_path), Trial("__fake", stub=True), \
        Trial("__fake", stub=True)
    feed(sched, killed, [result(1, loss_g=math.nan)])  # killed by "nan" at 1
    feed(sched, other, [result(1, loss_d=0.001), result(2, loss_d=0.001)])
    sched.state.close()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle
    import sqlite3
    with sqlite3.connect(tmp_path / "run" / "heuristics" / "state.sqlite") as db:
        db.execute("UPDATE records SET record = ? WHERE trial = ? AND iteration = 1",
                   (pickle.dumps({"x": Evil()}), other.trial_id))
    second = make(rules, tmp_path)
    assert feed(second, killed, [result(2)]) == [TrialScheduler.STOP]
    # "other" starts afresh: its earlier low reports are forgotten, so two more are needed
    # (and grace 3) before "low_d" holds for 2.
    assert feed(second, other, [result(3, loss_d=0.001)]) == [TrialScheduler.CONTINUE]
    assert not marker.exists()
    assert "unreadable" in caplog.text and other.trial_id in caplog.text


def test_rule_state_of_an_older_format_still_loads(tmp_path):
    """States written as JSON text (before records were pickled) are read as they were."""
    import json
    import sqlite3
    store = RuleStateStore(tmp_path / "run", keep=10)
    store.append("t", {"record": {"iteration": 1, "x": 1.0}, "first": {"r": 1}})
    store.close()
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE records SET record = ?", (json.dumps({"iteration": 1, "x": 2.0}),))
    assert RuleStateStore(tmp_path / "run", keep=10).load()["t"]["reports"] == \
        [{"iteration": 1, "x": 2.0}]
