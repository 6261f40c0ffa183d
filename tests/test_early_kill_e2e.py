"""End to end under real Ray Tune: collapsing trials are killed early, healthy ones run on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from monitor.driver.rulestate import RuleStateStore
from monitor.driver.verdicts import VerdictLog
from monitor.store import RunStore
from trainers import experiment
from trainers import tune as runner

pytestmark = pytest.mark.slow


def test_collapsing_trials_are_killed_early_and_healthy_runs_to_the_end(ray_session, tmp_path):
    summary = runner.run(experiment.load("early_kill_smoke"), storage=tmp_path)
    trials = {t["variant"]: t for t in summary["trials"]}
    assert trials["healthy"]["iterations"] == 6 and "killed" not in trials["healthy"]
    dead = trials["dead_relu_bias_init"]
    assert dead["killed"]["rule"] == "dead_relu_collapse"
    assert dead["iterations"] == dead["killed"]["iteration"] <= 3
    assert trials["divergence"]["killed"]["failure"] == "divergence"
    assert trials["divergence"]["iterations"] == 1
    log = VerdictLog(tmp_path / summary["name"] / "heuristics" / "verdicts.jsonl").read()
    kills = [v for v in log if v["action"] == "kill"]
    assert sorted(v["trial"] for v in kills) == sorted(
        [dead["trial_id"], trials["divergence"]["trial_id"]])
    assert all(v["values"] and v["window"] and v["reason"].startswith("Trial ") for v in kills)


RESTORE_EXP = """\
trainer: master
metric: val_logmel
max_iterations: {iterations}
resources: {{cpu: 1}}
heuristics: [builtin]
config: {{steps_per_iteration: 10, checkpoint_every: 1, width: 24, depth: 2}}
variants:
  - name: healthy
  - name: dead_relu_bias_init
    bias_init: -0.5
  - name: silence_collapse
    power_weight: 0.0
    spectral_weight: 0.0
    adv_weight: 0.0
    fm_weight: 0.0
    wave_weight: 10.0
"""


def test_restore_after_the_driver_is_killed(tmp_path):
    """SIGKILL the driver after its first kill, restore with Tuner.restore, finish: no trial is
    killed twice, no kill is forgotten, and rule histories continue."""
    exp = tmp_path / "restore_exp.yaml"
    exp.write_text(RESTORE_EXP.format(iterations=14))
    storage = tmp_path / "runs"
    env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "trainers.tune", str(exp), "--storage", str(storage)]
    driver = subprocess.Popen(cmd, env=env, stdout=open(tmp_path / "first.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    log_path = None
    while time.time() < deadline:
        logs = list(storage.glob("*/heuristics/verdicts.jsonl"))
        if logs and any(v["action"] == "kill" for v in VerdictLog(logs[0]).read()):
            log_path = logs[0]
            break
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    assert log_path is not None, "no kill before the deadline"
    time.sleep(2)  # let Tune write an experiment checkpoint or two
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
    driver.wait()
    before = VerdictLog(log_path).read()
    run_dir = log_path.parent.parent
    killed = {v["trial"] for v in before if v["action"] == "kill"}
    states = RuleStateStore(run_dir, keep=100).load()
    unfinished = [t for t, s in states.items() if t not in killed and len(s["reports"]) < 14]
    assert unfinished, "the driver must be killed while a trial is still running"

    proc = subprocess.run([*cmd, "--resume", str(run_dir)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = VerdictLog(log_path).read()
    kills = [v for v in after if v["action"] == "kill"]
    assert [v for v in before if v["action"] == "kill"] == kills[:len(
        [v for v in before if v["action"] == "kill"])]  # nothing before the crash lost
    assert len({v["trial"] for v in kills}) == len(kills)  # nobody killed twice
    assert {v["failure"] for v in kills} == {"dead_relu_collapse", "silence_collapse"}
    summary = runner.json.loads((run_dir / "summary.json").read_text())
    healthy = next(t for t in summary["trials"] if t["variant"] == "healthy")
    assert healthy["iterations"] == 14 and "killed" not in healthy
    state = RuleStateStore(run_dir, keep=100).load()[healthy["trial_id"]]
    iterations = [r["iteration"] for r in state["reports"]]
    assert iterations == list(range(1, 15))  # one history across the crash
    # The run store: every kill exactly once; the sample history continues after the restore
    # (a crash may lose only the last unflushed batch of samples).
    store = RunStore(run_dir, create=False)
    store_kills = [(v["trial"], v["failure"]) for v in store.verdicts("kill")]
    assert sorted(store_kills) == sorted((v["trial"], v["failure"]) for v in kills)
    recorded = {r["training_iteration"] for r in store.results(healthy["trial_id"])}
    assert {1, 14} <= recorded and len(recorded) >= 10
    trial_row = next(t for t in store.trials() if t["trial_id"] == healthy["trial_id"])
    assert trial_row["status"] == "TERMINATED" and trial_row["iterations"] == 14
