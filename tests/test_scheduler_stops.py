"""The wrapped scheduler's stops as its verdicts: unit tests with Ray's real ASHA and median
rule on stub trials (a MagicMock controller, as Ray's own scheduler tests), the summary, the
kill report (table, JSON, markdown, HTML) and compute saved per deciding policy; then one real
Ray Tune run with ASHA (grace 1) stopping trials of a tiny MLP."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from heuristics.vocabulary import Vocabulary
from monitor.after import report, report_page
from monitor.cli import main
from monitor.driver.recording import StoreWriter
from monitor.driver.scheduler import HeuristicScheduler, kill_of
from monitor.driver.summary import print_summary, summarise
from monitor.driver.verdicts import VerdictLog
from monitor.serving.exporter import Exporter
from monitor.store import RunStore

VOCAB = Vocabulary(train_loss="loss", validation="val_loss", mode="min")


def make(tmp_path, inner, budget=20, run="run_stops", run_dir=None):
    sched = HeuristicScheduler([], run_dir or tmp_path / "run", "exp", budget=budget, run=run,
                               scheduler=inner, vocabulary=VOCAB)
    sched.set_search_properties("val_loss", "min")
    return sched


def report_of(i, val):
    return {"training_iteration": i, "time_total_s": 2.0 * i, "loss": val, "val_loss": val}


def logged(tmp_path):
    return VerdictLog(tmp_path / "run" / "heuristics" / "verdicts.jsonl").read()


def add(sched, controller, n):
    trials = [Trial("__fake", stub=True) for _ in range(n)]
    for t in trials:
        sched.on_trial_add(controller, t)
    return trials


def test_an_asha_stop_is_recorded_as_its_verdict_with_the_rung_cutoff(tmp_path):
    controller = MagicMock()
    sched = make(tmp_path, ASHAScheduler(grace_period=1, max_t=20, reduction_factor=2))
    good, bad = add(sched, controller, 2)
    assert sched.on_trial_result(controller, good, report_of(1, 1.0)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(controller, bad, report_of(1, 3.0)) == TrialScheduler.STOP
    [v] = logged(tmp_path)
    assert (v["rule"], v["policy"], v["trial"], v["iteration"], v["action"]) == \
        ("ASHAScheduler", "scheduler", bad.trial_id, 1, "kill")
    assert v["failure"] == "below_rung_cutoff" and v["values"] == {"val_loss": 3.0}
    assert v["details"]["cutoff"] == 1.0 and v["details"]["rung"] == 1
    assert v["reason"] == (
        f"Trial {bad.trial_id} stopped at iteration 1 (5% of its 20-iteration budget) by the "
        "wrapped scheduler ASHAScheduler: val_loss was 3 at iteration 1, higher than 1, the "
        "cutoff of its rung at iteration 1 (only the best 1/2 of the 1 trial(s) recorded there "
        "go on; val_loss, min).")
    with RunStore(tmp_path / "run", create=False) as store:  # the store has it too
        assert [s["reason"] for s in store.verdicts("kill")] == [v["reason"]]
    assert kill_of("run_stops", bad.trial_id)["rule"] == "ASHAScheduler"  # Tune's results
    assert kill_of("run_stops", good.trial_id) is None
    assert not Exporter.for_run("run_stops")  # no exporter here; nothing counted elsewhere


def test_a_stop_at_the_budget_or_a_pause_is_no_verdict(tmp_path):
    controller = MagicMock()
    sched = make(tmp_path, ASHAScheduler(grace_period=1, max_t=5, reduction_factor=2),
                 budget=5)
    [trial] = add(sched, controller, 1)
    decisions = [sched.on_trial_result(controller, trial, report_of(i, 1.0 / i))
                 for i in range(1, 6)]
    assert decisions == [TrialScheduler.CONTINUE] * 4 + [TrialScheduler.STOP]  # its max_t
    assert logged(tmp_path) == []
    pbt_like = MagicMock()
    pbt_like.on_trial_result.return_value = TrialScheduler.PAUSE
    sched = make(tmp_path, pbt_like)
    assert sched.on_trial_result(controller, trial, report_of(1, 1.0)) == TrialScheduler.PAUSE
    assert logged(tmp_path) == []


def test_asha_max_t_below_the_budget_is_named(tmp_path):
    controller = MagicMock()
    sched = make(tmp_path, ASHAScheduler(grace_period=1, max_t=3, reduction_factor=2))
    [trial] = add(sched, controller, 1)
    for i in (1, 2, 3):
        decision = sched.on_trial_result(controller, trial, report_of(i, 1.0))
    assert decision == TrialScheduler.STOP
    [v] = logged(tmp_path)
    assert v["failure"] == "reached_max_t" and v["iteration"] == 3
    assert "it reached ASHAScheduler's max_t of 3 iterations, before its budget; val_loss " \
        "was 1 at iteration 3" in v["reason"]


def test_a_median_rule_stop_names_the_median(tmp_path):
    controller = MagicMock()
    inner = MedianStoppingRule(time_attr="training_iteration", grace_period=1,
                               min_samples_required=1, hard_stop=True)
    sched = make(tmp_path, inner)
    good, bad = add(sched, controller, 2)
    for i in (1, 2):
        sched.on_trial_result(controller, good, report_of(i, 1.0))
    assert sched.on_trial_result(controller, bad, report_of(1, 3.0)) == TrialScheduler.STOP
    [v] = logged(tmp_path)
    assert v["rule"] == "MedianStoppingRule" and v["failure"] == "below_median"
    assert "val_loss was 3 at iteration 1; its best so far, 3, was higher than 1, the median " \
        "of the running means of 1 other trial(s) at that time (val_loss, min)" in v["reason"]


def test_a_scheduler_without_reasons_gets_the_plain_sentence(tmp_path):
    inner = MagicMock()
    inner.on_trial_result.return_value = TrialScheduler.STOP
    sched = make(tmp_path, inner)
    [trial] = add(sched, MagicMock(), 1)
    assert sched.on_trial_result(MagicMock(), trial, report_of(4, 0.7)) == TrialScheduler.STOP
    [v] = logged(tmp_path)
    assert v["rule"] == "MagicMock" and v["failure"] == "scheduler_stop"
    assert v["reason"].endswith("by the wrapped scheduler MagicMock: val_loss was 0.7 at "
                                "iteration 4 (MagicMock gives no further reason).")


def test_a_trial_the_scheduler_stops_through_the_controller_is_recorded(tmp_path):
    """HyperBand stops the paused trials of a cut bracket with ``controller.stop_trial``."""
    controller = MagicMock()
    sched = make(tmp_path, None)
    paused, current = add(sched, controller, 2)
    paused.update_last_result(report_of(3, 2.0))

    class CutsTheBracket(MagicMock):
        def on_trial_result(self, tune_controller, trial, result):
            tune_controller.stop_trial(paused)
            return TrialScheduler.CONTINUE

    sched.wrapped = CutsTheBracket()
    assert sched.on_trial_result(controller, current, report_of(3, 1.0)) == \
        TrialScheduler.CONTINUE
    controller.stop_trial.assert_called_once_with(paused)  # Tune still stops it
    [v] = logged(tmp_path)
    assert (v["trial"], v["iteration"], v["rule"]) == (paused.trial_id, 3, "CutsTheBracket")
    assert "val_loss was 2 at iteration 3" in v["reason"]


def test_a_stop_survives_a_restore_and_is_never_resumed(tmp_path):
    controller = MagicMock()
    sched = make(tmp_path, ASHAScheduler(grace_period=1, max_t=20, reduction_factor=2))
    good, bad = add(sched, controller, 2)
    sched.on_trial_result(controller, good, report_of(1, 1.0))
    sched.on_trial_result(controller, bad, report_of(1, 3.0))
    # Tune pickles the scheduler once and does not save its state: a fresh one after restore
    again = make(tmp_path, ASHAScheduler(grace_period=1, max_t=20, reduction_factor=2),
                 run="run_stops_2")
    for t in (good, bad):
        again.on_trial_add(controller, t)
    assert again.stopped(bad.trial_id)["rule"] == "ASHAScheduler"
    assert again.on_trial_result(controller, bad, report_of(2, 3.0)) == TrialScheduler.STOP
    assert len(logged(tmp_path)) == 1  # recorded once


def fake_run(tmp_path):
    """A run of three trials (budget 10): a rule kills one at 3, ASHA stops one at 2 (written
    through the same scheduler and store writer a Tune run uses), one finishes."""
    run_dir = tmp_path / "exp_20260101-000000"
    writer = StoreWriter(run_dir, "exp", run_dir.name, VOCAB, budget=10)
    writer.open()
    rule_kill = {"trial": "killed", "iteration": 3, "wall_time": 1.0, "rule": "divergence",
                 "failure": "divergence", "action": "kill", "shadow": False,
                 "reason": "Trial killed stopped at iteration 3 by rule divergence.",
                 "trial_time_s": 3.0, "values": {"loss": float("nan")}, "budget": 10}
    sched = make(tmp_path, ASHAScheduler(grace_period=1, max_t=10, reduction_factor=2),
                 budget=10, run_dir=run_dir)
    sched.recorder.record(rule_kill)
    controller = MagicMock()
    trials = {name: Trial("__fake", stub=True, trial_id=name)
              for name in ("best", "killed", "asha")}
    for name, t in trials.items():
        sched.on_trial_add(controller, t)
        writer.start(name, name, {})
    values = {"best": [2.0, 1.0, 0.5], "asha": [1.5, 3.0], "killed": [2.0, 2.0, 9.0]}
    for i in range(3):
        for name in ("best", "asha", "killed"):
            if i < len(values[name]):
                r = report_of(i + 1, values[name][i])
                writer.add(name, r)
                if name != "killed":
                    sched.on_trial_result(controller, trials[name], r)
    for i in range(4, 11):
        writer.add("best", report_of(i, 0.4))
    writer.end("best", "TERMINATED", report_of(10, 0.4))
    writer.end("asha", "TERMINATED", report_of(2, 3.0))
    writer.end("killed", "TERMINATED", report_of(3, 9.0))
    writer.close()
    sched.recorder.close()
    return run_dir


def test_summary_and_kill_report_show_the_scheduler_and_count_its_savings(tmp_path, capsys):
    run_dir = fake_run(tmp_path)
    with RunStore(run_dir, create=False) as store:
        status = {t["trial_id"]: (t["status"], t["outcome"]) for t in store.trials()}
    assert status == {"best": ("TERMINATED", None), "killed": ("KILLED", "divergence"),
                      "asha": ("STOPPED", None)}  # a scheduler's stop is no diagnosis
    summary = summarise(run_dir, "exp", VOCAB)
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert trials["asha"]["status"] == "STOPPED" and not trials["asha"].get("killed")
    assert trials["asha"]["stopped"]["by"] == "ASHAScheduler"
    assert trials["asha"]["stopped"]["iteration"] == 2
    assert (summary["kills"], summary["scheduler_stops"]) == (1, 1)
    assert summary["best"]["trial_id"] == "best"
    from rich.console import Console

    console = Console(width=120, record=True)
    print_summary(summary, console)
    assert "stopped: ASHAScheduler @2" in console.export_text()

    data = report.build(run_dir)
    [stop] = data["scheduler_stops"]
    assert (stop["rule"], stop["iteration"], stop["saved_iterations"]) == ("ASHAScheduler", 2, 8)
    assert "higher than 1, the cutoff of its rung at iteration 2" in stop["reason"]
    assert {p["decided_by"]: (p["stops"], p["saved_iterations"]) for p in data["per_policy"]} \
        == {"rules": (1, 7), "ASHAScheduler": (1, 8)}
    assert data["totals"]["saved_iterations"] == 15 and data["totals"]["budget_iterations"] == 30
    rows = {r["trial"]: r for r in data["trial_table"]}
    assert (rows["asha"]["status"], rows["asha"]["decided_by"], rows["asha"]["saved_iterations"]) \
        == ("STOPPED", "ASHAScheduler (wrapped scheduler)", 8)
    line = ("1 of 3 trials killed by rules, 1 stopped by ASHAScheduler; saved 15 of 30 "
            "trial-iterations (50%)")
    assert line in report.totals_line(data) and "(rules 7, ASHAScheduler 8)." in \
        report.totals_line(data)

    assert main(["kill-report", run_dir.name, "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Stopped by the wrapped scheduler" in out and line in out
    assert "Per deciding policy" in out
    assert main(["kill-report", run_dir.name, "--storage", str(tmp_path), "--format",
                 "json"]) == 0
    assert json.loads(capsys.readouterr().out)["scheduler_stops"][0]["iteration"] == 2
    markdown = report.render(data, "markdown")
    assert "| asha | asha | ASHAScheduler | 2/10 | 20% |" in markdown
    page = report_page.render(data, run_dir)
    assert "stopped at iteration 2 of 10 by the wrapped scheduler ASHAScheduler" in page
    assert "the cutoff of its rung at iteration 2" in page


def test_a_stop_no_decision_explains_is_not_attributed(tmp_path):
    run_dir = tmp_path / "exp_20260101-000000"
    store = RunStore(run_dir)
    store.set_meta(experiment="exp", run=run_dir.name, budget=10)
    store.upsert_trial("t1", variant="v", budget=10, iterations=4, status="TERMINATED")
    store.close()
    data = report.build(run_dir)
    [row] = data["trial_table"]
    assert row["decided_by"] == "no recorded decision (a Tune stopper or the trainable)"
    assert row["saved_iterations"] == 0 and data["totals"]["saved_iterations"] == 0


def test_replay_says_unlabelled(tmp_path, capsys):
    run_dir = fake_run(tmp_path)
    assert main(["replay", run_dir.name, "--storage", str(tmp_path), "--rules",
                 "builtin"]) == 0
    out = capsys.readouterr().out
    assert "unlabelled" in out and "None" not in out


def train_mlp(config: dict) -> None:
    """The README's MLP: a learning rate of 0 never improves on the first report."""
    import torch
    from ray import tune
    from torch import nn

    import monitor

    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = x[:, :4].sum(dim=1, keepdim=True).tanh()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=config["variant"]["lr"])
    health = monitor.attach(model)
    for _ in range(6):
        for i in range(0, 256, 64):
            loss = nn.functional.mse_loss(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            health.step()
        with health.paused(), torch.no_grad():
            val = nn.functional.mse_loss(model(x), y).item()
        tune.report({"loss": loss.item(), "val_loss": val, "health": health.collect()})


@pytest.mark.slow
def test_asha_stops_in_a_real_tune_run(ray_session, tmp_path, capsys):
    """One trial at lr 0.05 runs to the budget; the one at lr 0 after it (one trial at a time)
    is stopped by ASHA at its first rung: store, verdict log, summary, Tune's results and the
    kill report name ASHAScheduler and iteration 1, and count the 5 iterations it saved."""
    from ray import tune

    import monitor

    mon = monitor.TuneMonitor("asha_sweep", budget=6, storage=tmp_path, exporter=False,
                              signals=monitor.Vocabulary(train_loss="loss",
                                                         validation="val_loss"),
                              scheduler=ASHAScheduler(grace_period=1, max_t=6,
                                                      reduction_factor=2))
    variants = [{"name": "good", "lr": 0.05}, {"name": "frozen", "lr": 0.0}]
    tuner = tune.Tuner(train_mlp, param_space={"variant": tune.grid_search(variants)},
                       tune_config=mon.tune_config(max_concurrent_trials=1),
                       run_config=mon.run_config(verbose=0))
    summary = mon.summary(tuner.fit())
    trials = {t["variant"]: t for t in summary["trials"]}
    frozen, good = trials["frozen"], trials["good"]
    assert (frozen["status"], frozen["stopped"]["by"], frozen["stopped"]["iteration"],
            frozen["iterations"]) == ("STOPPED", "ASHAScheduler", 1, 1), frozen
    assert "the cutoff of its rung at iteration 1" in frozen["stopped"]["reason"]
    assert frozen["last"]["monitor_killed"] == "ASHAScheduler"  # Tune's own results
    assert frozen["last"]["monitor_reason"] == frozen["stopped"]["reason"]
    assert good["iterations"] == 6 and not good.get("stopped")  # max_t = budget: no decision
    assert (summary["kills"], summary["scheduler_stops"]) == (0, 1)
    with RunStore(mon.run_dir, create=False) as store:
        assert {t["variant"]: t["status"] for t in store.trials()} == \
            {"good": "TERMINATED", "frozen": "STOPPED"}
        [stored] = store.verdicts("kill")
    [v] = VerdictLog(mon.run_dir / "heuristics" / "verdicts.jsonl").read()
    assert (v["rule"], v["policy"], v["iteration"]) == ("ASHAScheduler", "scheduler", 1)
    assert stored == v
    data = report.build(mon.run_dir)
    assert [(s["rule"], s["iteration"], s["saved_iterations"]) for s in data["scheduler_stops"]] \
        == [("ASHAScheduler", 1, 5)]
    assert {p["decided_by"]: (p["stops"], p["saved_iterations"]) for p in data["per_policy"]} \
        == {"rules": (0, 0), "ASHAScheduler": (1, 5)}
    assert main(["kill-report", str(mon.run_dir)]) == 0
    assert "0 of 2 trials killed by rules, 1 stopped by ASHAScheduler; saved 5 of 12 " \
        "trial-iterations (42%)" in capsys.readouterr().out
