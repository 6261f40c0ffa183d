"""Rule state that survives a driver restart, written incrementally.

Ray Tune does not save a scheduler's state, so the engine's per-trial state goes to
``<run dir>/heuristics/state.sqlite``: one row per report (the newest record only, appended
after each result, one INSERT in one transaction) and one small row per trial (written when it
changes). The cost of a result does not grow with the trial's history: old records beyond
what the rules still read are deleted in batches.
Kills are not taken from here but from the recorded verdicts (``monitor.driver.verdicts``).

The rule state is a convenience for a restore, never the truth: a state file that cannot be
written (full disk, read-only) is reported once and the run goes on without it; one that is
not a database when a run is restored is moved aside (``state.sqlite.damaged``) with one
warning, and the rules start afresh.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import sqlite3
from pathlib import Path
from typing import Any

from heuristics.expr import STATE_VERSION
from monitor.durability import describe, disk_full, move_aside, note_loss

log = logging.getLogger(__name__)

STATE_FILE = Path("heuristics") / "state.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    trial TEXT, iteration INTEGER, record TEXT, PRIMARY KEY (trial, iteration)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trials (trial TEXT PRIMARY KEY, first TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peers (
    trial TEXT, iteration INTEGER, peer TEXT, PRIMARY KEY (trial, iteration)) WITHOUT ROWID;
"""


