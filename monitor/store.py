"""The run store: one SQLite database (WAL mode) per experiment run, written from the driver.

Tables: ``trials`` (config, role, status, budget, final quality, outcome), ``samples`` (trial,
iteration, time, signal, layer, value) and ``verdicts`` (kills and warnings with their evidence).

NaN is stored as NULL (SQLite has no NaN) and read back as NaN. Samples are buffered and
written in batches (one transaction per batch), so the driver keeps
up; verdicts are committed on their own, synchronously, before the scheduler acts on them. A
crash of the driver loses at most the samples of the last unflushed batch, never a verdict.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from heuristics.results import unflatten_health

STORE_FILE = "monitor.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, experiment TEXT, run TEXT, variant TEXT, role TEXT,
    config TEXT, status TEXT, budget INTEGER, iterations INTEGER, time_total_s REAL,
    final_metric REAL, outcome TEXT, outcome_source TEXT, started REAL, ended REAL);
CREATE TABLE IF NOT EXISTS samples (
    trial_id TEXT, iteration INTEGER, time_s REAL, signal TEXT, layer TEXT, value REAL,
    PRIMARY KEY (trial_id, iteration, signal, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, trial_id TEXT, iteration INTEGER, wall_time REAL,
    rule TEXT, failure TEXT, action TEXT, shadow INTEGER, reason TEXT, data TEXT,
    UNIQUE (trial_id, rule, iteration, action, shadow));
"""


class StoreError(RuntimeError):
    """A run store that cannot be opened or read (missing, damaged, not a store)."""


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def result_rows(trial: str, result: dict[str, Any]) -> list[tuple]:
    """Sample rows of one Tune result: per-layer health signals and every top-level number."""
    iteration = int(result.get("training_iteration", 0))
    time_s = _num(result.get("time_total_s")) or 0.0
    health = unflatten_health(result)
    rows = []
    for layer, signals in (health.get("layers") or {}).items():
        for signal, value in signals.items():
            if _num(value) is not None:
                rows.append((trial, iteration, time_s, signal, layer, float(value)))
    for signal, value in (health.get("model") or {}).items():
        if _num(value) is not None:
            rows.append((trial, iteration, time_s, signal, "", float(value)))
    for key, value in result.items():
        if _num(value) is not None and not key.startswith("health/") and "/" not in key:
            rows.append((trial, iteration, time_s, key, "", float(value)))
    return rows


class RunStore:
    """Reads and writes ``<run dir>/monitor.sqlite``."""

    def __init__(self, path: str | Path, batch_size: int = 2000, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".sqlite":
            self.path = self.path / STORE_FILE
        if not create and not self.path.exists():
            raise StoreError(f"{self.path}: no run store here (was the experiment run with "
                             "this version?)")
        self.batch_size = batch_size
        self._pending: list[tuple] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if create:
                self.db.executescript(SCHEMA)
            else:
                self.db.execute("SELECT count(*) FROM trials").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: damaged or not a run store ({exc})") from None

    # -- writing ----------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def upsert_trial(self, trial: str, **fields: Any) -> None:
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = json.dumps(fields["config"], default=str)
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{c}=excluded.{c}" for c in fields)
        with self.db:
            self.db.execute(f"INSERT INTO trials (trial_id, {cols}) VALUES (?, {marks}) "
                            f"ON CONFLICT(trial_id) DO UPDATE SET {updates}",
                            (trial, *fields.values()))

    def add_result(self, trial: str, result: dict[str, Any]) -> None:
        """Buffer the samples of one result; flushes when the batch is full."""
        self._pending.extend(result_rows(trial, result))
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> int:
        """Write the buffered samples in one transaction; return how many."""
        rows, self._pending = self._pending, []
        if rows:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                                    rows)
        return len(rows)

    def add_verdict(self, verdict: dict[str, Any]) -> None:
        """Commit one verdict now (before the scheduler acts on it); idempotent."""
        data = json.dumps(verdict, default=str, allow_nan=True)
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO verdicts (trial_id, iteration, wall_time, rule, failure, "
                "action, shadow, reason, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (verdict["trial"], verdict["iteration"], verdict["wall_time"], verdict["rule"],
                 verdict["failure"], verdict["action"], int(bool(verdict.get("shadow"))),
                 verdict["reason"], data))

    def close(self) -> None:
        self.flush()
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def trials(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM trials ORDER BY trial_id")
        cols = [c[0] for c in cur.description]
        out = []
        for row in cur:
            t = dict(zip(cols, row))
            t["config"] = json.loads(t["config"]) if t.get("config") else {}
            out.append(t)
        return out

    def verdicts(self, action: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT data FROM verdicts"
        args: tuple = ()
        if action:
            query += " WHERE action = ?"
            args = (action,)
        return [json.loads(d) for (d,) in self.db.execute(query + " ORDER BY id", args)]

    def results(self, trial: str) -> list[dict[str, Any]]:
        """The recorded results of ``trial`` rebuilt in Tune's flattened form, by iteration."""
        by_iteration: dict[int, dict[str, Any]] = {}
        for iteration, time_s, signal, layer, value in self.db.execute(
                "SELECT iteration, time_s, signal, layer, value FROM samples WHERE trial_id = ? "
                "ORDER BY iteration", (trial,)):
            r = by_iteration.setdefault(iteration, {"training_iteration": iteration,
                                                    "time_total_s": time_s})
            value = math.nan if value is None else value  # SQLite stores NaN as NULL
            if layer:
                r[f"health/layers/{layer}/{signal}"] = value
            elif signal in MODEL_SIGNALS:
                r[f"health/model/{signal}"] = value
            else:
                r[signal] = value
        return [by_iteration[i] for i in sorted(by_iteration)]

    def series(self, trial: str, signal: str) -> dict[str, list[tuple[int, float]]]:
        """``{layer or "": [(iteration, value)]}`` for one signal of one trial."""
        out: dict[str, list[tuple[int, float]]] = {}
        for layer, iteration, value in self.db.execute(
                "SELECT layer, iteration, value FROM samples WHERE trial_id = ? AND signal = ? "
                "ORDER BY iteration", (trial, signal)):
            out.setdefault(layer, []).append((iteration, math.nan if value is None else value))
        return out


MODEL_SIGNALS = {"output_power_db", "target_power_db", "power_loss", "power_ratio_db",
                 "sampled_steps"}
