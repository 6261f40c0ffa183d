"""Experiment files are validated before Ray starts, with file, line and expectation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from heuristics.yamlfile import ConfigError
from trainers import experiment


def test_shipped_experiments_load():
    assert {"master_v464", "student_v464", "smoke"} <= set(experiment.available())
    exp = experiment.load("master_v464")
    names = {v["name"] for v in exp.variants}
    assert {"healthy", "dead_relu_high_lr", "dead_relu_bias_init", "silence_collapse",
            "discriminator_overpowering", "divergence"} <= names


def test_unknown_experiment_lists_available():
    with pytest.raises(ConfigError, match="available: .*master_v464"):
        experiment.load("master_v999")


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, line, message", [
    ("trainer: master\nvariants:\n  - name: a\n    g_lrr: 0.1\n", 4, "unknown key 'g_lrr'"),
    ("trainer: master\nmax_iterations: -3\n", 2, "max_iterations: expected a positive integer"),
    ("trainer: teacher\n", 1, "trainer: expected one of"),
    ("trainer: master\nconfig:\n  width: wide\n", 3, "expected a number"),
    ("trainer: master\nsearch_space:\n  g_lr: {gaussian: [0, 1]}\n", 3, "expected one of"),
    ("trainer: master\nvariants:\n  - name: a\n  - name: a\n", 4, "duplicate variant name"),
    ("trainer: master\nfoo: 1\n", 2, "unknown key 'foo'"),
    ("trainer: [master\n", 2, "not valid YAML"),
])
def test_malformed_experiment_names_file_line_and_expectation(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        experiment.load(str(path))
    assert info.value.path == str(path)
    assert info.value.line == line
    assert message in str(info.value)


def test_cli_reports_error_before_ray_starts(tmp_path):
    # A narrow terminal must not wrap the message: a path or file:line stays on one line.
    proc = subprocess.run([sys.executable, "-m", "trainers.tune", "nope"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 2
    assert "unknown experiment 'nope'" in proc.stderr
    assert "master_v464" in proc.stderr
    assert "ray" not in proc.stderr.lower()


def test_tune_command_lists_experiments(capsys):
    from trainers.tune import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "master_v464" in out and "student_v464" in out and "smoke" in out


def test_trainers_declare_their_vocabulary(tmp_path):
    master, student = experiment.load("master_v464"), experiment.load("student_v464")
    assert master.vocabulary.generator_loss == "loss_g"
    assert master.vocabulary.discriminator_loss == "loss_d"
    assert master.vocabulary.validation == master.metric == "val_logmel"
    assert student.vocabulary.train_loss == "loss"
    assert student.vocabulary.validation == "val_teacher_logmel"
    path = write(tmp_path, "trainer: student\nsignals:\n  train_loss: my_loss\n  mode: up\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml:4: signals\.mode"):
        experiment.load(str(path))


def test_student_experiment_names_its_master_experiment(tmp_path):
    exp = experiment.load("student_v464")
    assert exp.master_experiment == "master_v464"
    path = write(tmp_path, "trainer: student\nmaster_experiment: nope\n")
    with pytest.raises(ConfigError, match="master_experiment: expected one of"):
        experiment.load(str(path))
