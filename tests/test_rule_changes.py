"""Issue 27 without Ray: rule versions, applying/arming/retiring rules of a live run
(``LoopMonitor``, the same ``RuleController`` as under Tune), refusals in one line, requests
through the run directory, and the rule set rebuilt by a restarted driver."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import monitor
from heuristics.engine import RuleEngine
from heuristics.rules import (
    BUILTIN_DIR,
    load_rules,
    load_rules_text,
    rule_from_mapping,
    rule_mapping,
    rule_version,
)
from heuristics.ruleset import RuleSet
from monitor.after import report
from monitor.cli import main as cli
from monitor.driver.rulechanges import POLL_S, Requests, RuleChangeError, RuleController
from monitor.driver.verdicts import VerdictRecorder
from monitor.store import RunStore

RULE = """\
groups:
  - name: team
    rules:
      - name: loss_climbing
        expr: loss > {threshold}
        for: 2
        grace: "1 or 10%"
        labels: {{action: kill, failure: training_regressed}}
"""
BASE = [str(BUILTIN_DIR / "10_divergence.yaml")]


def loss(trial: str, i: int) -> float:
    """`early` climbs from iteration 2, `late` from 7, the others learn."""
    start = {"early": 2, "late": 7}.get(trial)
    return 1.0 + i if start and i >= start else 1.0 / i


def feed(run: monitor.LoopMonitor, first: int, last: int, trials=("a", "b", "early", "late")):
    decisions = {}
    for i in range(first, last + 1):
        for t in trials:
            decisions[(t, i)] = run.report({"loss": loss(t, i)}, trial=t)
    return decisions


@pytest.fixture
def run(tmp_path):
    run = monitor.LoopMonitor("chg", signals={"train_loss": "loss"}, budget=12, rules=BASE,
                              storage=tmp_path / "runs")
    yield run
    run.close()


def write(tmp_path: Path, threshold: str = "1.5", name: str = "climb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(RULE.format(threshold=threshold))
    return path


def test_a_version_is_the_rules_content_not_its_spelling(tmp_path):
    (rule,) = load_rules([str(write(tmp_path))])
    respelled = RULE.format(threshold="1.5").replace("for: 2", "for: '2'  # two reports")
    (same,) = load_rules_text(respelled.replace("loss >", "loss  >"), "other.yaml")
    (tuned,) = load_rules([str(write(tmp_path, "2.5", "tuned.yaml"))])
    assert rule_version(rule) == rule_version(same) != rule_version(tuned)
    assert len(rule_version(rule)) == 12
    for r in load_rules(["builtin"]):  # every rule survives the run's record of it
        back = rule_from_mapping(json.loads(json.dumps(rule_mapping(r))), r.group, "x")
        assert rule_version(back) == rule_version(r), r.name


def test_apply_shadow_arm_retire_in_a_live_loop(run, tmp_path):
    feed(run, 1, 5)
    answer = run.apply_rules(write(tmp_path))
    version = answer["rules"][0]["version"]
    assert answer["revision"] == 2 and answer["rules"][0]["would_kill"] == {"early": 3}
    assert "would have stopped 1 trial(s) (early at 3)" in answer["message"]
    decisions = feed(run, 6, 8)
    assert not any(d.stop for d in decisions.values())  # shadow: nothing stopped
    status = run.rules_status()
    (rule,) = status["rules"]
    would = {t["trial"]: t["would_kill"] for t in rule["trials"] if t["would_kill"]}
    assert would["early"]["retroactive"] and would["early"]["iteration"] == 3
    assert not would["late"]["retroactive"] and would["late"]["iteration"] == 8
    assert rule["summary"].startswith("would stop 2 of 4 trials")

    assert run.arm_rule("loss_climbing")["revision"] == 3
    decisions = feed(run, 9, 9)
    assert decisions[("early", 9)].stop and decisions[("late", 9)].stop
    assert not decisions[("a", 9)].stop
    assert decisions[("early", 9)].rule == "loss_climbing"

    # Tuning the threshold: a new version, shadowed again beside the armed one.
    tuned = run.apply_rules(write(tmp_path, "0.9", "tuned.yaml"))
    new = tuned["rules"][0]["version"]
    assert new != version and tuned["revision"] == 4
    modes = {(r["rule"], r["mode"]): r["version"] for r in run.ruleset.describe()}
    assert modes[("loss_climbing", "armed")] == version
    assert modes[("loss_climbing", "shadow")] == new
    again = run.apply_rules(write(tmp_path, "0.8", "tuned2.yaml"))  # replaces that candidate
    assert again["revision"] == 5
    assert {r["version"]: r["mode"] for r in run.rules_status()["rules"]} == {
        version: "armed", new: "replaced", again["rules"][0]["version"]: "shadow"}
    new = again["rules"][0]["version"]
    with pytest.raises(RuleChangeError, match="two versions"):
        run.retire_rule("loss_climbing")
    assert run.retire_rule("loss_climbing", new[:6])["revision"] == 6
    assert run.retire_rule("loss_climbing")["version"] == version
    with pytest.raises(RuleChangeError, match="no shadow version to arm"):
        run.arm_rule("loss_climbing")

    with RunStore(run.run_dir, create=False) as store:
        kills = [v for v in store.verdicts("kill") if not v.get("shadow")]
        changes = [(c["revision"], c["op"], c["rule"]) for c in store.rule_changes()]
    assert {(k["trial"], k["rule_version"], k["ruleset_revision"]) for k in kills} == \
        {("early", version, 3), ("late", version, 3)}
    assert sorted(c for c in changes if c[0] == 1) == sorted((1, "initial", r.name)
                                                             for r in run.engine.rules)
    assert [c[:2] for c in changes if c[0] > 1] == [(2, "apply"), (3, "arm"), (4, "apply"),
                                                    (5, "apply"), (6, "retire"), (7, "retire")]
    markdown = report.to_markdown(report.build(run.run_dir))
    assert f"loss_climbing {version} (rev 3)" in markdown
    assert "revision 7: retire loss_climbing" in markdown


@pytest.mark.parametrize("text, expected", [
    (RULE.format(threshold=""), "climb.yaml:5: rule 'loss_climbing': expr:"),
    (RULE.format(threshold="1").replace("loss >", "val_loss >"),
     "no trial of this run has reported 'val_loss'"),
    (RULE.format(threshold="1").replace("loss >", "discriminator_loss >"),
     "which experiment chg does not declare"),
    (RULE.format(threshold="1").replace("    labels", "    requires: {gan_loss: hinge}\n"
                                        "        labels"), "it would never be evaluated"),
    ("groups: [}", "climb.yaml:1: not valid YAML"),
])
def test_a_bad_rule_is_refused_in_one_line_and_nothing_changes(run, tmp_path, text, expected):
    feed(run, 1, 2)
    path = tmp_path / "climb.yaml"
    path.write_text(text)
    with pytest.raises(RuleChangeError) as info:
        run.apply_rules(path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert run.ruleset.revision == 1 and not run.ruleset.lanes
    assert not feed(run, 3, 3)[("a", 3)].stop


def test_requests_through_the_run_directory_and_a_restarted_driver(run, tmp_path):
    """The CLI's path: a request file taken by the driver between two reports; then a new
    driver (a restart) rebuilds the same rule set, each rule's state from the history."""
    feed(run, 1, 4)
    requests = Requests(run.run_dir)
    rid = requests.submit("apply", text=RULE.format(threshold="1.5"), file="climb.yaml",
                          user="alice")
    bad = requests.submit("arm", rule="nope", user="alice")
    time.sleep(POLL_S)
    feed(run, 5, 5)  # the driver looks before this report (at most every POLL_S)
    answer = requests.wait(rid, 1)
    assert answer["ok"] and answer["revision"] == 2, answer
    refused = requests.wait(bad, 1)
    assert not refused["ok"] and "no shadow version" in refused["message"]
    assert not list(requests.dir.glob("*.json"))
    run.arm_rule("loss_climbing")
    feed(run, 6, 6)
    expected = sorted(map(str, run.ruleset.describe()))

    run.writer._write(lambda s: s.flush())
    engine = RuleEngine(load_rules(BASE), "chg", 12, vocabulary=run.spec.vocabulary)
    ruleset = RuleSet(engine)
    RuleController(ruleset, run.run_dir, VerdictRecorder(run.run_dir)).start()
    assert ruleset.revision == 3 and sorted(map(str, ruleset.describe())) == expected
    (lane,) = ruleset.lanes
    assert lane.engine.trials["late"].reports[-1].iteration == 6  # state from the history
    with RunStore(run.run_dir, create=False) as store:
        users = {c["user"] for c in store.rule_changes() if c["op"] == "apply"}
    assert users == {"alice"}


