"""The documented Ray Train example (examples/ray_train_ddp.py): a TorchTrainer with two gloo
workers inside a Tune trial under TuneMonitor; the absurd learning rate is killed, and the
reported layers carry names without DDP's ``module.`` (the cross-rank semantics are tested
with two gloo processes in test_hooks_ddp.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torch_trainer_under_tune_monitor(tmp_path):
    env = {**os.environ, "MONITOR_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT),
           "RAY_memory_monitor_refresh_ms": "0"}
    done = subprocess.run([sys.executable, "-c", "from examples.ray_train_ddp import main; "
                           "main(lrs=(5.0,))"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("ddp_sweep_*")
    summary = json.loads((run / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert trial["killed"]["rule"] == "divergence", trial
    (result,) = run.glob("trial_*/result.json")
    last = json.loads(result.read_text().splitlines()[-1])
    assert set(last["health"]["layers"]) == {"1", "3"}  # not "module.1"
