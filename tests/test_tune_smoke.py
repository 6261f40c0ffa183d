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
