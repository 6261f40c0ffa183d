"""The driver SIGKILLed at each step of the kill path, then resumed: every verdict exactly once in
store, log, summary and kill report, and a killed trial is never relaunched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from monitor.driver.verdicts import VerdictLog
from monitor.faults import POINTS
from monitor.store import RunStore

EXP = """\
trainer: master
metric: val_logmel
mode: min
max_iterations: 5
resources: {cpu: 1}
heuristics: [builtin]
config: {steps_per_iteration: 3, checkpoint_every: 1, width: 16, depth: 2}
variants:
  - name: healthy
  - name: dead_relu_bias_init
    bias_init: -0.5
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_crash_in_the_kill_path_then_resume(tmp_path, point):
    exp = tmp_path / "crash_exp.yaml"
    exp.write_text(EXP)
    storage = tmp_path / "runs"
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "COLUMNS": "100"}
    cmd = [sys.executable, "-m", "trainers.tune", str(exp), "--storage", str(storage)]
    first = subprocess.Popen(cmd, env={**env, "MONITOR_CRASH_AT": point},
                             stdout=open(tmp_path / "first.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    code = first.wait(timeout=400)
    try:
        os.killpg(first.pid, signal.SIGKILL)  # the Ray processes the dead driver started
    except ProcessLookupError:
        pass
    assert code == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    (run_dir,) = storage.glob("crash_exp_*")

    proc = subprocess.run([*cmd, "--resume", str(run_dir)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    key = ("rule", "trial", "iteration")
    logged = [tuple(v[k] for k in key) for v in
              VerdictLog(run_dir / "heuristics" / "verdicts.jsonl").read() if v["action"] == "kill"]
    with RunStore(run_dir, create=False) as store:
        stored = [tuple(v[k] for k in key) for v in store.verdicts("kill")]
        trials = {t["trial_id"]: t for t in store.trials()}
    summary = json.loads((run_dir / "summary.json").read_text())
    summarised = [(t["killed"]["rule"], t["trial_id"], t["killed"]["iteration"])
                  for t in summary["trials"] if t.get("killed")]
    assert len(logged) == 1 and logged[0][0] == "dead_relu_collapse", logged
    assert stored == logged and summarised == logged
    killed = trials[logged[0][1]]
    assert killed["status"] == "KILLED" and killed["iterations"] == logged[0][2]
    healthy = next(t for t in summary["trials"] if not t.get("killed"))
    assert healthy["iterations"] == 5

    report = subprocess.run([sys.executable, "-m", "monitor.cli", "kill-report", str(run_dir),
                             "--format", "json"], env=env, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    kills = json.loads(report.stdout)["kills"]
    assert [(k["rule"], k["trial"]) for k in kills] == [logged[0][:2]]
