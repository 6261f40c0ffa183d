"""Experiments on an existing multi-node Ray cluster: trials on a worker node are monitored,
killed, and exported by the driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_trials_on_a_worker_node_are_monitored_and_killed(tmp_path):
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.cluster_run", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    trials = {t["variant"]: t for t in result["trials"]}
    assert result["worker_node"] != result["head_node"]
    assert {t["node_id"] for t in result["trials"]} == {result["worker_node"]}
    assert trials["dead_relu_bias_init"]["killed"]["rule"] == "dead_relu_collapse"
    assert trials["divergence"]["killed"]["rule"] == "divergence"
    assert trials["healthy"]["iterations"] == 6 and not trials["healthy"]["killed"]
    assert set(result["scraped"]) == {t["trial_id"] for t in result["trials"]}
    assert all(result["scraped"].values())  # the worker's trials were in the driver's exporter
    # Tune's results and checkpoints go to --tune-storage; the run store, the verdicts and the
    # rule state stay with the driver.
    assert list((tmp_path / "shared" / result["run"]).glob("master_trainable_*/result.json"))
    assert not (tmp_path / "shared" / result["run"] / "monitor.sqlite").exists()
    assert (tmp_path / result["run"] / "monitor.sqlite").exists()
    assert (tmp_path / result["run"] / "heuristics" / "verdicts.jsonl").exists()
