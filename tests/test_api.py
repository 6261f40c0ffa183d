"""The public API: LoopMonitor on real small trainings, TuneMonitor's consistency, vocabulary,
notices for signals nobody declares or reports, unique run directories, store faults."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import monitor
from heuristics.coverage import SignalCoverage, undeclared
from heuristics.expr import LAYER_SIGNALS
from heuristics.results import observe
from heuristics.rules import load_rules
from monitor.driver.run import RunSpec, new_run_dir
from monitor.store import RunStore

VOCAB = monitor.Vocabulary(train_loss="loss", validation="val_loss", mode="min")
USER_RULES = """\
groups:
  - name: mine
    rules:
      - name: d_too_strong
        expr: discriminator_loss < 0.01
        labels: {action: warn, failure: discriminator_overpowering}
      - name: typo_rule
        expr: val_los > 10
        labels: {action: warn, failure: divergence}
"""


def train_mlp(lr: float, run: monitor.LoopMonitor, trial: str, epochs: int = 6):
    """A small real MLP regression; reports once per epoch until the monitor says stop."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x[:, :2].sum(dim=1, keepdim=True).tanh()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    health = monitor.attach(model, every=2)
    decisions = []
    try:
        for _ in range(epochs):
            for i in range(0, 256, 32):
                loss = nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                health.step()
            with health.paused(), torch.no_grad():
                val = nn.functional.mse_loss(model(x), y).item()
            decision = run.report({"loss": loss.item(), "val_loss": val}, health=health,
                                  trial=trial)
            decisions.append(decision)
            if decision.stop:
                break
    finally:
        health.close()
    return decisions


def test_loop_monitor_kills_the_broken_training_and_records_it(tmp_path):
    run = monitor.LoopMonitor("mlp", signals=VOCAB, rules=["builtin"], budget=6,
                              storage=tmp_path)
    healthy = train_mlp(0.05, run, "healthy")
    broken = train_mlp(8.0, run, "broken")
    summary = run.close()
    assert len(healthy) == 6 and not any(d.stop for d in healthy)
    assert broken[-1].stop and broken[-1].rule == "divergence"
    assert "Trial broken stopped at iteration" in broken[-1].reason
    with RunStore(run.run_dir, create=False) as store:
        trials = {t["trial_id"]: t for t in store.trials()}
        assert trials["broken"]["status"] == "KILLED"
        assert trials["healthy"]["status"] == "TERMINATED"
        assert [v["trial"] for v in store.verdicts("kill")] == ["broken"]
        assert [r["training_iteration"] for r in store.results("healthy")] == list(range(1, 7))
        assert store.meta()["vocabulary"]["train_loss"] == "loss"
    assert summary["best"]["trial_id"] == "healthy"
    # A killed trial keeps saying stop, and its later reports are ignored.
    assert run.engine.killed("broken") is not None
    from monitor.cli import main

    assert main(["kill-report", str(run.run_dir), "--format", "json"]) == 0


def test_tune_monitor_parts_agree(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="training_iteration", max_t=10)
    mon = monitor.TuneMonitor("sweep", signals=VOCAB, rules=["builtin"], budget=10,
                              scheduler=asha, storage=tmp_path, exporter=True)
    try:
        assert mon.run_dir.parent == tmp_path.resolve() and mon.run_dir.is_dir()
        assert mon.scheduler.run == mon.name == mon.exporter_callback.run
        assert mon.scheduler.run_dir == mon.store_callback.writer.run_dir == mon.run_dir
        assert mon.scheduler.wrapped is asha
        assert mon.url and mon.url.startswith("http://127.0.0.1:")
        tc, rc = mon.tune_config(num_samples=2), mon.run_config(stop={"training_iteration": 3})
        assert (tc.metric, tc.mode, tc.scheduler) == ("val_loss", "min", mon.scheduler)
        assert rc.name == mon.name and rc.storage_path == str(tmp_path.resolve())
        assert rc.callbacks == mon.callbacks and rc.stop == {"training_iteration": 3}
        assert mon.notices == []  # built-in rules that cannot fire: one line, not warnings
        line = mon.scheduler.applicability.line()
        assert "GAN rules discriminator_overpowering, generator_outpaced (no generator_loss, "\
            "discriminator_loss or adversarial_loss declared)" in line
        assert mon.start_lines()[0] == f"Health metrics of {mon.name}: {mon.url} (Prometheus " \
            f"file_sd: {tmp_path.resolve() / 'file_sd' / (mon.name + '.json')})"
    finally:
        mon.close()


def test_two_runs_in_the_same_second_never_share_a_directory(tmp_path):
    dirs = {new_run_dir("same", tmp_path) for _ in range(50)}
    assert len(dirs) == 50
    with pytest.raises(ValueError, match="experiment: expected a plain name"):
        new_run_dir("../escape", tmp_path)


