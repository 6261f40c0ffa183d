"""Rule files: validation with file, line and rule; CLI; custom rules used by an experiment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from heuristics.rules import RuleErrors, load_rules
from monitor.cli import main

GOOD = """\
groups:
  - name: mine
    rules:
      - name: loud_output
        expr: avg_over(power_ratio_db, 2) > 6
        for: 2
        grace: 10%
        labels: {action: warn, failure: loud_output}
        annotations: {summary: "output {{ $value }} dB above the target"}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_every_error_is_reported_with_file_line_and_rule(tmp_path):
    path = write(tmp_path, "bad.yaml", """\
        groups:
          - name: mine
            rules:
              - name: quiet
                expr: median(power_ratio_db) < -20
                for: 3x
                labels: {action: kill, failure: silence_collapse}
              - name: blowup
                expr: grad_norm > 1e4
                grace: -2
                labels: {action: stop, failure: divergence}
                colour: red
              - name: thresholds
                expr: grad_norm > > 1
                labels: {action: warn, failure: divergence}
        """)
    with pytest.raises(RuleErrors) as info:
        load_rules([str(path)])
    found = {(e.line, e.message.split(":")[0]) for e in info.value.errors}
    assert (5, "rule 'quiet'") in found  # unknown function
    assert (6, "rule 'quiet'") in found  # bad duration
    assert (10, "rule 'blowup'") in found  # bad grace
    assert (11, "rule 'blowup'") in found  # bad action
    assert (12, "rule 'blowup'") in found  # unknown key
    assert (14, "rule 'thresholds'") in found  # a syntax error
    text = str(info.value)
    assert all(str(path) in str(e) for e in info.value.errors)
    for fragment in ("unknown function 'median'", "for: expected a number of reports",
                     "grace: expected", "labels.action: expected one of ['kill', 'warn']",
                     "unknown key 'colour'", "expected a number, a signal or a function"):
        assert fragment in text


def test_duplicate_names_across_files(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)
    with pytest.raises(RuleErrors, match="duplicate name"):
        load_rules([str(tmp_path)])


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path, "evil.yaml", "groups: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RuleErrors, match="not valid YAML"):
        load_rules([str(path)])


def test_custom_rules_join_the_builtin_ones(tmp_path):
    write(tmp_path, "mine.yaml", GOOD)
    rules = load_rules(["builtin", str(tmp_path)])
    names = [r.name for r in rules]
    assert "dead_relu_collapse" in names and names[-1] == "loud_output"
    assert rules[-1].grace.first_iteration(30) == 3


def test_cli_check_and_list(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", "groups:\n  - name: g\n    rules:\n      - name: x\n")
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:4" in err and "missing 'expr'" in err
    assert main(["rules", "check", "builtin"]) == 0
    good = write(tmp_path, "good.yaml", GOOD)
    assert main(["rules", "list", "--rules", str(good), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert '"loud_output"' in out and '"dead_relu_collapse"' in out


def test_experiment_with_broken_rules_stops_before_any_trial(tmp_path):
    write(tmp_path, "rules.yaml", "groups:\n  - name: g\n    rules:\n      - name: x\n"
          "        expr: max(dead_ratio) >\n        labels: {action: kill, failure: f}\n")
    exp = write(tmp_path, "exp.yaml", f"""\
        trainer: master
        max_iterations: 2
        heuristics: [builtin, {tmp_path / 'rules.yaml'}]
        """)
    proc = subprocess.run([sys.executable, "-m", "trainers.tune", str(exp), "--storage",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 2
    assert "rules do not load; no trial was started" in proc.stderr
    assert "rules.yaml:5" in proc.stderr
    assert "Traceback" not in proc.stderr  # one line per problem, each naming file and line
    assert all(line.startswith("error: ") for line in proc.stderr.splitlines())
    assert not (tmp_path / "runs").exists()


def test_a_file_dropped_in_the_custom_directory_is_used(tmp_path, monkeypatch):
    from trainers import experiment
    from trainers.tune import load_experiment_rules

    monkeypatch.setenv("MONITOR_CUSTOM_RULES", str(tmp_path))
    before = [r.name for r in load_experiment_rules(experiment.load("master_v464"))]
    write(tmp_path, "team.yaml", GOOD)
    after = [r.name for r in load_experiment_rules(experiment.load("master_v464"))]
    assert after == [*before, "loud_output"]


def test_grace_can_be_the_later_of_iterations_and_a_budget_share():
    from heuristics.rules import parse_grace

    grace = parse_grace("5 or 20%")
    assert [grace.first_iteration(b) for b in (40, 10, None)] == [8, 5, 5]
    assert parse_grace("10%").first_iteration(None) == 0
    for bad in ("5 or 20", "x or 20%", "-1 or 20%", "5 or 200%"):
        with pytest.raises(ValueError, match="grace: expected"):
            parse_grace(bad)
