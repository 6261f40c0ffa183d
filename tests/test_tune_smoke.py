"""The smoke experiment runs for real under Ray Tune and writes its summary."""

from __future__ import annotations

import json
import math

import pytest

from trainers import experiment
from trainers import tune as runner

pytestmark = pytest.mark.slow


def test_smoke_experiment_runs_under_ray_tune(ray_session, tmp_path):
    summary = runner.run(experiment.load("smoke"), storage=tmp_path)
    assert (tmp_path / summary["name"] / "summary.json").exists()
    by_variant = {t["variant"]: t for t in summary["trials"]}
    assert set(by_variant) == {"healthy", "divergence"}
    assert by_variant["healthy"]["iterations"] == 4
    assert math.isfinite(by_variant["healthy"]["metric"])
    assert not math.isfinite(by_variant["divergence"]["metric"])
    assert summary["best"]["variant"] == "healthy"
    assert summary["best"]["checkpoint"].endswith("model.pt")
    written = json.loads((tmp_path / summary["name"] / "summary.json").read_text())
    assert written["best"]["trial_id"] == summary["best"]["trial_id"]


def test_the_kill_benchmark_reads_what_a_run_summary_holds(ray_session, tmp_path):
    """``make bench-kill`` picks its teacher and truth from a no-stopping run's summary (a key
    it read once went missing when the summary changed, and the benchmark crashed after its
    first run)."""
    from bench import kill

    summary = kill.run_policy("none", "smoke", tmp_path, 2, 1)
    assert summary["trainer"] == "master" and summary["budget"] == 2
    assert summary["metric_name"] == "val_logmel"
    assert summary["best"]["checkpoint"].endswith("model.pt")
    truth = kill.truth_of(summary)
    assert {t["failure"] for t in truth.values()} >= {"healthy", "divergence"}
    assert all(t["onset"] in (None, 1, 2) for t in truth.values())