class _DataOnly(pickle.Unpickler):
    """Unpickles plain data only (dicts, lists, strings, numbers): any class or function
    reference is refused, so a tampered state file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: rule state is plain data")


def encode(record: dict[str, Any]) -> bytes:
    """A record as bytes (pickle of plain data: ~7x faster than JSON for a 50-layer record)."""
    return pickle.dumps(record, protocol=5)


def decode(blob: bytes | str) -> dict[str, Any]:
    """A stored record: pickled plain data, or JSON text of an older state file, checked to be
    what ``Record.from_dict`` reads (``ValueError`` saying what was expected otherwise: a
    record of another shape would fail every later result of its trial, or the restore)."""
    data = json.loads(blob) if isinstance(blob, str) else _DataOnly(io.BytesIO(blob)).load()
    if not isinstance(data, dict):
        raise ValueError(f"expected a record (a mapping), got {type(data).__name__}")
    problem = record_problem(data)
    if problem:
        raise ValueError(f"expected {problem}")
    return data


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _value(x: Any) -> bool:
    """A rule value: None, a number, or numbers by layer."""
    return x is None or _number(x) or (isinstance(x, dict) and all(
        isinstance(k, str) and (v is None or _number(v)) for k, v in x.items()))


def _mapping(x: Any, ok: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and ok(v) for k, v in x.items())


def record_problem(d: dict[str, Any]) -> str | None:
    """Which key of a stored record holds a value of another type, and what it should hold
    (None when every key it has is as ``Record.to_dict`` writes it)."""
    checks = [
        ("iteration", lambda x: isinstance(x, int) and not isinstance(x, bool),
         "a whole number"),
        ("time_s", _number, "a number"),
        ("layers", lambda x: _mapping(x, lambda v: _mapping(v, lambda y: y is None
                                                              or _number(y))),
         "numbers by signal by layer"),
        ("scalars", lambda x: _mapping(x, lambda v: v is None or _number(v)),
         "numbers by name"),
        ("held", lambda x: _mapping(x, lambda v: v is None or isinstance(v, bool)),
         "true/false/null by rule"),
        ("firing", lambda x: _mapping(x, lambda v: isinstance(v, bool)), "true/false by rule"),
    ]
    for key, ok, what in checks:  # one without them is refused where it is read (KeyError)
        if key in d and not ok(d[key]):
            return f"{key!r}: {what}"
    if not _mapping(d.get("streak", {}), lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                    and _number(v[0]) and (v[1] is None or _number(v[1]))):
        return "'streak': [count, time] by rule"
    slots = lambda x: _mapping(x, lambda v: _mapping(v, _value))  # noqa: E731
    for key in ("cache", "ever"):
        if d.get("v") == STATE_VERSION and not slots(d.get(key)):
            return f"{key!r}: values by node by rule"
    if not _mapping(d.get("peer") or {}, _value):
        return "'peer': values by input"
    return None


class RuleStateStore:
    """Appends each trial's newest engine record; reads every trial's state back."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.path = Path(run_dir) / STATE_FILE
        self.keep = keep
        self._db: sqlite3.Connection | None = None
        # What this process last wrote per trial, to skip statements that would change nothing.
        self._newest: dict[str, int] = {}
        self._first: dict[str, str] = {}
        self._since_prune: dict[str, int] = {}
        self.failed: str | None = None  # why the state stopped being written, if it did

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # verdicts, not this, are the truth
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def append(self, trial: str, last: dict[str, Any]) -> None:
        """Store ``RuleEngine.last_record(trial)``: it replaces records of the same or later
        iterations (a restored trial replays them); only the last ``keep`` stay. A state that
        cannot be written is reported once, and the run goes on without it."""
        if self.failed is not None:
            return
        try:
            self._append(trial, last)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.failed = describe(exc)
        what = (f"rule state ({self.path}): not saved from here on ({self.failed}); trainings "
                "and kills go on, a restored run would restart the rules' streaks")
        if note_loss(self.path.parent.parent, what):
            log.warning("%s", what)
        if self._db is not None:
            try:
                self._db.rollback()
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _append(self, trial: str, last: dict[str, Any]) -> None:
        disk_full("state.sqlite")
        record = last["record"]
        iteration = int(record["iteration"])
        first = json.dumps(last.get("first") or {})
        newest = self._newest.get(trial)
        db = self.db
        db.execute("BEGIN")
        if newest is None or iteration <= newest:  # unknown, or a restored trial replays
            db.execute("DELETE FROM records WHERE trial = ? AND iteration >= ?",
                       (trial, iteration))
            db.execute("DELETE FROM peers WHERE trial = ? AND iteration >= ?",
                       (trial, iteration))
        db.execute("INSERT INTO records VALUES (?, ?, ?)",
                   (trial, iteration, encode(record)))
        if record.get("peer"):  # population-rule inputs: kept for the trial's whole life
            db.execute("INSERT INTO peers VALUES (?, ?, ?)",
                       (trial, iteration, json.dumps(record["peer"])))
        # Old records go in batches: the rules read at most ``keep``, so up to ``keep`` more
        # may wait for the next batch.
        pruned = self._since_prune.get(trial, 0) + 1
        if pruned >= self.keep:
            db.execute("DELETE FROM records WHERE trial = ? AND iteration <= ? AND iteration "
                       "NOT IN (SELECT iteration FROM records WHERE trial = ? ORDER BY "
                       "iteration DESC LIMIT ?)", (trial, iteration - self.keep, trial, self.keep))
            pruned = 0
        if self._first.get(trial) != first:
            db.execute("INSERT OR REPLACE INTO trials VALUES (?, ?)", (trial, first))
        db.execute("COMMIT")
        self._newest[trial], self._first[trial], self._since_prune[trial] = \
            iteration, first, pruned

    def load(self) -> dict[str, dict[str, Any]]:
        """``{trial: {"reports": [...], "first": {...}, "peer": {...}}}`` for
        ``load_trial_state`` (``peer``: every population-rule input the trial reported)."""
        if not self.path.exists():
            return {}
        try:
            return self._load()
        except sqlite3.Error as exc:  # not a database, or damaged beyond its rows
            self.close()
            where = move_aside(self.path)
            if where.startswith("left"):
                self.failed = "the rule state file is damaged"
            log.warning("%s: not a readable rule state (%s; expected the SQLite database this "
                        "driver writes); %s, every trial's rules start afresh (kills are kept: "
                        "they come from the verdicts)", self.path, describe(exc), where)
            return {}

    def _load(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        damaged: set[str] = set()
        for trial, first in self.db.execute("SELECT trial, first FROM trials"):
            try:
                loaded = json.loads(first)
                if not isinstance(loaded, dict):
                    raise ValueError(f"expected an object, got {type(loaded).__name__}")
                out[trial] = {"reports": [], "first": loaded, "killed": None}
            except ValueError as exc:
                self._damaged(trial, exc)
                out[trial] = {"reports": [], "first": {}, "killed": None}
        for trial, record in self.db.execute(
                "SELECT trial, record FROM records ORDER BY trial, iteration"):
            out.setdefault(trial, {"reports": [], "first": {}, "killed": None})
            if trial in damaged:
                continue
            try:
                out[trial]["reports"].append(decode(record))
            except Exception as exc:  # noqa: BLE001 - any damage: that trial starts afresh
                damaged.add(trial)
                self._damaged(trial, exc)
        for trial, iteration, peer in self.db.execute(
                "SELECT trial, iteration, peer FROM peers ORDER BY trial, iteration"):
            if trial not in out or trial in damaged:
                continue
            try:
                values = json.loads(peer)
                if not isinstance(values, dict):
                    raise ValueError(f"expected an object, got {type(values).__name__}")
            except ValueError as exc:  # that trial's population inputs start afresh
                self._damaged(trial, exc)
                out[trial]["peer"] = {}
                damaged.add(trial)
                continue
            table = out[trial].setdefault("peer", {})
            for key, value in values.items():
                table.setdefault(key, {})[iteration] = value
        for trial, data in out.items():
            if trial in damaged:
                data["reports"], data["first"], data["peer"] = [], {}, {}
            del data["reports"][:-self.keep]  # those a later batch would have deleted
        return out

    def _damaged(self, trial: str, exc: Exception) -> None:
        log.warning("%s: the rule state of trial %s is unreadable (%s); its rules start afresh "
                    "(its kill, if any, is kept: it comes from the verdicts)", self.path, trial,
                    exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_db"] = None  # a connection is not part of the pickled scheduler
        state["_newest"], state["_first"], state["_since_prune"] = {}, {}, {}
        return state
