"""Rule state that survives a driver restart, written incrementally.

Ray Tune does not save a scheduler's state, so the engine's per-trial state goes to
``<run dir>/heuristics/state.sqlite``: one row per report (the newest record only, appended
after each result) and one small row per trial. The cost of a result does not grow with the
trial's history: old records beyond what the rules still read are deleted as new ones come.
Kills are not taken from here but from the recorded verdicts (``monitor.verdicts``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

STATE_FILE = Path("heuristics") / "state.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    trial TEXT, iteration INTEGER, record TEXT, PRIMARY KEY (trial, iteration)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trials (trial TEXT PRIMARY KEY, first TEXT) WITHOUT ROWID;
"""


class RuleStateStore:
    """Appends each trial's newest engine record; reads every trial's state back."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.path = Path(run_dir) / STATE_FILE
        self.keep = keep
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # verdicts, not this, are the truth
            self._db.executescript(SCHEMA)
        return self._db

    def append(self, trial: str, last: dict[str, Any]) -> None:
        """Store ``RuleEngine.last_record(trial)``: it replaces records of the same or later
        iterations (a restored trial replays them); only the last ``keep`` stay."""
        record = last["record"]
        iteration = int(record["iteration"])
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM records WHERE trial = ? AND iteration >= ?", (trial, iteration))
        db.execute("INSERT INTO records VALUES (?, ?, ?)",
                   (trial, iteration, json.dumps(record, allow_nan=True)))
        db.execute("DELETE FROM records WHERE trial = ? AND iteration <= ? AND iteration NOT IN "
                   "(SELECT iteration FROM records WHERE trial = ? ORDER BY iteration DESC "
                   "LIMIT ?)", (trial, iteration - self.keep, trial, self.keep))
        db.execute("INSERT OR REPLACE INTO trials VALUES (?, ?)",
                   (trial, json.dumps(last.get("first") or {})))
        db.execute("COMMIT")

    def load(self) -> dict[str, dict[str, Any]]:
        """``{trial: {"reports": [...], "first": {...}}}`` for ``load_trial_state``."""
        if not self.path.exists():
            return {}
        out: dict[str, dict[str, Any]] = {}
        for trial, first in self.db.execute("SELECT trial, first FROM trials"):
            out[trial] = {"reports": [], "first": json.loads(first), "killed": None}
        for trial, record in self.db.execute(
                "SELECT trial, record FROM records ORDER BY trial, iteration"):
            out.setdefault(trial, {"reports": [], "first": {}, "killed": None})
            out[trial]["reports"].append(json.loads(record))
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_db"] = None  # a connection is not part of the pickled scheduler
        return state
