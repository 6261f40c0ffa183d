"""A new user's first hour: what a run says at its start and end, rules checked against a
vocabulary before a run, rule files scoped to experiments, and one-line mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import monitor
from heuristics.engine import RuleEngine
from heuristics.rules import RuleErrors, load_rules, rule_version
from monitor.cli import main
from monitor.driver.rulechanges import RuleChangeError, check_against_run

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = monitor.Vocabulary(train_loss="loss", validation="val_loss")
GAN = monitor.Vocabulary(generator_loss="g", discriminator_loss="d", adversarial_loss="adv",
                         gan_loss="hinge", validation="val")
GAN_RULES = """\
experiments: [gan_*, vocoder]
groups:
  - name: team
    rules:
      - name: d_too_strong
        expr: d < 0.01
        labels: {action: kill, failure: discriminator_overpowering}
      - name: d_role_too_strong
        expr: discriminator_loss < 0.01
        labels: {action: warn, failure: discriminator_overpowering}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# -- which experiments a rule file applies to ----------------------------------------------------
def test_a_rule_file_applies_only_to_the_experiments_it_names(tmp_path):
    rules = load_rules(["builtin", str(write(tmp_path / "gan.yaml", GAN_RULES))])
    mine = [r for r in rules if r.name == "d_too_strong"]
    assert mine[0].experiments == ("gan_*", "vocoder")
    for experiment, kept in (("gan_hifi", True), ("vocoder", True), ("cnn_sweep", False),
                             ("vocoder_2", False)):
        engine = RuleEngine(rules, experiment, 10, vocabulary=GAN)
        assert ("d_too_strong" in [r.name for r in engine.rules]) is kept, experiment
    # Honoured where verdicts come from: a GAN run is stopped by it, a CNN run never.
    report = {"d": 0.001, "g": 1.0, "adv": 1.0, "val": 1.0, "training_iteration": 1}
    assert [v.rule for v in RuleEngine(rules, "gan_a", 10, vocabulary=GAN)
            .observe("t", report)] == ["d_too_strong", "d_role_too_strong"]
    assert RuleEngine(rules, "cnn", 10, vocabulary=GAN).observe("t", report) == []
    # A rule applied to a running sweep of another experiment is refused, not left idle.
    with pytest.raises(RuleChangeError, match="for experiments gan_\\*, vocoder, not cnn"):
        check_against_run(mine, GAN, "cnn", None)
    # Versions of rules without the key are what they were; the key is part of a version.
    builtin = {r.name: rule_version(r) for r in load_rules(["builtin"])}
    assert builtin["divergence"] == next(rule_version(r) for r in rules
                                         if r.name == "divergence")


