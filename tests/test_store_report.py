"""Run store, kill report, replay and calibration."""

from __future__ import annotations

import json
import math

import pytest

from heuristics.rules import load_rules
from monitor.after import calibrate, report
from monitor.after.replay import replay
from monitor.cli import main
from monitor.store import RunStore, StoreError


def test_store_round_trip_keeps_nan_and_structure(tmp_path):
    store = RunStore(tmp_path, batch_size=3)
    store.set_meta(experiment="e", budget=10)
    store.upsert_trial("t1", variant="v", config={"a": 1}, budget=10)
    result = {"training_iteration": 1, "time_total_s": 2.0, "loss_g": math.nan,
              "health": {"layers": {"enc": {"dead_ratio": 0.5}},
                         "model": {"power_ratio_db": -3.0}}}
    store.add_result("t1", result)  # 4 rows: over the batch size, written at once
    assert store._pending == []
    store.close()
    store = RunStore(tmp_path, create=False)
    [r] = store.results("t1")
    assert r["health/layers/enc/dead_ratio"] == 0.5
    assert r["health/model/power_ratio_db"] == -3.0
    assert math.isnan(r["loss_g"])
    assert store.trials()[0]["config"] == {"a": 1}
    assert store.meta() == {"experiment": "e", "budget": 10}


def test_verdicts_are_committed_once(tmp_path):
    store = RunStore(tmp_path)
    v = {"trial": "t1", "iteration": 3, "wall_time": 1.0, "rule": "r", "failure": "f",
         "action": "kill", "shadow": False, "reason": "Trial t1 stopped."}
    store.add_verdict(v)
    store.add_verdict(v)  # a replayed decision after a restore is not duplicated
    other = RunStore(tmp_path)  # another connection (the report) sees it at once
    assert other.verdicts() == [v]


def test_missing_and_damaged_stores_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="no run store here"):
        RunStore(tmp_path / "nothing", create=False)
    (tmp_path / "monitor.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="damaged or not a run store"):
        RunStore(tmp_path, create=False)
    assert main(["kill-report", str(tmp_path)]) == 2
    assert main(["kill-report", "nope", "--storage", str(tmp_path)]) == 2


@pytest.mark.slow
def test_kill_report_and_replay_of_a_real_run(early_kill_run, tmp_path, capsys):
    summary, run_dir = early_kill_run
    data = report.build(run_dir)
    live = {t["trial_id"]: t["killed"] for t in summary["trials"] if t.get("killed")}
    assert {k["trial"]: (k["rule"], k["iteration"]) for k in data["kills"]} == \
        {t: (k["rule"], k["iteration"]) for t, k in live.items()}
    assert data["totals"]["budget_iterations"] == 18
    assert data["totals"]["saved_iterations"] == sum(6 - k["iteration"] for k in live.values())
    assert all(k["saved_hours"] > 0 and k["values"] for k in data["kills"])
    # One implementation, two drivers: replaying the built-in rules over the recorded history
    # kills the same trials at the same iterations.
    result = replay([run_dir], load_rules(["builtin"]))
    assert {t["trial"]: (t["killed_by"], t["kill_iteration"]) for t in result["trials"]
            if t["killed_by"]} == {t: (k["rule"], k["iteration"]) for t, k in live.items()}
    # Formats and HTML.
    capsys.readouterr()
    assert main(["kill-report", str(run_dir), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["killed"] == 2
    assert main(["kill-report", str(run_dir), "--format", "markdown",
                 "--html", str(tmp_path / "r.html")]) == 0
    assert "| dead_relu_collapse |" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    assert "data:image/svg+xml" in page and "stopped at iteration" in page
    # Labels change the ground truth replay scores against.
    healthy = next(t for t in summary["trials"] if t["variant"] == "healthy")
    assert main(["label", str(run_dir), healthy["trial_id"], "--healthy"]) == 0
    scored = replay([run_dir], load_rules(["builtin"]))
    assert scored["precision"] == 1.0 and scored["recall"] == 1.0 and scored["false_kills"] == 0


@pytest.mark.slow
def test_calibration_on_real_trainings(master_runs, tmp_path):
    store = RunStore(tmp_path)
    store.set_meta(experiment="master_v464", budget=10)
    variants = {"healthy": "healthy", "healthy_leaky": "healthy",
                "dead_relu_bias_init": "dead_relu_collapse",
                "dead_relu_high_lr": "dead_relu_collapse", "silence_collapse": "silence_collapse"}
    for variant, outcome in variants.items():
        for r in master_runs(variant, 8):
            store.add_result(variant, r)
        store.upsert_trial(variant, variant=variant, budget=10, outcome=outcome,
                           outcome_source="label")
    store.close()
    trials = calibrate.load([tmp_path])
    rows = calibrate.analyse(trials)
    assert rows and rows[0]["recall"] > 0
    dead = next(r for r in rows if r["expr"] == "max(dead_ratio)")
    assert dead["direction"] == "above" and dead["auc"] > 0.9
    out = tmp_path / "suggested.yaml"
    calibrate.write_rules(out, calibrate.suggest(rows, trials), ["real"])
    rules = load_rules([str(out)])  # accepted by `monitor rules check`
    assert rules and all("precision" in r.annotations["calibration"] for r in rules)
    scored = replay([tmp_path], rules)
    assert scored["false_kills"] == 0  # zero false kills on the history it came from
    assert scored["recall"] > 0


def test_report_of_a_run_without_kills_says_so(tmp_path, capsys):
    store = RunStore(tmp_path / "exp_20260101-000000")
    store.set_meta(experiment="exp", run="exp_20260101-000000", budget=5)
    store.upsert_trial("t1", variant="healthy", budget=5, iterations=5)
    store.add_verdict({"trial": "t1", "iteration": 3, "wall_time": 1.0, "rule": "quiet",
                       "failure": "silence_collapse", "action": "warn", "shadow": False,
                       "reason": "Trial t1 warned."})
    store.close()
    assert main(["kill-report", "exp", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No trial of exp_20260101-000000 was killed by a rule (1 trials)" in out
    assert "quiet (silence_collapse): 1 warnings on 1 trial(s)" in out
