"""The run store: one SQLite database (WAL mode) per experiment run, written from the driver.

Tables: ``trials`` (config, role, status, budget, final quality, outcome), ``verdicts`` (kills
and warnings with their evidence) and the samples of every result, stored compactly:

- ``names`` interns signal and layer names, ``series`` a (signal, layer) pair, ``trial_keys``
  a trial id, each as a small integer;
- ``layouts`` lists, in order, the series a result carries (a trial's results share one);
- ``results`` holds one row per (trial, iteration), ``WITHOUT ROWID``: the time, the layout and
  the values as one blob of little-endian float64 (NaN kept as NaN), about 8 bytes a sample.

The view ``samples`` (trial_id, iteration, time_s, signal, layer, value) shows one row per
sample, NaN as NULL, in any SQLite (``sqlite3 monitor.sqlite 'SELECT * FROM samples'``,
Python's ``sqlite3``): it decodes each value exactly with built-in SQL (about 6 us a sample;
``RunStore.samples``/``results``/``series`` read faster in Python). Tune's bookkeeping keys
(``pid``, ``timestamp``...) are not recorded: ``training_iteration`` and ``time_total_s`` are
the row's key and time.

Results are buffered and written in batches (one transaction per batch), so the driver keeps
up; verdicts are committed on their own, synchronously, before the scheduler acts on them. A
crash of the driver loses at most the samples of the last unflushed batch, never a verdict.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sqlite3
import stat
import struct
import sys
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from heuristics.results import number, text_ok, unflatten_health
from heuristics.vocabulary import BOOKKEEPING
from monitor.durability import disk_full, move_aside, note_loss

log = logging.getLogger(__name__)
STORE_FILE = "monitor.sqlite"
SCHEMA_VERSION = 2
PAGE_SIZE = 16384
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY, experiment TEXT, run TEXT, variant TEXT, role TEXT,
    config TEXT, status TEXT, budget INTEGER, iterations INTEGER, time_total_s REAL,
    final_metric REAL, outcome TEXT, outcome_source TEXT, started REAL, ended REAL);
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, signal INTEGER NOT NULL, layer INTEGER NOT NULL,
    UNIQUE (signal, layer));
CREATE TABLE IF NOT EXISTS trial_keys (id INTEGER PRIMARY KEY, trial_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS layouts (id INTEGER PRIMARY KEY, series BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS layout_series (
    layout INTEGER, pos INTEGER, series INTEGER, PRIMARY KEY (layout, pos)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    trial INTEGER, iteration INTEGER, time_s REAL, layout INTEGER, vals BLOB,
    PRIMARY KEY (trial, iteration)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, trial_id TEXT, iteration INTEGER, wall_time REAL,
    rule TEXT, failure TEXT, action TEXT, shadow INTEGER, reason TEXT, data TEXT,
    rule_version TEXT DEFAULT '',
    UNIQUE (trial_id, rule, iteration, action, shadow, rule_version));
CREATE TABLE IF NOT EXISTS rule_changes (
    revision INTEGER, rule TEXT, version TEXT, op TEXT, mode TEXT, time REAL, user TEXT,
    data TEXT, PRIMARY KEY (revision, rule, version, op)) WITHOUT ROWID;
"""
_BYTES = "X'" + "".join(f"{i:02X}" for i in range(256)) + "'"  # byte b at offset b


def _byte(k: int) -> str:
    """SQL: byte ``k`` (0: least significant) of the value at ``ls.pos`` in ``r.vals``."""
    return f"(instr({_BYTES}, substr(r.vals, 8 * ls.pos + {k + 1}, 1)) - 1)"


def _value_sql() -> str:
    """SQL: the float64 at ``ls.pos`` of ``r.vals`` (little-endian), NaN as NULL, decoded with
    built-in functions only: sign, exponent and mantissa from the bytes, times ``f.scale`` =
    2**(max(exponent, 1) - 1075) (exact: subnormals, and 2**1024 overflows to infinity)."""
    b = [_byte(k) for k in range(8)]
    mantissa = " + ".join([f"{b[6]} % 16 * {2 ** 48}"]
                          + [f"{b[k]} * {256 ** k}" for k in range(5, 0, -1)] + [b[0]])
    return (f"CASE WHEN f.e = 2047 AND ({mantissa}) != 0 THEN NULL "
            f"ELSE ({mantissa} + (f.e > 0) * {2 ** 52}) * f.scale "
            f"* (1 - 2 * ({b[7]} >= 128)) END")