@pytest.mark.parametrize("value, expected", [
    ("gan_*", "experiments: expected a list of experiment names or globs, e.g. [cnn_sweep, "
              "\"gan_*\"] (a list, even of one); got 'gan_*'"),
    ("[]", "experiments: expected a list of experiment names or globs"),
    ("[gan, 3]", "got 3 (each a non-empty name"),
    ("[a/b]", "got 'a/b' (each a non-empty name"),
])
def test_experiments_key_errors_are_one_line_with_file_and_line(tmp_path, capsys, value,
                                                                 expected):
    path = write(tmp_path / "bad.yaml", "# team rules\n" + GAN_RULES.replace(
        "experiments: [gan_*, vocoder]", f"experiments: {value}"))
    with pytest.raises(RuleErrors) as info:
        load_rules([str(path)])
    (error,) = info.value.errors
    assert str(error).startswith(f"{path}:2: ") and expected in str(error)
    assert main(["rules", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {error}" and "Traceback" not in err


# -- rules checked against a vocabulary, before a run --------------------------------------------
def test_check_rules_names_each_rule_that_cannot_act(tmp_path):
    path = write(tmp_path / "gan.yaml", GAN_RULES)
    cnn = {n.rule: n for n in monitor.check_rules(rules=["builtin", str(path)],
                                                  signals=CLASSIFIER, experiment="cnn")}
    assert set(cnn) == {"discriminator_overpowering", "generator_outpaced",
                        "discriminator_overpowering_lsgan", "d_too_strong", "d_role_too_strong"}
    assert cnn["d_too_strong"].signal == "experiments"
    assert "is for experiments gan_*, vocoder, not cnn" in cnn["d_too_strong"].message
    assert cnn["discriminator_overpowering_lsgan"].message == (
        "built-in rule discriminator_overpowering_lsgan cannot fire here: written for "
        "gan_loss: lsgan.")
    gan = {n.rule: n for n in monitor.check_rules(
        rules=["builtin", str(path)], signals={"generator_loss": "g", "gan_loss": "hinge"},
        experiment="gan_1")}
    assert "learning_undone" in gan and "no train_loss declared" in gan["learning_undone"].message
    assert "it can never fire" in gan["d_role_too_strong"].message  # a user's rule: its role
    assert "quality_regressed" in gan  # reads the validation metric, which is not declared
    assert "d_too_strong" not in gan  # reads a reported key: checked on reports, not here
    assert monitor.check_rules(rules=["builtin"], signals=GAN) == [
        n for n in monitor.check_rules(rules=["builtin"], signals=GAN)
        if n.rule in ("learning_undone", "discriminator_overpowering_lsgan")]
    with pytest.raises(RuleErrors, match="missing.yaml: rule source not found"):
        monitor.check_rules(rules=["builtin", str(tmp_path / "missing.yaml")], signals=GAN)


def test_cli_checks_rules_against_roles_given_directly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./heuristics/custom here
    monkeypatch.delenv("MONITOR_CUSTOM_RULES", raising=False)
    path = write(tmp_path / "gan.yaml", GAN_RULES)
    assert main(["rules", "check", str(path), "--role", "validation=val_loss",
                 "--role", "train_loss=loss", "--experiment-name", "gan_x"]) == 0
    out, err = capsys.readouterr()
    assert "OK: 2 rules" in out
    line = next(x for x in out.splitlines() if x.startswith("With this vocabulary"))
    assert line.startswith("With this vocabulary for experiment gan_x: 19 rules, 15 apply: ")
    assert "GAN rules discriminator_overpowering, generator_outpaced" in line
    assert "yours: d_role_too_strong (see the warnings)" in line
    assert err.startswith("warning: rule d_role_too_strong refers to signal "
                          "'discriminator_loss'") and len(err.splitlines()) == 1
    assert main(["rules", "check", str(path), "--role", "train_loss=loss",
                 "--experiment-name", "cnn"]) == 0
    out, err = capsys.readouterr()
    assert "2 for other experiments (their file's experiments: list): d_too_strong, " \
        "d_role_too_strong" in out
    refused = ((["--role", "valid=val"], "--role: expected ROLE=KEY with ROLE one of "
                "train_loss,"), (["--role", "mode=avg"], "--role: mode='avg': "),
               (["--role", "train_loss=pid"], "--role: train_loss='pid': expected the name of "
                "a reported metric"))
    for bad, expected in refused:
        assert main(["rules", "check", str(path), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {expected}") and len(err.splitlines()) == 1, err


def test_rules_list_uses_the_sources_a_run_uses(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    write(project / "heuristics" / "custom" / "gan.yaml", GAN_RULES)
    monkeypatch.delenv("MONITOR_CUSTOM_RULES", raising=False)
    monkeypatch.chdir(project)
    assert main(["rules", "list", "--format", "json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["d_too_strong"]["experiments"] == ["gan_*", "vocoder"]
    assert listed["divergence"]["experiments"] is None
    run = monitor.LoopMonitor("gan_a", signals=GAN, storage=tmp_path / "runs")  # as a run
    try:
        assert {r.name for r in run.engine.rules} <= set(listed)
        assert "d_too_strong" in {r.name for r in run.engine.rules}
    finally:
        run.close()
    elsewhere = write(tmp_path / "env_rules" / "x.yaml", GAN_RULES.replace("d_", "e_"))
    monkeypatch.setenv("MONITOR_CUSTOM_RULES", str(elsewhere.parent))
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "e_too_strong" in out and "d_too_strong" not in out
    assert f"custom = {elsewhere.parent}" in out
    # A file named as well as found in the custom directory is loaded once, not a duplicate.
    assert main(["rules", "check", str(elsewhere), "--role", "train_loss=loss"]) == 0


# -- what a run says at its start and end ----------------------------------------------------------
def test_a_loop_run_says_where_its_metrics_are_and_which_rules_run(tmp_path, capsys):
    path = write(tmp_path / "gan.yaml", GAN_RULES.replace("experiments: [gan_*, vocoder]\n", ""))
    run = monitor.LoopMonitor("mlp", signals=CLASSIFIER, rules=["builtin", str(path)],
                              budget=6, storage=tmp_path, exporter=True)
    assert run.url and run.url.startswith("http://127.0.0.1:") and run.url.endswith("/metrics")
    assert capsys.readouterr().out == ""  # said at the first report, not before
    for i in range(1, 4):
        assert not run.report({"loss": 1.0 / i, "val_loss": 1.0}, trial="t").stop
        out = capsys.readouterr().out
        if i == 1:
            lines = out.splitlines()
            assert lines[0] == f"Health metrics of {run.name}: {run.url} (Prometheus file_sd: " \
                f"{tmp_path.resolve() / 'file_sd' / (run.name + '.json')})"
            assert lines[1].startswith("Rules: 19 rules, 15 apply: divergence, ")
            assert "; 4 cannot fire here: GAN rules discriminator_overpowering, " \
                "generator_outpaced (no generator_loss, discriminator_loss or adversarial_loss " \
                "declared); discriminator_overpowering_lsgan (written for gan_loss: lsgan); " \
                "yours: d_role_too_strong (see the warnings)" in lines[1]
            # d_too_strong reads a reported key (checked on the reports, later)
            assert lines[2].startswith("Warning: rule d_role_too_strong refers to signal "
                                       "'discriminator_loss'")
            assert lines[3] == f"Run directory: {run.run_dir}" and len(lines) == 4
        else:
            assert out == ""  # once
    url, rules_line = run.url, lines[1].removeprefix("Rules: ")
    notices = {k[1] for k in run.exporter.snapshot.notices()}  # what alerts read
    assert notices == {"d_role_too_strong"}  # a user's rule; not the rules line
    summary = run.print_summary()
    out = capsys.readouterr().out
    assert summary["metrics_url"] == url and summary["rules"] == rules_line
    assert f"Health metrics were served at {url}" in out and f"Rules: {rules_line}" in out
    assert not any("cannot fire" in n and "built-in" in n for n in summary["notices"])
    # The kill report shows the same, in every format.
    assert main(["kill-report", str(run.run_dir), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rules"] == rules_line
    assert any("d_role_too_strong" in n for n in data["notices"])
    assert main(["kill-report", str(run.run_dir)]) == 0
    assert f"Rules: {rules_line}" in capsys.readouterr().out
    assert main(["kill-report", str(run.run_dir), "--format", "markdown"]) == 0
    assert f"Rules: {rules_line}" in capsys.readouterr().out


def test_a_gan_run_is_not_told_about_train_loss_rule_by_rule(tmp_path, capsys):
    run = monitor.LoopMonitor("gan", signals=GAN, rules=["builtin"], storage=tmp_path)
    run.announce()
    out = capsys.readouterr().out
    assert "Warning" not in out and "learning_undone (no train_loss declared)" in out
    assert run.report({"g": 1.0, "d": 0.5, "adv": 0.7, "val": 2.0}).stop is False
    assert capsys.readouterr().out == ""  # announce() said it already
    assert run.close()["notices"] == []


def test_tune_monitor_says_it_when_tune_starts_the_run(tmp_path, capsys):
    mon = monitor.TuneMonitor("sweep", signals=CLASSIFIER, rules=["builtin"], budget=4,
                              storage=tmp_path, exporter=False)
    try:
        assert mon.url is None and capsys.readouterr().out == ""
        mon.store_callback.setup()  # what Tune calls when fit() starts
        out = capsys.readouterr().out
        assert out.startswith(f"Health metrics of {mon.name}: not served (exporter=False)\n"
                              "Rules: 17 rules, 14 apply: ")
        mon.store_callback.setup()  # a second start (a restore in this process) is quiet
        assert capsys.readouterr().out == ""
        mon.announce()  # still works, when asked
        assert "Rules: 17 rules" in capsys.readouterr().out
        import pickle

        assert pickle.loads(pickle.dumps(mon.store_callback)).banner is None
    finally:
        mon.store_callback.on_experiment_end([])
        mon.close()


# -- one line, never a traceback, for a missing or unreadable rule file ---------------------------
@pytest.mark.parametrize("entry", ["LoopMonitor", "TuneMonitor", "check_rules"])
def test_a_missing_rule_file_is_one_line_in_every_entry_point(tmp_path, entry):
    script = tmp_path / "train.py"
    extra = ", storage='runs'" if entry != "check_rules" else ""
    script.write_text(f"import monitor\nmonitor.{entry}('x', rules=['builtin', 'my_rules.yml']"
                      f"{extra})\n" if entry != "check_rules" else
                      "import monitor\nmonitor.check_rules(rules=['builtin', 'my_rules.yml'])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MONITOR_TRACEBACK", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == ("error: my_rules.yml: rule source not found (expected 'builtin', a "
                           "YAML file or a directory)\n"), proc.stderr
    assert not (tmp_path / "runs").exists()
    if entry == "LoopMonitor":  # the traceback, when asked for
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                              env={**env, "MONITOR_TRACEBACK": "1"}, text=True, timeout=120)
        assert "Traceback" in proc.stderr and "RuleErrors" in proc.stderr


def test_an_unreadable_rule_file_is_one_line_from_the_cli(tmp_path, capsys):
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    for argv in (["rules", "check", str(fifo)], ["rules", "list", "--rules", str(fifo)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {fifo}: is a named pipe (FIFO); expected a YAML file")
        assert "Traceback" not in err
    with pytest.raises(RuleErrors) as info:
        monitor.LoopMonitor("x", rules=[str(fifo)], storage=tmp_path / "runs")
    assert getattr(info.value, "_monitor_one_line", False)  # uncaught: one line (above)


def test_declared_keys_that_are_reported_are_never_said_missing(tmp_path):
    """Every declared key is checked against what the trial reported, not against what the
    rules happen to read (the engine turns `validation` into `quality`; no built-in rule reads
    `grad_norm`): the README's own example once warned that it never reported val_loss."""
    vocab = monitor.Vocabulary(train_loss="loss", validation="val_loss", grad_norm="gn")
    run = monitor.LoopMonitor("mlp", signals=vocab, rules=["builtin"], storage=tmp_path)
    for i in range(1, 7):
        run.report({"loss": 1.0 / i, "val_loss": 2.0 / i, "gn": 0.5}, trial="t")
        run.report({"loss": 1.0 / i, "val_los": 2.0 / i, "gn": 0.5}, trial="typo")
    notices = run.close()["notices"]
    assert [n.split(" is declared")[0] for n in notices if "is declared" in n] == [
        "validation='val_loss'"]
    assert "trial typo has not reported 'val_loss'" in notices[0] or any(
        "trial typo has not reported 'val_loss'" in n for n in notices)