def test_run_spec_validates_before_creating_anything(tmp_path):
    with pytest.raises(ValueError, match="budget: expected a positive number"):
        RunSpec.create("x", rules=["builtin"], budget=0, storage=tmp_path)
    with pytest.raises(ValueError, match="train_loss"):
        RunSpec.create("x", rules=["builtin"], signals={"train_loss": "pid"}, storage=tmp_path)
    with pytest.raises(ValueError, match="extra"):
        RunSpec.create("x", rules=["builtin"], signals={"trian_loss": "loss"}, storage=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_vocabulary_maps_roles_and_drops_bookkeeping():
    result = {"d_loss": -0.3, "g_loss": 1.2, "acc": 0.9, "pid": 1234, "timestamp": 1e9,
              "training_iteration": 3, "time_total_s": 4.0,
              "health": {"layers": {"fc": {"dead_ratio": 0.1}}, "model": {}}}
    vocab = monitor.Vocabulary(generator_loss="g_loss", discriminator_loss="d_loss",
                               validation="acc", mode="max", gan_loss="hinge")
    obs = observe(result, vocab)
    assert obs.iteration == 3 and obs.time_s == 4.0
    assert obs.roles == {"generator_loss": 1.2, "discriminator_loss": -0.3, "validation": 0.9}
    assert "pid" not in obs.metrics and "timestamp" not in obs.metrics
    assert obs.layers == {"fc": {"dead_ratio": 0.1}}
    assert vocab.better(0.95, 0.9) and not VOCAB.better(0.95, 0.9)


def test_rules_over_undeclared_or_unreported_signals_are_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(USER_RULES)
    rules = load_rules(["builtin", str(path)])
    notices = undeclared(rules, VOCAB, "mlp")
    by_rule = {n.rule: n for n in notices}
    assert "discriminator_loss" in by_rule["d_too_strong"].message
    assert "it can never fire" in by_rule["d_too_strong"].message
    assert "cannot fire" in by_rule["discriminator_overpowering"].message
    assert "typo_rule" not in by_rule  # a reported key, not a role: checked on reports
    coverage = SignalCoverage(rules, VOCAB, after=3)
    layer = dict.fromkeys(LAYER_SIGNALS, 0.0)
    reports = [observe({"loss": 1.0, "val_loss": 2.0, "training_iteration": i,
                        "health": {"layers": {"fc": layer}}}, VOCAB)
               for i in (1, 2, 3, 4)]
    said = [coverage.observe("t1", r.layers, r.scalars()) for r in reports]
    assert said[0] == said[1] == said[3] == []
    named = {(n.rule, n.signal) for n in said[2]}
    assert ("typo_rule", "val_los") in named
    assert not any(rule == "divergence" for rule, _ in named)
    typo = next(n for n in said[2] if n.rule == "typo_rule")
    assert "trial t1 has not reported in its first 3 reports" in typo.message


def test_a_declared_key_never_reported_is_named_with_the_closest_reported_key():
    vocab = monitor.Vocabulary(train_loss="loss", validation="val_los")
    coverage = SignalCoverage(load_rules(["builtin"]), vocab, after=2)
    reports = [observe({"loss": 1.0, "val_loss": 2.0, "training_iteration": i}, vocab)
               for i in (1, 2, 3)]
    said = [coverage.observe("t1", r.layers, r.scalars()) for r in reports]
    assert said[0] == said[2] == []
    (notice,) = [n for n in said[1] if n.rule == "vocabulary"]
    assert notice.signal == "validation"
    assert notice.message.startswith("validation='val_los' is declared, but trial t1 has not "
                                     "reported 'val_los' in its first 2 reports; did you "
                                     "mean 'val_loss'?")


def test_loop_monitor_warns_about_a_misspelled_signal(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(USER_RULES)
    run = monitor.LoopMonitor("mlp", signals=VOCAB, rules=[str(path)], budget=6,
                              storage=tmp_path)
    train_mlp(0.05, run, "healthy")
    summary = run.close()
    assert any("val_los" in n and "typo_rule" in n for n in summary["notices"])
    assert any("d_too_strong" in n for n in summary["notices"])
    notices = [json.loads(line) for line in
               (run.run_dir / "heuristics" / "notices.jsonl").read_text().splitlines()]
    assert {(n["rule"], n["signal"]) for n in notices} >= {("typo_rule", "val_los")}


def test_a_store_that_cannot_be_written_degrades_and_kills_go_on(tmp_path, monkeypatch):
    """The store raises what a full disk raises: warned once, kills go on, the log keeps the
    verdict, the summary says what was not recorded."""
    import sqlite3

    from monitor.driver import recording, verdicts

    run = monitor.LoopMonitor("mlp", signals=VOCAB, rules=["builtin"], budget=6,
                              storage=tmp_path)
    monkeypatch.setattr(recording.StoreWriter, "_open", lambda self: (
        self._fault(sqlite3.OperationalError("database or disk is full")), None)[1])
    monkeypatch.setattr(verdicts.VerdictRecorder, "_open_store", lambda self: (
        self._store_fault(sqlite3.OperationalError("database or disk is full"))
        if self.store_failed is None else None, None)[1])
    broken_run = train_mlp(8.0, run, "broken")
    summary = run.close()
    assert broken_run[-1].stop and broken_run[-1].rule == "divergence"
    logged = (run.run_dir / "heuristics" / "verdicts.jsonl").read_text()
    assert '"rule": "divergence"' in logged
    assert any("disk is full" in gap for gap in summary["not_recorded"])
    assert summary["kills"] == 1


def test_an_unopenable_store_degrades_and_kills_go_on(tmp_path):
    """A real fault (works as root too): the store's file name is taken by a directory."""
    run = monitor.LoopMonitor("mlp", signals=VOCAB, rules=["builtin"], budget=6,
                              storage=tmp_path)
    (run.run_dir / "monitor.sqlite").mkdir()
    decisions = train_mlp(8.0, run, "broken")
    summary = run.close()
    assert decisions[-1].stop and decisions[-1].rule == "divergence"
    assert summary["kills"] == 1 and summary["not_recorded"]
    assert '"rule": "divergence"' in (run.run_dir / "heuristics" / "verdicts.jsonl").read_text()