# 2**-1074 (the least subnormal) by exact divisions: no decimal literal to round.
_LEAST = "1.0" + f" / {2 ** 62}" * 17 + f" / {2 ** 20}"
# Readable with any SQLite (the sqlite3 shell, Python's sqlite3): no custom SQL function.
# f64_scale: the 2,048 scales of the float64 exponents, doubled from the least subnormal.
SAMPLES_VIEW = f"""CREATE VIEW samples AS
    WITH RECURSIVE f64_scale(e, scale) AS (
        SELECT 0, {_LEAST} UNION ALL
        SELECT e + 1, CASE WHEN e = 0 THEN scale ELSE scale * 2 END FROM f64_scale
        WHERE e < 2047)
    SELECT k.trial_id AS trial_id, r.iteration AS iteration, r.time_s AS time_s,
           sn.name AS signal, ln.name AS layer, {_value_sql()} AS value
    FROM results r JOIN trial_keys k ON k.id = r.trial
    JOIN layout_series ls ON ls.layout = r.layout JOIN series s ON s.id = ls.series
    JOIN names sn ON sn.id = s.signal JOIN names ln ON ln.id = s.layer
    JOIN f64_scale f ON f.e = {_byte(7)} % 128 * 16 + {_byte(6)} / 16"""
MODEL_SIGNALS = {"output_power_db", "target_power_db", "power_loss", "power_ratio_db",
                 "sampled_steps"}
_LE = sys.byteorder == "little"


