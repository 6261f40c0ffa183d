"""Issue 25: a disk that is really full (a small tmpfs) at each write of a run.

Each test mounts a tmpfs of a few MiB (root only: skipped where mounting is not permitted;
``test_reliability.py`` and ``test_reliability_tune.py`` inject the same failure at the write
call, which runs everywhere) and fills it, to the last byte, exactly while one file of the run
is written (run store, verdict log, notices, rule state, summary, exporter file_sd), or from
that write on. The run must finish, every kill still stop its trial, every verdict be in the
store or the log (or the summary say it is recorded nowhere), no file be left torn, and the
summary name what was lost.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from unittest.mock import MagicMock

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

import monitor
from heuristics.rules import load_rules
from monitor import durability, store
from monitor.driver import rulestate, verdicts
from monitor.driver.scheduler import HeuristicScheduler
from monitor.driver.verdicts import VerdictLog
from monitor.store import RunStore

VOCAB = monitor.Vocabulary(train_loss="loss", validation="val_loss", mode="min")
SIZE = "8m"


class SmallDisk:
    """A mounted tmpfs that can be filled to the last byte and freed again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / f".filler-{uuid.uuid4().hex}"
        self.fills = 0

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        self.fills += 1

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def full_while(monkeypatch, disk: SmallDisk, point: str, sticky: bool = False) -> None:
    """Make the disk full while ``point`` is written (every write of it) and free while any
    other file is; ``sticky``: full from the first write of ``point`` on, for good. The hook is
    the one ``MONITOR_DISK_FULL_AT`` uses: called just before each write of each file."""
    state = {"full": False}

    def hook(name: str) -> None:
        if name == point or (sticky and state["full"]):
            if not state["full"] or not disk.filler.exists():
                disk.fill()
            state["full"] = True
        elif state["full"]:
            disk.free()
            state["full"] = False

    for module in (durability, verdicts, rulestate, store):
        monkeypatch.setattr(module, "disk_full", hook)


def durable_verdicts(run_dir: Path) -> list[dict]:
    out = VerdictLog(run_dir / "heuristics" / "verdicts.jsonl").read()
    if (run_dir / "monitor.sqlite").exists():
        try:
            with RunStore(run_dir, create=False) as s:
                out += s.verdicts()
        except store.StoreError:
            pass
    return out