def test_cli_refuses_a_malformed_file_and_a_finished_run(run, tmp_path, capsys):
    feed(run, 1, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULE.format(threshold="").replace("for: 2", "for: often"))
    storage = ["--storage", str(run.run_dir.parent)]
    assert cli(["rules", "apply", run.name, str(bad), *storage]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml:5" in err and "and 1 more" in err
    assert cli(["rules", "apply", run.name, str(bad), *storage, "--format", "json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert not answer["ok"] and answer["message"].startswith(str(bad))
    run.close()
    assert cli(["rules", "arm", run.name, "x", *storage]) == 2
    assert "has ended" in capsys.readouterr().err
    assert cli(["rules", "status", run.name, *storage]) == 0
    assert "revision 1" in capsys.readouterr().out


def test_a_request_made_while_no_driver_runs_is_taken_when_one_does(run, tmp_path, capsys):
    feed(run, 1, 4)
    run._lock.release()  # as if the driver were down (its lock gone with it)
    storage = ["--storage", str(run.run_dir.parent)]
    assert cli(["rules", "apply", run.name, str(write(tmp_path)), *storage]) == 0
    assert "queued" in capsys.readouterr().out
    run._lock.acquire()
    time.sleep(POLL_S)
    feed(run, 5, 5)  # the driver (back) takes it between two reports
    assert run.ruleset.revision == 2
    assert [r["rule"] for r in run.ruleset.describe() if r["mode"] == "shadow"] == \
        ["loss_climbing"]


def test_the_summary_names_the_changes_and_the_killing_version(run, tmp_path, capsys):
    feed(run, 1, 5)
    version = run.apply_rules(write(tmp_path))["rules"][0]["version"]
    run.arm_rule("loss_climbing")
    feed(run, 6, 6)
    summary = run.print_summary()
    killed = next(t for t in summary["trials"] if t["trial_id"] == "early")["killed"]
    assert killed["rule_version"] == version and killed["ruleset_revision"] == 3
    assert summary["rule_set"]["revision"] == 3
    out = capsys.readouterr().out
    assert f"Rule set revision 3: arm loss_climbing {version} (armed)" in out


def test_export_writes_the_acting_rules_for_the_next_sweep(run, tmp_path, capsys):
    feed(run, 1, 3)
    version = run.apply_rules(write(tmp_path))["rules"][0]["version"]
    run.arm_rule("loss_climbing")
    run.retire_rule("divergence")
    out = tmp_path / "next.yaml"
    assert cli(["rules", "export", run.name, "-o", str(out), "--storage",
                str(run.run_dir.parent)]) == 0
    rules = {r.name: rule_version(r) for r in load_rules([str(out)])}
    acting = {r["rule"]: r["version"] for r in run.ruleset.describe() if r["mode"] == "armed"}
    assert rules == acting and rules["loss_climbing"] == version and "divergence" not in rules


def test_a_tuned_built_in_rule_replaces_it_when_armed_and_after_a_restart(run, tmp_path):
    (old,) = [r for r in run.engine.rules if r.name == "loss_explosion_sustained"]
    path = tmp_path / "tuned.yaml"
    path.write_text(RULE.format(threshold="1.5").replace("loss_climbing",
                                                         "loss_explosion_sustained"))
    feed(run, 1, 4)
    new = run.apply_rules(path)["rules"][0]["version"]
    modes = {r["mode"]: r["version"] for r in run.ruleset.describe()
             if r["rule"] == "loss_explosion_sustained"}
    assert modes == {"armed": rule_version(old), "shadow": new}
    run.arm_rule("loss_explosion_sustained")
    assert "loss_explosion_sustained" not in {r.name for r in run.engine.rules}
    feed(run, 5, 5)
    status = {r["version"]: r["mode"] for r in run.rules_status()["rules"]}
    assert status == {rule_version(old): "replaced", new: "armed"}

    engine = RuleEngine(load_rules(BASE), "chg", 12, vocabulary=run.spec.vocabulary)
    ruleset = RuleSet(engine)  # a restarted driver: the rules it started with, then the record
    RuleController(ruleset, run.run_dir, VerdictRecorder(run.run_dir)).start()
    assert sorted(map(str, ruleset.describe())) == sorted(map(str, run.ruleset.describe()))
