"""A student distils one voice from a real master checkpoint, and is smaller and faster."""

from __future__ import annotations

import pytest
import torch

from monitor.training.audio_samples import AUDIO_KEY, REFERENCE_KEY
from trainers.master import MasterTraining
from trainers.student import StudentTraining

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def master_checkpoint(tmp_path_factory):
    training = MasterTraining({"steps_per_iteration": 10})
    for _ in range(2):
        training.train_iteration()
    path = tmp_path_factory.mktemp("master") / "model.pt"
    torch.save(training.state_dict(), path)
    training.close()
    return path


def test_student_learns_from_master_and_is_smaller_and_faster(master_checkpoint):
    student = StudentTraining({"master_checkpoint": str(master_checkpoint), "preset": "low",
                               "target_speaker": 3})
    reports = [student.train_iteration() for _ in range(4)]
    assert reports[-1]["val_teacher_logmel"] < reports[0]["val_teacher_logmel"]
    assert reports[-1]["n_parameters"] * 5 < reports[-1]["master_parameters"]
    speed = student.speed()
    assert speed["rtf"] < speed["master_rtf"]
    assert reports[-1]["health"]["layers"]  # the student is monitored too
    # each report carries its output clip; the target voice comes with the first only
    assert all(AUDIO_KEY in r for r in reports)
    assert [REFERENCE_KEY in r for r in reports] == [True, False, False, False]
    student.close()


def test_presets_order_capacity(master_checkpoint):
    sizes = []
    for preset in ("low", "medium", "high"):
        s = StudentTraining({"master_checkpoint": str(master_checkpoint), "preset": preset})
        sizes.append(s.evaluate()["n_parameters"])
        s.close()
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_missing_master_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="master checkpoint not found"):
        StudentTraining({"master_checkpoint": str(tmp_path / "nope.pt")})


def _run(master_checkpoint, iterations: int, **config) -> list[dict]:
    student = StudentTraining({"master_checkpoint": str(master_checkpoint), **config})
    reports = []
    for i in range(iterations):
        reports.append(student.train_iteration())
        reports[-1]["training_iteration"] = i + 1
    student.close()
    return reports


def _verdicts(reports: list[dict]) -> list:
    from heuristics.engine import RuleEngine
    from heuristics.rules import load_rules

    engine = RuleEngine(load_rules(["builtin"]), "students", budget=20)
    return [v for r in reports for v in engine.observe("t", r)]


def test_no_builtin_rule_fires_on_a_healthy_student(master_checkpoint):
    assert _verdicts(_run(master_checkpoint, 8, preset="low")) == []


def test_a_student_warmed_up_to_too_high_a_rate_blows_up_and_is_killed(master_checkpoint):
    """SGD warmed up to lr 0.5 without clipping: the loss blows up within a few iterations
    (real dynamics, no NaN needed), and a built-in rule kills the trial for it."""
    reports = _run(master_checkpoint, 6, optimizer="sgd", lr=0.5, lr_warmup_iterations=10,
                   grad_clip=None)
    losses = [r["loss"] for r in reports]
    assert max(losses[1:]) > 3 * losses[0]
    kills = [v for v in _verdicts(reports) if v.stops]
    assert kills and kills[0].iteration <= 6
    assert kills[0].failure in ("divergence", "dead_relu_collapse")
