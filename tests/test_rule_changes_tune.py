"""Issue 27 under a real Ray Tune sweep: a rule applied mid-run through `monitor rules apply`
is replayed over the recorded history (retroactive shadow verdicts), shadowed live, armed, and
stops a failing trial; its version is in the verdict, the store, the kill report and replay; a
malformed rule is refused in one line while the sweep goes on; a restored driver keeps it.

Trials wait at gates (files the test creates) so that each step happens at a known iteration;
five trials of 0.4 CPU run at once on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray import tune

import monitor
from heuristics.rules import BUILTIN_DIR
from monitor.driver.rulechanges import RuleChangeError
from monitor.driver.scheduler import live
from monitor.store import RunStore

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RULE = """\
groups:
  - name: team
    rules:
      - name: loss_climbing
        expr: loss > 1.5
        for: 2
        labels: {action: kill, failure: training_regressed}
        annotations: {summary: "loss {{ $value }} above 1.5"}
"""
MALFORMED = RULE.replace("loss > 1.5", "loss >")
BUDGET = 12
GATES = {6: "go1", 9: "go2"}  # trials wait before these iterations until the file exists
FAILS_FROM = {"early": 2, "late": 7, "phoenix": 2}


def trainable(config: dict) -> None:
    gates, kind = Path(config["gates"]), config["kind"]
    if kind == "phoenix" and not (gates / "restored").exists():
        for i in range(1, 3):
            tune.report({"loss": 1.0 / i})
        raise RuntimeError("phoenix fails its first run")
    for i in range(1, BUDGET + 1):
        if i in GATES:
            (gates / f"at{i}-{kind}").touch()
            deadline = time.time() + 120
            while not (gates / GATES[i]).exists() and time.time() < deadline:
                time.sleep(0.05)
        failing = kind in FAILS_FROM and i >= FAILS_FROM[kind]
        tune.report({"loss": 1.0 + i if failing else 1.0 / i})
        time.sleep(0.05)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def wait_for(path_glob: tuple[Path, str], count: int, timeout: float = 120) -> None:
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while len(list(folder.glob(pattern))) < count:
        assert time.time() < deadline, f"timed out waiting for {count} x {pattern}"
        time.sleep(0.05)


def status(run_dir: Path) -> dict:
    out = cli("rules", "status", str(run_dir), "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_rule_applied_mid_sweep_is_shadowed_armed_and_kept_across_a_restart(
        ray_session, tmp_path):
    gates = tmp_path / "gates"
    gates.mkdir()
    rule_file, bad_file = tmp_path / "climb.yaml", tmp_path / "bad.yaml"
    rule_file.write_text(RULE)
    bad_file.write_text(MALFORMED)
    mon = monitor.TuneMonitor("rchg", signals={"train_loss": "loss"}, budget=BUDGET,
                              rules=[str(BUILTIN_DIR / "10_divergence.yaml")],
                              storage=tmp_path / "runs", exporter=False)
    run_dir = mon.run_dir
    kinds = ["healthy", "healthy2", "early", "late", "phoenix"]
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 0.4}),
                       param_space={"kind": tune.grid_search(kinds), "gates": str(gates)},
                       tune_config=mon.tune_config(), run_config=mon.run_config(verbose=0))
    seen: dict = {}

    def operator() -> None:  # what a user does while the sweep runs
        try:
            wait_for((gates, "at6-*"), 4)
            seen["loop"] = mon.store_callback.loop_thread
            seen["bad_cli"] = cli("rules", "apply", str(run_dir), str(bad_file))
            try:  # the driver's own check (the Python API goes through the driver)
                mon.apply_rules(bad_file)
            except RuleChangeError as exc:
                seen["bad_api"] = str(exc)
            seen["apply"] = cli("rules", "apply", str(run_dir), str(rule_file))
            seen["again"] = cli("rules", "apply", str(run_dir), str(rule_file))
            seen["status1"] = status(run_dir)
            (gates / "go1").touch()
            wait_for((gates, "at9-*"), 4)
            time.sleep(1.0)  # results of iterations 7-8 reach the driver
            seen["status2"] = status(run_dir)
            seen["arm"] = cli("rules", "arm", str(run_dir), "loss_climbing")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            seen["error"] = exc
        finally:
            (gates / "go1").touch()
            (gates / "go2").touch()

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    started = time.monotonic()
    results = tuner.fit()
    thread.join(timeout=60)
    assert "error" not in seen, seen.get("error")
    assert seen["loop"] is not None  # the Python API asked the driver's loop, as the CLI did
    assert time.monotonic() - started < 150

    # A malformed rule: refused in one line, by the CLI and by the driver; the sweep went on.
    bad = seen["bad_cli"]
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert "bad.yaml:5" in bad.stderr and "expr" in bad.stderr
    assert "bad.yaml:5" in seen["bad_api"] and "\n" not in seen["bad_api"]
    # Applied: shadow, a retroactive would-be kill of `early` (it climbed from iteration 2).
    applied = seen["apply"]
    assert applied.returncode == 0, applied.stderr
    assert "revision 2" in applied.stdout and "would have stopped 1 trial" in applied.stdout
    assert "nothing to change" in seen["again"].stdout
    (rule,) = seen["status1"]["rules"]
    version = rule["version"]
    assert rule["mode"] == "shadow" and rule["user"]
    would = {t["variant"]: t["would_kill"] for t in rule["trials"] if t["would_kill"]}
    early = next(k for k in would if k.startswith("kind=early") or "early" in k)
    assert would[early]["retroactive"] and would[early]["iteration"] == 3
    # Live shadow verdict: `late` climbed after the rule was applied.
    (rule,) = seen["status2"]["rules"]
    would = {t["variant"]: t["would_kill"] for t in rule["trials"] if t["would_kill"]}
    late = next(k for k in would if "late" in k)
    assert not would[late]["retroactive"] and would[late]["iteration"] == 8
    assert seen["arm"].returncode == 0 and "revision 3" in seen["arm"].stdout

    # Armed: both failing trials stopped at their next result; version everywhere.
    with RunStore(run_dir, create=False) as store:
        kills = {v["trial"]: v for v in store.verdicts("kill") if not v.get("shadow")}
        changes = store.rule_changes()
        trials = {t["trial_id"]: t for t in store.trials()}
    assert {trials[t]["variant"].split("kind=")[-1].split(",")[0] for t in kills} \
        >= {"early", "late"}, kills
    for kill in kills.values():
        assert kill["rule"] == "loss_climbing" and kill["iteration"] == 9
        assert kill["rule_version"] == version and kill["ruleset_revision"] == 3
    assert [(c["revision"], c["op"]) for c in changes if c["rule"] == "loss_climbing"] == \
        [(2, "apply"), (3, "arm")]
    assert all(c["version"] == version for c in changes if c["rule"] == "loss_climbing")
    assert len({c["user"] for c in changes}) == 1
    report = cli("kill-report", str(run_dir), "--format", "json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert {k["rule_version"] for k in data["kills"]} == {version}
    assert data["rule_set"]["revision"] == 3
    table = cli("kill-report", str(run_dir))
    assert f"loss_climbing {version} (rev 3)" in table.stdout, table.stdout
    replay = cli("replay", str(run_dir), "--rules", str(rule_file), "--format", "json")
    assert json.loads(replay.stdout)["rule_versions"] == {"loss_climbing": version}
    errored = [r for r in results if r.error]
    assert len(errored) == 1  # phoenix, on purpose

    # A restored driver keeps the armed rule: phoenix, run again, is stopped by it.
    (gates / "restored").touch()
    restored = tune.Tuner.restore(str(run_dir), tune.with_resources(trainable, {"cpu": 0.4}),
                                  resume_errored=True)
    restored.fit()
    scheduler = live(run_dir.name)
    assert scheduler is not None and scheduler.ruleset.revision == 3
    assert {(r["rule"], r["mode"]) for r in scheduler.ruleset.describe()} >= \
        {("loss_climbing", "armed")}
    with RunStore(run_dir, create=False) as store:
        kills = {store_trial["variant"]: v for v in store.verdicts("kill")
                 if not v.get("shadow")
                 for store_trial in store.trials() if store_trial["trial_id"] == v["trial"]}
    phoenix = next(v for k, v in kills.items() if "phoenix" in k)
    assert phoenix["rule"] == "loss_climbing" and phoenix["rule_version"] == version
    assert phoenix["ruleset_revision"] == 3 and phoenix["iteration"] == 3