def no_torn_file(run_dir: Path) -> None:
    """Every log line is whole JSON, and no temporary file of an atomic write is left."""
    for path in run_dir.rglob("*.jsonl"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            assert not line or json.loads(line), f"{path}:{i}"
    assert not [p for p in run_dir.rglob(".*.tmp")]


WORDS = {"monitor.sqlite": "run store", "verdicts.jsonl": "verdict log",
         "notices.jsonl": "notices", "summary.json": "summary", "file_sd": "file_sd",
         "state.sqlite": "rule state"}


@pytest.mark.parametrize("point, sticky", [
    ("monitor.sqlite", False), ("verdicts.jsonl", False), ("notices.jsonl", False),
    ("summary.json", False), ("file_sd", False),
    ("verdicts.jsonl", True), ("monitor.sqlite", True)])
def test_a_loop_run_on_a_disk_that_fills(small_disk, monkeypatch, point, sticky):
    monkeypatch.setenv("MONITOR_EXPORTER_PORT", "0")
    full_while(monkeypatch, small_disk, point, sticky)
    run = monitor.LoopMonitor("disk", signals=VOCAB, rules=["builtin"], budget=10,
                              storage=small_disk.root, exporter=True)
    for i in range(4):
        assert not run.report({"loss": 1.0 / (i + 1), "val_loss": 1.0}, trial="ok").stop
    for _ in range(6):  # validation never reported: notices
        run.report({"loss": 1.0, "val_los": 1.0}, trial="typo")
    decision = run.report({"loss": float("nan"), "val_loss": 1.0}, trial="nan")
    assert decision.stop and decision.rule == "divergence"
    summary = run.close()  # never raises
    assert small_disk.fills, "the disk was never filled"
    assert summary["kills"] == 1
    assert {t["trial_id"]: t["status"] for t in summary["trials"]}.get("nan", "KILLED") == \
        "KILLED"
    small_disk.free()
    gaps = " ".join(summary["not_recorded"])
    assert WORDS[point] in gaps, summary["not_recorded"]
    assert "damaged" not in gaps  # a full disk is never called damage
    kills = [v for v in durable_verdicts(run.run_dir) if v["action"] == "kill"]
    if not kills:
        assert "recorded nowhere" in gaps, summary["not_recorded"]
    else:
        assert {(v["trial"], v["rule"]) for v in kills} == {("nan", "divergence")}
    written = run.run_dir / "summary.json"
    if written.exists():
        assert json.loads(written.read_text())["not_recorded"] == summary["not_recorded"]
    else:
        assert "summary" in gaps
    no_torn_file(run.run_dir)


RULES = """\
groups:
  - name: test
    rules:
      - name: low
        expr: avg_over(loss, 2) < 0.01
        for: 2
        labels: {action: kill, failure: collapse}
      - name: nan
        expr: nonfinite(loss)
        labels: {action: kill, failure: divergence}
"""


@pytest.mark.parametrize("sticky", [False, True])
def test_the_rule_state_on_a_disk_that_fills(small_disk, monkeypatch, tmp_path, sticky):
    """The Tune driver's scheduler (stub trials, as Ray's own scheduler tests): the rule state
    cannot be written, kills go on, the verdicts are recorded, the loss is named."""
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    run_dir = small_disk.root / "run"
    sched = HeuristicScheduler(load_rules([str(path)]), run_dir, "exp", budget=20,
                               vocabulary=monitor.Vocabulary(train_loss="loss"))
    sched.set_search_properties("loss", "min")
    full_while(monkeypatch, small_disk, "state.sqlite", sticky)
    controller = MagicMock()
    collapsing, diverging = Trial("__fake", stub=True), Trial("__fake", stub=True)
    decisions = [sched.on_trial_result(controller, collapsing,
                                       {"training_iteration": i, "loss": 0.001})
                 for i in range(1, 4)]
    assert decisions[-1] == TrialScheduler.STOP
    assert sched.on_trial_result(controller, diverging, {"training_iteration": 1,
                                                         "loss": float("nan")}) \
        == TrialScheduler.STOP
    assert small_disk.fills
    small_disk.free()
    lost = " ".join(durability.losses(run_dir))
    assert "rule state" in lost and "kills go on" in lost
    kills = {(v["trial"], v["rule"]) for v in durable_verdicts(run_dir) if v["action"] == "kill"}
    if sticky:  # nothing written after the state: the verdicts are said to be nowhere
        assert kills or "recorded nowhere" in lost
    else:
        assert kills == {(collapsing.trial_id, "low"), (diverging.trial_id, "nan")}
    no_torn_file(run_dir)


def test_an_append_the_disk_cuts_short_leaves_no_half_line(small_disk):
    """The verdict log's last page has room for part of an entry: the part written is cut
    back, and the next entry, once there is room, is read whole."""
    log = VerdictLog(small_disk.root / "verdicts.jsonl")
    first = {"trial": "t", "n": 0, "pad": "x" * 3900}
    log.append(first)
    small_disk.fill()
    with pytest.raises(OSError) as info:
        log.append({"trial": "t", "n": 1, "pad": "y" * 2000})
    assert info.value.errno == errno.ENOSPC
    assert log.path.read_text().endswith("\n")
    small_disk.free()
    log.append({"trial": "t", "n": 2})
    assert [e["n"] for e in log.read()] == [0, 2]


def test_a_line_torn_by_a_crash_does_not_swallow_the_next(tmp_path):
    """A driver killed mid-append leaves a line without its end; the next append starts a
    line of its own, so only the torn entry is lost."""
    log = VerdictLog(tmp_path / "verdicts.jsonl")
    log.append({"trial": "t", "n": 0})
    with log.path.open("a") as f:
        f.write('{"trial": "t", "n": 1, "rea')
    log.append({"trial": "t", "n": 2})
    assert [e["n"] for e in log.read()] == [0, 2]