class StoreError(RuntimeError):
    """A run store that cannot be opened or read (missing, damaged, not a store); ``damaged``:
    the file is not a SQLite database, or a malformed one (not merely locked or read-only)."""

    def __init__(self, message: str, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


_num = number  # the one conversion of a reported value (heuristics.results.number)
MAX_INTEGER = 2 ** 63 - 1  # SQLite's INTEGER


def open_for_driver(run_dir: str | Path) -> RunStore:
    """The run store a driver writes. One that is damaged (not a SQLite database, malformed)
    is moved aside (``monitor.sqlite.damaged-<time>``) with one warning and a fresh one
    started: the verdict log refills its verdicts, and the summary says the samples recorded
    before are in the old file only. Other failures raise ``StoreError`` as ``RunStore``."""
    try:
        return RunStore(run_dir)
    except StoreError as exc:
        if not exc.damaged:
            raise
        path = Path(run_dir) / STORE_FILE
        where = move_aside(path)
        if where.startswith("left"):
            raise
        what = (f"run store {exc}; {where}, a fresh store holds what follows and every "
                "logged verdict (the samples recorded before are in the old file only)")
        if note_loss(run_dir, what):
            log.warning("%s", what)
        return RunStore(run_dir)


def _text(name: Any) -> str:
    """A name as SQLite can store it: text, lone surrogates shown as escapes (``\\udcff``)."""
    name = name if isinstance(name, str) else str(name)
    return name if text_ok(name) else name.encode("utf-8", "backslashreplace").decode("utf-8")


def iteration_of(result: dict[str, Any]) -> int:
    """The result's iteration as the store keeps it (``StoreError`` if SQLite cannot)."""
    value = result.get("training_iteration", 0)
    it = number(value)
    if it is None or it != it or abs(it) == float("inf") or not -MAX_INTEGER <= int(it) \
            <= MAX_INTEGER:
        raise StoreError(f"training_iteration: expected a whole number SQLite can store, got "
                         f"{value!r:.60}")
    return int(value) if type(value) is int else int(it)


def _unwritable(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for lack of write access rather than a damaged file."""
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _f64(blob: bytes | None, pos: int) -> float | None:
    """SQL ``f64(vals, pos)``: one value of a result blob (NaN as NULL, as SQLite has no NaN)."""
    if blob is None or not 0 <= pos < len(blob) // 8:
        return None
    value = struct.unpack_from("<d", blob, 8 * pos)[0]
    return None if value != value else value


def _float(x: Any) -> float:
    try:
        return float(x)
    except OverflowError:  # an integer beyond float range
        return math.inf if x > 0 else -math.inf


def _pack(values: list[Any]) -> bytes:
    try:
        a = array("d", values)
    except OverflowError:
        a = array("d", map(_float, values))
    if not _LE:
        a.byteswap()
    return a.tobytes()


def _unpack(blob: bytes) -> array:
    a = array("d")
    a.frombytes(blob)
    if not _LE:
        a.byteswap()
    return a


_NUMBERS = (float, int)
_NUMBER_TYPES = set(_NUMBERS)
Layout = tuple  # (((layer, ...), ((signal, ...), ...)), (model signal, ...), (result key, ...))


def _numbers(d: dict[str, Any]) -> tuple[tuple[str, ...], list[Any]]:
    """Names and values of the numbers in ``d`` (fast path: every value a plain number)."""
    values = list(d.values())
    if set(map(type, values)) <= _NUMBER_TYPES and all(map(text_ok, d)):
        return tuple(d), values
    pairs = [(_text(k), n) for k, v in d.items() if (n := _num(v)) is not None]
    return tuple(k for k, _ in pairs), [v for _, v in pairs]


def result_samples(result: dict[str, Any]) -> tuple[Layout, list[Any]]:
    """The samples of one Tune result: its layout (which series, in order; see
    ``layout_keys``) and their values. Per-layer health signals, model signals, and every other
    top-level number that is not Tune bookkeeping."""
    health = unflatten_health(result)
    layers = health.get("layers") if isinstance(health.get("layers"), dict) else {}
    values = [v for signals in layers.values() for v in signals.values()]
    if set(map(type, values)) <= _NUMBER_TYPES and all(map(text_ok, layers)) \
            and all(text_ok(k) for signals in layers.values() for k in signals):
        structure = (tuple(layers), tuple(map(tuple, layers.values())))  # the usual case
    else:
        numbers = [(_text(layer), _numbers(signals)) for layer, signals in layers.items()
                   if isinstance(signals, dict)]
        structure = (tuple(layer for layer, _ in numbers),
                     tuple(names for _, (names, _) in numbers))
        values = [v for _, (_, vs) in numbers for v in vs]
    model_block = health.get("model")
    model, model_values = _numbers(model_block if isinstance(model_block, dict) else {})
    scalars = [(k, v if type(v) in _NUMBERS else _num(v)) for k, v in result.items()
               if type(k) is str and (type(v) in _NUMBERS or _num(v) is not None)
               and "/" not in k and k not in BOOKKEEPING and text_ok(k)]
    values += model_values
    values += [v for _, v in scalars]
    return (structure, model, tuple(k for k, _ in scalars)), values


def layout_keys(layout: Layout) -> list[tuple[str, str]]:
    """``[(signal, layer or "")]`` of a layout, in the order of its values."""
    (layers, signals_of), model, scalars = layout
    keys = [(signal, layer) for layer, signals in zip(layers, signals_of) for signal in signals]
    return keys + [(s, "") for s in model] + [(k, "") for k in scalars]


def result_rows(trial: str, result: dict[str, Any]) -> list[tuple]:
    """``(trial, iteration, time_s, signal, layer, value)`` per sample of one result."""
    iteration = int(result.get("training_iteration", 0))
    time_s = _num(result.get("time_total_s")) or 0.0
    layout, values = result_samples(result)
    return [(trial, iteration, time_s, s, layer, float(v))
            for (s, layer), v in zip(layout_keys(layout), values)]


class RunStore:
    """Reads and writes ``<run dir>/monitor.sqlite``."""

    def __init__(self, path: str | Path, batch_size: int = 100000, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir() or self.path.suffix != ".sqlite":
            self.path = self.path / STORE_FILE
        if not create and not self.path.exists():
            raise StoreError(f"{self.path}: no run store here (was the experiment run with "
                             "this version?)")
        self.batch_size = batch_size  # samples per write transaction
        self._pending: list[tuple] = []  # (trial, iteration, time, layout, blob)
        self._pending_samples = 0
        self._names: dict[str, int] = {}
        self._series: dict[tuple[str, str], int] = {}
        self._trial_keys: dict[str, int] = {}
        self._layouts: dict[Layout, int] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            # the view of stores written before this version calls f64; this one does not
            self.db.create_function("f64", 2, _f64, deterministic=True)
            self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file only: rows of ~3 KB
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # verdicts switch to FULL
            kinds = dict(self.db.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                         "('samples', 'results')").fetchall())
            if kinds.get("samples") == "table":
                raise StoreError(f"{self.path}: a run store of an older format (one row per "
                                 "sample); record the run again with this version")
            if create:
                self.db.executescript(SCHEMA)
                self._create_view()
                columns = {row[1] for row in self.db.execute("PRAGMA table_info(verdicts)")}
                if "rule_version" not in columns:  # a store of an earlier version
                    self.db.execute("ALTER TABLE verdicts ADD COLUMN rule_version TEXT "
                                    "DEFAULT ''")
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                (json.dumps(SCHEMA_VERSION),))
                self.db.commit()
            else:
                self.db.execute("SELECT count(*) FROM trials").fetchone()
                self.db.execute("SELECT count(*) FROM results").fetchone()
        except sqlite3.DatabaseError as exc:
            if _unwritable(exc):
                raise StoreError(f"{self.path}: cannot be written ({exc}: a read-only file "
                                 "system, or no write permission); reports read it as it is"
                                 ) from None
            text = str(exc).lower()
            if "disk is full" in text or "disk i/o error" in text:
                raise StoreError(f"{self.path}: cannot be written ({exc}: the disk is full or "
                                 "failing); reports read it as it is") from None
            raise StoreError(f"{self.path}: damaged or not a run store ({exc})",
                             damaged="not a database" in text or "malformed" in text) from None

    def _create_view(self) -> None:
        """The ``samples`` view in plain SQL, replacing one of an earlier version (which
        needed the function ``f64``)."""
        view = self.db.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND "
                               "name = 'samples'").fetchone()
        if view is not None and view[0] == SAMPLES_VIEW:
            return
        self.db.execute("BEGIN IMMEDIATE")  # one writer at a time: no two drivers race here
        try:
            view = self.db.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND "
                                   "name = 'samples'").fetchone()
            if view is not None and view[0] != SAMPLES_VIEW:
                self.db.execute("DROP VIEW samples")
            self.db.execute(SAMPLES_VIEW.replace("CREATE VIEW", "CREATE VIEW IF NOT EXISTS", 1))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    # -- interning ---------------------------------------------------------------------------
    def _key(self, table: dict, key: Any, select: str, insert: str, args: tuple) -> int:
        """The integer id of ``key`` in an intern table, created if new (in the caller's
        transaction)."""
        found = table.get(key)
        if found is None:
            row = self.db.execute(select, args).fetchone()
            if row is None:
                row = (self.db.execute(insert, args).lastrowid,)
            found = table[key] = row[0]
        return found

    def _name(self, name: str) -> int:
        name = _text(name)
        return self._key(self._names, name, "SELECT id FROM names WHERE name = ?",
                         "INSERT INTO names (name) VALUES (?)", (name,))

    def _trial(self, trial: str) -> int:
        trial = _text(trial)
        return self._key(self._trial_keys, trial, "SELECT id FROM trial_keys WHERE trial_id = ?",
                         "INSERT INTO trial_keys (trial_id) VALUES (?)", (trial,))

    def _layout(self, layout: Layout) -> int:
        found = self._layouts.get(layout)
        if found is not None:
            return found
        ids = []
        for signal, layer in layout_keys(layout):
            pair = (signal, layer)
            sid = self._series.get(pair)
            if sid is None:
                args = (self._name(signal), self._name(layer))
                sid = self._key(self._series, pair,
                                "SELECT id FROM series WHERE signal = ? AND layer = ?",
                                "INSERT INTO series (signal, layer) VALUES (?, ?)", args)
            ids.append(sid)
        blob = array("q", ids).tobytes()
        row = self.db.execute("SELECT id FROM layouts WHERE series = ?", (blob,)).fetchone()
        if row is None:
            layout_id = self.db.execute("INSERT INTO layouts (series) VALUES (?)",
                                        (blob,)).lastrowid
            self.db.executemany("INSERT INTO layout_series VALUES (?, ?, ?)",
                                [(layout_id, pos, sid) for pos, sid in enumerate(ids)])
        else:
            layout_id = row[0]
        self._layouts[layout] = layout_id
        return layout_id

    # -- writing ----------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        disk_full("monitor.sqlite")
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def upsert_trial(self, trial: str, **fields: Any) -> None:
        disk_full("monitor.sqlite")
        trial = _text(trial)
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = json.dumps(fields["config"], default=str)
        fields = {k: _text(v) if isinstance(v, str) else v for k, v in fields.items()}
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{c}=excluded.{c}" for c in fields)
        with self.db:
            self.db.execute(f"INSERT INTO trials (trial_id, {cols}) VALUES (?, {marks}) "
                            f"ON CONFLICT(trial_id) DO UPDATE SET {updates}",
                            (trial, *fields.values()))

    def add_result(self, trial: str, result: dict[str, Any]) -> None:
        """Buffer the samples of one result; flushes when ``batch_size`` samples wait."""
        iteration = iteration_of(result)  # refused here, never in a later batch of others
        layout, values = result_samples(result)
        time_s = _num(result.get("time_total_s")) or 0.0
        self._pending.append((_text(trial), iteration, time_s, layout, _pack(values)))
        self._pending_samples += len(values)
        if self._pending_samples >= self.batch_size:
            self.flush()

    def flush(self) -> int:
        """Write the buffered results in one transaction; return how many samples."""
        pending, self._pending = self._pending, []
        count, self._pending_samples = self._pending_samples, 0
        if pending:
            disk_full("monitor.sqlite")
            with self.db:
                rows = [(self._trial(trial), iteration, time_s, self._layout(layout), blob)
                        for trial, iteration, time_s, layout, blob in pending]
                self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)
        return count

    def add_verdict(self, verdict: dict[str, Any]) -> None:
        """Commit one verdict now (before the scheduler acts on it); idempotent."""
        data = json.dumps(verdict, default=str, allow_nan=True)
        disk_full("monitor.sqlite")
        self.db.execute("PRAGMA synchronous=FULL")  # this commit reaches the disk (fsync)
        try:
            with self.db:
                self.db.execute(
                    "INSERT OR IGNORE INTO verdicts (trial_id, iteration, wall_time, rule, "
                    "failure, action, shadow, reason, data, rule_version) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (_text(verdict["trial"]), verdict["iteration"], verdict["wall_time"],
                     _text(verdict["rule"]), _text(verdict["failure"]), verdict["action"],
                     int(bool(verdict.get("shadow"))), _text(verdict["reason"]), data,
                     _text(verdict.get("rule_version") or "")))
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def add_rule_change(self, entry: dict[str, Any]) -> None:
        """Commit one entry of the rule-set history now (fsynced, like a verdict); idempotent."""
        disk_full("monitor.sqlite")
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self.db:
                self.db.execute(
                    "INSERT OR IGNORE INTO rule_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry["revision"], _text(entry["rule"]), entry["version"], entry["op"],
                     entry["mode"], entry["time"], _text(entry.get("user") or ""),
                     json.dumps(entry, default=str)))
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def rule_changes(self) -> list[dict[str, Any]]:
        """Every rule version applied, armed or retired, by revision (none in older stores)."""
        try:
            rows = self.db.execute("SELECT data FROM rule_changes ORDER BY revision, time")
            return [json.loads(d) for (d,) in rows]
        except sqlite3.OperationalError:  # a store written before rule changes existed
            return []

    def signal_names(self) -> set[str]:
        """The names of every signal and reported key recorded (layer signals included)."""
        return {name for (name,) in self.db.execute(
            "SELECT DISTINCT n.name FROM series s JOIN names n ON n.id = s.signal")}

    def close(self) -> None:
        self.flush()
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")
                if k != "schema_version"}

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

    def _layout_keys(self) -> dict[int, list[tuple[str, str]]]:
        """``{layout id: [(signal, layer)]}`` of every stored layout."""
        out: dict[int, list[tuple[str, str]]] = {}
        for layout, signal, layer in self.db.execute(
                "SELECT ls.layout, sn.name, ln.name FROM layout_series ls "
                "JOIN series s ON s.id = ls.series JOIN names sn ON sn.id = s.signal "
                "JOIN names ln ON ln.id = s.layer ORDER BY ls.layout, ls.pos"):
            out.setdefault(layout, []).append((signal, layer))
        return out

    def _rows(self, trial: str):
        return self.db.execute(
            "SELECT r.iteration, r.time_s, r.layout, r.vals FROM results r "
            "JOIN trial_keys k ON k.id = r.trial WHERE k.trial_id = ? ORDER BY r.iteration",
            (trial,))

    def samples(self, trial: str) -> list[tuple[int, str, str, float]]:
        """``[(iteration, signal, layer or "", value)]`` of one trial, by iteration."""
        layouts = self._layout_keys()
        return [(iteration, signal, layer, value)
                for iteration, _, layout, blob in self._rows(trial)
                for (signal, layer), value in zip(layouts[layout], _unpack(blob))]

    def results(self, trial: str) -> list[dict[str, Any]]:
        """The recorded results of ``trial`` rebuilt in Tune's flattened form, by iteration."""
        layouts = self._layout_keys()
        out = []
        for iteration, time_s, layout, blob in self._rows(trial):
            r: dict[str, Any] = {"training_iteration": iteration, "time_total_s": time_s}
            for (signal, layer), value in zip(layouts[layout], _unpack(blob)):
                if layer:
                    r[f"health/layers/{layer}/{signal}"] = value
                elif signal in MODEL_SIGNALS:
                    r[f"health/model/{signal}"] = value
                else:
                    r[signal] = value
            out.append(r)
        return out

    def series(self, trial: str, signal: str) -> dict[str, list[tuple[int, float]]]:
        """``{layer or "": [(iteration, value)]}`` for one signal of one trial."""
        layouts = {k: [(pos, layer) for pos, (s, layer) in enumerate(keys) if s == signal]
                   for k, keys in self._layout_keys().items()}
        out: dict[str, list[tuple[int, float]]] = {}
        for iteration, _, layout, blob in self._rows(trial):
            values = _unpack(blob)
            for pos, layer in layouts[layout]:
                out.setdefault(layer, []).append((iteration, values[pos]))
        return out


# -- reading a run: read-only, for the reports, ``monitor rules status`` and the rule
# controller (a store on read-only media is read, a damaged one is a ``StoreError``) ------

def store_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path / STORE_FILE if path.is_dir() or path.suffix != ".sqlite" else path


def open_store(run_dir: str | Path) -> RunStore:
    """The run store of ``run_dir`` opened read-only; ``StoreError`` (one line, naming the
    file) when it is missing, not a regular file, or not a readable store."""
    path = store_path(run_dir)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StoreError(f"{path}: no run store here (was the experiment run with this "
                         "version?)") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the run store ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise StoreError(f"{path}: not a regular file; expected a run store (SQLite database)")
    if "readonly" in inspect.signature(RunStore).parameters:
        return RunStore(path, create=False, readonly=True)
    return _readonly_store(path)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro``; where SQLite cannot create the WAL index next to
    the file (a read-only directory or medium), ``immutable=1``, which needs no other file."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc):
            raise
    db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return db


def _readonly_store(path: Path) -> RunStore:
    """A ``RunStore`` for reading over a read-only connection (until ``RunStore`` offers one
    itself)."""
    try:
        db = _connect_readonly(path)
        db.create_function("f64", 2, _f64, deterministic=True)
        kinds = dict(db.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                "('samples', 'results')").fetchall())
        if kinds.get("samples") == "table":
            raise StoreError(f"{path}: a run store of an older format (one row per sample); "
                             "record the run again with this version")
        db.execute("SELECT count(*) FROM trials").fetchone()
        db.execute("SELECT count(*) FROM results").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: damaged or not a run store ({exc})") from None
    store = object.__new__(RunStore)
    store.__dict__.update(path=path, batch_size=1, _pending=[], _pending_samples=0, _names={},
                          _series={}, _trial_keys={}, _layouts={}, db=db)
    return store


@contextmanager
def reading(run_dir: str | Path) -> Iterator[RunStore]:
    """``with reading(run_dir) as store:`` read-only; a damaged store (SQLite or JSON errors
    while reading) raises ``StoreError`` naming the file. Keep only reads in the block."""
    store = open_store(run_dir)
    try:
        yield store
    except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
        raise StoreError(f"{store.path}: damaged or not a run store ({exc})") from None
    finally:
        store.db.close()
