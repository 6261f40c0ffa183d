"""Where verdicts go, in one durable order, for every driver (Tune scheduler, plain loop).

A kill is recorded before anything acts on it: first in the run store (one SQLite
transaction), then in the append-only verdict log (fsynced); only then may the trial be stopped
and the rule state say "killed". After a crash, ``VerdictRecorder.reconcile()`` copies a verdict
found in only one of the two into the other, so each appears exactly once in both.

A store that cannot be written (full disk, read-only, permissions) is reported once and
skipped: the verdict log still holds every verdict, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from monitor.faults import crash_point
from monitor.store import StoreError

log = logging.getLogger(__name__)
STORE_FAULTS = (OSError, sqlite3.Error, StoreError)  # full disk, read-only, damaged
LOG_FILE = Path("heuristics") / "verdicts.jsonl"
NOTICES_FILE = Path("heuristics") / "notices.jsonl"


def verdict_key(v: dict[str, Any]) -> tuple:
    """What makes a verdict unique within a run."""
    return (v.get("trial"), v.get("rule"), v.get("iteration"), v.get("action"),
            bool(v.get("shadow")))


class VerdictLog:
    """Append-only JSON-lines file of verdicts; every append is fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, verdict: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(verdict, allow_nan=True, default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete verdict; a torn line (crash mid-write) is skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        for i, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: skipped an incomplete verdict line", self.path, i)
        return out


class VerdictRecorder:
    """Records verdicts in the run store and the verdict log of ``run_dir``.

    ``store_failed`` holds the reason the store stopped being written, if it did.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.log = VerdictLog(self.run_dir / LOG_FILE)
        self._store = None
        self.store_failed: str | None = None

    def _open_store(self):
        if self._store is None and self.store_failed is None:
            from monitor.store import RunStore

            try:
                self._store = RunStore(self.run_dir)
            except STORE_FAULTS as exc:
                self._store_fault(exc)
        return self._store

    def _store_fault(self, exc: BaseException) -> None:
        self.store_failed = f"{type(exc).__name__}: {exc}"
        log.warning("run store in %s cannot be written (%s); verdicts go on in %s only",
                    self.run_dir, self.store_failed, self.log.path)
        self._store = None

    def record(self, verdict: dict[str, Any]) -> None:
        """Store, then log: both durable when this returns (the log at least)."""
        stops = verdict.get("action") == "kill" and not verdict.get("shadow")
        if stops:
            crash_point("kill:before-record")
        store = self._open_store()
        if store is not None:
            try:
                store.add_verdict(verdict)
            except STORE_FAULTS as exc:
                self._store_fault(exc)
        if stops:
            crash_point("kill:after-store")
        self.log.append(verdict)
        if stops:
            crash_point("kill:after-log")

    def reconcile(self) -> list[dict[str, Any]]:
        """Every verdict of the run, each once; copies one found in only one place into the
        other (a crash between the two writes)."""
        logged = self.log.read()
        store = self._open_store()
        stored: list[dict[str, Any]] = []
        if store is not None:
            try:
                stored = store.verdicts()
            except STORE_FAULTS as exc:
                self._store_fault(exc)
        in_log = {verdict_key(v) for v in logged}
        in_store = {verdict_key(v) for v in stored}
        for v in stored:
            if verdict_key(v) not in in_log:
                self.log.append(v)
                logged.append(v)
        if store is not None and self.store_failed is None:
            for v in logged:
                if verdict_key(v) not in in_store:
                    try:
                        store.add_verdict(v)
                    except STORE_FAULTS as exc:
                        self._store_fault(exc)
                        break
        seen: set[tuple] = set()
        out = []
        for v in logged:
            if verdict_key(v) not in seen:
                seen.add(verdict_key(v))
                out.append(v)
        return out

    def note(self, rule: str, signal: str, message: str) -> bool:
        """Record a notice (a rule that cannot see a signal) once per run; True if new."""
        notices = VerdictLog(self.run_dir / NOTICES_FILE)
        if any(n.get("rule") == rule and n.get("signal") == signal for n in notices.read()):
            return False
        notices.append({"rule": rule, "signal": signal, "message": message})
        log.info("%s", message)
        return True

    def notices(self) -> list[dict[str, Any]]:
        return read_notices(self.run_dir)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # a database connection is not part of the saved state
        return state


def read_notices(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's notices: rules that referred to signals nobody declared or reported."""
    return VerdictLog(Path(run_dir) / NOTICES_FILE).read()
