"""The compact run store: interned names, one blob per result, the ``samples`` view, no Tune
bookkeeping, batches, and the old per-sample queries answered the same."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest

from monitor.after import calibrate
from monitor.store import RunStore, StoreError, result_rows

TUNE_KEYS = {"timestamp": 1.7e9, "time_this_iter_s": 0.5, "pid": 4242, "time_since_restore": 3.0,
             "iterations_since_restore": 2, "done": False, "date": "2026-12-02",
             "hostname": "vm", "trial_id": "t1", "node_ip": "127.0.0.1"}


def result(i: int, layers: int = 3, **extra) -> dict:
    return {"training_iteration": i, "time_total_s": 10.0 * i, "loss_g": 1.0 / i,
            "val_logmel": 2.0 + i, "n_parameters": 123456789012, **TUNE_KEYS,
            "health": {"layers": {f"l{k}": {"dead_ratio": 0.1 * k, "activation_std": i + k}
                                  for k in range(layers)},
                       "model": {"power_ratio_db": -3.0 * i}}, **extra}


def test_bookkeeping_keys_are_not_signals_but_iteration_and_time_are_kept(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_result("t1", result(1))
    with RunStore(tmp_path, create=False) as store:
        [r] = store.results("t1")
        signals = {row[0] for row in store.db.execute("SELECT DISTINCT signal FROM samples")}
    assert signals == {"dead_ratio", "activation_std", "power_ratio_db", "loss_g", "val_logmel",
                       "n_parameters"}
    assert r["training_iteration"] == 1 and r["time_total_s"] == 10.0
    assert r["n_parameters"] == 123456789012  # float64: exact up to 2**53
    assert not TUNE_KEYS.keys() & r.keys()


def test_reads_match_the_per_sample_rows_written(tmp_path):
    """results(), series(), samples() and the SQL view give back every row ``result_rows``
    describes, whatever the layouts (layers appearing, signals missing, NaN, numpy values)."""
    history = [result(1), result(2, layers=5), result(3, loss_d=np.float64(0.25)),
               result(4, loss_g=math.nan, extra_flag=True, note="text")]
    history[2]["health"]["layers"]["l0"].pop("dead_ratio")
    with RunStore(tmp_path, batch_size=7) as store:
        for r in history:
            store.add_result("t1", r)
            store.add_result("t2", {**r, "loss_g": 5.0})
    with RunStore(tmp_path, create=False) as store:
        expected = sorted((row[1], row[3], row[4], row[5]) for r in history
                          for row in result_rows("t1", r))
        got = sorted(store.samples("t1"))
        assert len(got) == len(expected)
        for (i, s, layer, v), (ei, es, el, ev) in zip(got, expected):
            assert (i, s, layer) == (ei, es, el)
            assert v == ev or (math.isnan(v) and math.isnan(ev))
        view = sorted((i, s, layer, math.nan if v is None else v) for i, s, layer, v in
                      store.db.execute("SELECT iteration, signal, layer, value FROM samples "
                                       "WHERE trial_id = ?", ("t1",)))
        assert [row[:3] for row in view] == [row[:3] for row in got]
        results = store.results("t1")
        assert [r["training_iteration"] for r in results] == [1, 2, 3, 4]
        assert "health/layers/l0/dead_ratio" not in results[2]
        assert results[1]["health/layers/l4/activation_std"] == 6.0
        assert results[2]["loss_d"] == 0.25 and math.isnan(results[3]["loss_g"])
        assert store.series("t1", "dead_ratio")["l4"] == [(2, pytest.approx(0.4))]
        assert store.series("t2", "loss_g")[""] == [(i, 5.0) for i in (1, 2, 3, 4)]
        # The calibration reads the same samples.
        assert calibrate._series(store, "t1")[("power_ratio_db", "")] == \
            {1: -3.0, 2: -6.0, 3: -9.0, 4: -12.0}
        names = store.db.execute("SELECT count(*) FROM names").fetchone()[0]
        layouts = store.db.execute("SELECT count(*) FROM layouts").fetchone()[0]
    assert names == len({"dead_ratio", "activation_std", "power_ratio_db", "loss_g", "loss_d",
                         "val_logmel", "n_parameters", "", "l0", "l1", "l2", "l3", "l4"})
    assert layouts == 3  # the 4th result has the 1st one's layout


EXTREMES = [0.0, -0.0, 1.0, -1.5, math.pi, 5e-324, -5e-324, 2.2250738585072014e-308,
            2.225073858507201e-308, 1.7976931348623157e308, -1.7976931348623157e308, math.inf,
            -math.inf, math.nan, 1e-310, 123456789012.0, 0.1, 2.0 ** 53 + 2]


def test_every_view_reads_in_plain_sqlite_with_the_stored_values(tmp_path):
    """Python's sqlite3 and the sqlite3 shell, with no function of ours, select from every
    view; the samples view gives every value exactly (subnormals, -0.0, infinities; NaN as
    NULL)."""
    rng = np.random.default_rng(0)
    randoms = rng.integers(0, 2 ** 63, 400, dtype=np.int64).view(np.float64).tolist()
    values = EXTREMES + randoms + (rng.standard_normal(400) * 1e3).tolist()
    with RunStore(tmp_path) as store:
        for i in range(0, len(values), 100):
            store.add_result("t1", {"training_iteration": i // 100 + 1, "time_total_s": 1.0,
                                    **{f"v{k}": v for k, v in enumerate(values[i:i + 100])}})
    with RunStore(tmp_path, create=False) as store:
        expected = store.samples("t1")
    db = sqlite3.connect(tmp_path / "monitor.sqlite")  # plain: no f64 or other function
    views = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE "
                                            "type = 'view'")]
    assert views == ["samples"]
    for view in views:
        assert db.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
    got = db.execute("SELECT iteration, signal, layer, value FROM samples WHERE trial_id = 't1' "
                     "ORDER BY iteration, CAST(substr(signal, 2) AS INTEGER)").fetchall()
    assert len(got) == len(expected) == len(values)
    for (i, s, layer, v), (ei, es, el, ev) in zip(got, expected):
        assert (i, s, layer) == (ei, es, el)
        if math.isnan(ev):
            assert v is None
        else:
            assert v == ev and math.copysign(1, v) == math.copysign(1, ev), (s, v, ev)
    db.close()
    if shutil.which("sqlite3"):
        out = subprocess.run(["sqlite3", tmp_path / "monitor.sqlite",
                              "SELECT count(value), sum(value = 0.1) FROM samples"],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == f"{len(values) - 1}|1"  # every value but the NaN


def test_a_store_with_the_earlier_view_gets_the_plain_one(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_result("t1", result(1))
        store.db.execute("DROP VIEW samples")
        store.db.execute("CREATE VIEW samples AS SELECT f64(r.vals, 0) AS value FROM results r")
    with RunStore(tmp_path, create=False) as store:  # a reader leaves it (f64 is registered)
        assert store.db.execute("SELECT count(*) FROM samples").fetchone() == (1,)
    with RunStore(tmp_path):  # a writer replaces it
        pass
    db = sqlite3.connect(tmp_path / "monitor.sqlite")
    assert db.execute("SELECT value FROM samples WHERE signal = 'loss_g'").fetchone() == (1.0,)
    db.close()


def test_a_batch_is_one_transaction_and_a_reported_iteration_is_replaced(tmp_path):
    store = RunStore(tmp_path, batch_size=10**9)
    store.add_result("t1", result(1))
    other = RunStore(tmp_path, create=False)
    assert other.results("t1") == []  # buffered: not written yet
    assert store.flush() == 10  # samples
    store.add_result("t1", result(1, loss_g=9.0))  # a restored trial reports iteration 1 again
    store.close()
    [r] = other.results("t1")
    assert r["loss_g"] == 9.0
    other.close()


def test_samples_are_compact(tmp_path):
    with RunStore(tmp_path) as store:
        for i in range(1, 201):
            store.add_result(f"t{i % 4}", result(i, layers=50))
    path = tmp_path / "monitor.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    samples = 200 * (50 * 2 + 1 + 3)
    assert path.stat().st_size / samples < 25


def test_huge_integers_do_not_break_the_store(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_result("t1", result(1, big=10**400))
    with RunStore(tmp_path, create=False) as store:
        assert store.results("t1")[0]["big"] == math.inf


def test_store_of_the_old_format_is_a_clear_error(tmp_path):
    with sqlite3.connect(tmp_path / "monitor.sqlite") as db:
        db.execute("CREATE TABLE trials (trial_id TEXT)")
        db.execute("CREATE TABLE samples (trial_id TEXT, value REAL)")
    with pytest.raises(StoreError, match="older format"):
        RunStore(tmp_path, create=False)
