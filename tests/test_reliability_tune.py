"""Issue 25 under real Ray Tune runs: hostile reports (1, 3, 7, 11), a full disk at each write
(6), damaged files on resume (5), and no secret in any file a run writes or any line it prints.
Tiny function trainables, one shared Ray instance (``ray_session``)."""

from __future__ import annotations

import json
import logging
import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from ray import tune

import monitor
from monitor.driver.summary import summarise
from monitor.driver.verdicts import VerdictLog
from monitor.durability import DISK_FULL_ENV
from monitor.store import RunStore

pytestmark = pytest.mark.slow
SECRET = "s3cretPASS"
TOKEN = "glsa_T0KENsecret"
VOCAB = {"train_loss": "loss", "validation": "val_loss", "mode": "min"}
BAD = {  # what a trial reports at its 2nd iteration (``tune.report`` itself refuses torch
    # tensors in the trial: "Passing objects containg Torch tensors as metrics is not supported";
    # LoopMonitor takes them, tests/test_reliability.py)
    "huge": {"loss": 10 ** 400},
    "np_nan": {"loss": np.float32("nan")},
    "decimal_nan": {"loss": Decimal("NaN")},
    "array_nan": {"loss": np.array(float("nan"))},
}
ODD = {"loss": np.float16(0.5), "health": {"layers": "x", "model": {"power_loss": "loud"}},
       "listy": [1, 2], "note": "text",
       "training_iteration": 2 ** 63}  # a trial's own (Tune keeps it): Ray's loggers need one


def trainable(config: dict) -> None:
    kind = config["kind"]
    for i in range(1, 5):
        metrics = {"loss": 1.0 / i, "val_loss": 1.0 / i}
        if kind in BAD and i == 2:
            metrics.update(BAD[kind])
        if kind == "odd":
            metrics.update(ODD)
        tune.report(metrics)


def fit(tmp_path: Path, kinds: list[str]) -> tuple[monitor.TuneMonitor, dict]:
    mon = monitor.TuneMonitor("rel", signals=VOCAB, rules=["builtin"], budget=4,
                              storage=tmp_path)
    tuner = tune.Tuner(trainable, param_space={"kind": tune.grid_search(kinds)},
                       tune_config=mon.tune_config(), run_config=mon.run_config(verbose=0))
    return mon, mon.summary(tuner.fit())


def every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_hostile_reports_and_no_secret_anywhere(ray_session, tmp_path, monkeypatch, capfd,
                                                caplog):
    """3, 4, 7, 11 under Tune: every numeric type's NaN (and 10**400) is killed by divergence,
    odd values are left out with a notice (a trial's own training_iteration of 2**63 too: it
    ended the sweep in Ray's TensorBoard logger), the sweep ends with a summary. 1: with a password
    in GRAFANA_URL and a token set, neither is in any file of the run (tuner.pkl included) nor
    in anything printed or logged, though every kill was posted (and failed)."""
    monkeypatch.setenv("GRAFANA_URL", f"http://admin:{SECRET}@127.0.0.1:9")
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    caplog.set_level(logging.INFO)
    mon, summary = fit(tmp_path, ["healthy", "odd", *BAD])
    trials = {t["variant"] or t["trial_id"]: t for t in summary["trials"]}
    by_status = {t["trial_id"]: t["status"] for t in summary["trials"]}
    assert len(trials) == 2 + len(BAD), summary["trials"]
    killed = [t for t in summary["trials"] if t.get("killed")]
    assert len(killed) == len(BAD), by_status
    assert all(t["killed"]["rule"] == "divergence" and t["killed"]["iteration"] == 2
               for t in killed)
    assert sum(t["iterations"] == 4 and not t.get("killed") for t in summary["trials"]) == 2
    assert any("health/layers" in n for n in summary["notices"]), summary["notices"]
    assert any("training_iteration: expected a whole number" in n for n in summary["notices"])
    assert (mon.run_dir / "summary.json").exists() and mon.run_dir.joinpath("tuner.pkl").exists()
    assert "could not post the kill" in caplog.text and "***@127.0.0.1:9" in caplog.text

    captured = capfd.readouterr()
    printed = captured.out + captured.err + caplog.text
    assert SECRET not in printed and TOKEN not in printed
    files = every_file(tmp_path)
    assert any(p.name == "tuner.pkl" for p in files) and len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data and TOKEN.encode() not in data, path


@pytest.mark.parametrize("point", ["state.sqlite", "verdicts.jsonl", "monitor.sqlite", "all"])
def test_6_a_full_disk_at_each_write_of_a_tune_run(ray_session, tmp_path, monkeypatch, point):
    """The sweep finishes, the kill stands, every verdict is somewhere durable (unless every
    write fails, which the summary says), and the summary names what was lost."""
    monkeypatch.setenv(DISK_FULL_ENV, point)
    mon, summary = fit(tmp_path, ["healthy", "np_nan"])
    assert summary["kills"] == 1
    assert sorted(t["iterations"] for t in summary["trials"]) == [2, 4]
    gaps = " ".join(summary["not_recorded"])
    words = {"state.sqlite": "rule state", "verdicts.jsonl": "verdict log",
             "monitor.sqlite": "run store", "all": "recorded nowhere"}[point]
    assert words in gaps, summary["not_recorded"]
    monkeypatch.delenv(DISK_FULL_ENV)
    durable = VerdictLog(mon.run_dir / "heuristics" / "verdicts.jsonl").read()
    if point != "monitor.sqlite" and (mon.run_dir / "monitor.sqlite").exists():
        with RunStore(mon.run_dir, create=False) as store:
            durable += store.verdicts()
    if point != "all":
        assert [v["rule"] for v in durable if v["action"] == "kill"][:1] == ["divergence"]
        assert json.loads((mon.run_dir / "summary.json").read_text())["kills"] == 1


def test_5_resume_with_a_damaged_state_and_a_log_of_another_shape(ray_session, tmp_path,
                                                                  caplog):
    """Restored with state.sqlite not a database and a verdict log of valid JSON that holds no
    verdict: one warning each, the state moved aside, the kill recorded only in the store
    copied into the log, a summary."""
    mon, summary = fit(tmp_path, ["healthy", "np_nan"])
    assert summary["kills"] == 1
    state = mon.run_dir / "heuristics" / "state.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    state.write_bytes(b"not a database" * 100)
    log_path = mon.run_dir / "heuristics" / "verdicts.jsonl"
    log_path.write_text("[1, 2]\n")
    (mon.run_dir / "summary.json").unlink()
    caplog.set_level(logging.WARNING)
    tuner = tune.Tuner.restore(str(mon.run_dir), trainable, resume_errored=True)
    results = tuner.fit()
    assert "not a readable rule state" in caplog.text
    assert "is not an entry of this log" in caplog.text
    assert list(state.parent.glob("state.sqlite.damaged-*"))
    logged = VerdictLog(log_path).read()
    assert [v["rule"] for v in logged if isinstance(v, dict) and v.get("action") == "kill"] \
        == ["divergence"]
    again = summarise(mon.run_dir, "rel", mon.vocabulary, results)
    assert again["kills"] == 1
    assert math.isfinite(again["best"]["metric"])


@pytest.mark.parametrize("url", [f"admin:{SECRET}@127.0.0.1:9", f"http:/admin:{SECRET}@127.0.0.1:9",
                                 f"http://u:{SECRET}@[::1"])
def test_1_2_12_no_form_of_grafana_url_leaks_from_a_tune_run(ray_session, tmp_path, monkeypatch,
                                                            capfd, caplog, url):
    """The forms without ``//`` and with a broken IPv6 host (and a kill webhook whose port is
    its token): the kill is still made and posted (and fails), and neither password nor token
    is in any file of the run (``tuner.pkl`` included) or in anything printed or logged."""
    monkeypatch.setenv("GRAFANA_URL", url)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("MONITOR_ALERT_WEBHOOK", f"http://127.0.0.1:{SECRET}/hooks")
    caplog.set_level(logging.INFO)
    mon, summary = fit(tmp_path, ["healthy", "np_nan"])
    assert summary["kills"] == 1 and (mon.run_dir / "summary.json").exists()
    assert "could not post the kill" in caplog.text and "MONITOR_ALERT_WEBHOOK" in caplog.text
    captured = capfd.readouterr()
    printed = captured.out + captured.err + caplog.text
    assert SECRET not in printed and TOKEN not in printed
    files = every_file(tmp_path)
    assert any(p.name == "tuner.pkl" for p in files)
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data and TOKEN.encode() not in data, path
