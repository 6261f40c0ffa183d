"""Where verdicts go, in one durable order, for every driver (Tune scheduler, plain loop).

A kill is recorded before anything acts on it: first in the run store (one SQLite
transaction), then in the append-only verdict log (fsynced); only then may the trial be stopped
and the rule state say "killed". After a crash, ``VerdictRecorder.reconcile()`` copies a verdict
found in only one of the two into the other, so each appears exactly once in both.

A store that cannot be written (full disk, read-only, permissions) is reported once and
skipped: the verdict log still holds every verdict, and the run goes on; a log that cannot be
written is reported the same way (the store holds them), and the summary names what was lost
(``monitor.durability``). Every line read back is checked: a torn line, or one that is not a
verdict (valid JSON of another shape), is skipped with a warning naming file and line.

A plain loop has no ``--resume``: a process killed between the store and the log is repaired
by the next ``LoopMonitor`` of the same experiment (``recover``), which reconciles every
earlier run of it that no live process holds (``RunLock``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from monitor.driver.scheduler_stops import is_scheduler_verdict
from monitor.durability import describe, disk_full, note_loss
from monitor.faults import crash_point
from monitor.serving.webhook import post_kill
from monitor.store import StoreError

log = logging.getLogger(__name__)
STORE_FAULTS = (OSError, sqlite3.Error, StoreError)  # full disk, read-only, damaged
LOG_FILE = Path("heuristics") / "verdicts.jsonl"
NOTICES_FILE = Path("heuristics") / "notices.jsonl"
LOCK_FILE = Path("heuristics") / "driver.lock"
VERDICT_KEYS = ("trial", "rule", "failure", "action", "iteration", "wall_time", "reason")
NOTICE_KEYS = ("rule", "signal", "message")
TEXT, NUMBER = (str,), (int, float)
# What each entry of a log holds, key by key: a line of another shape (``{"trial": [1]}``)
# is not an entry, and never reaches the code that files verdicts by trial and rule.
VERDICT_SHAPE = {"trial": TEXT, "rule": TEXT, "failure": (str, type(None)), "action": TEXT,
                 "iteration": NUMBER, "wall_time": NUMBER, "reason": TEXT}
NOTICE_SHAPE = {"rule": TEXT, "signal": TEXT, "message": TEXT}


def fits(value: Any, types: tuple[type, ...]) -> bool:
    """``value`` is one of ``types`` (a bool is no number here)."""
    return isinstance(value, types) and (not isinstance(value, bool) or bool in types)


def shape_of(required: tuple[str, ...] | dict[str, tuple[type, ...]]) -> dict[str, tuple]:
    return dict(required) if isinstance(required, dict) else {k: (object,) for k in required}


def verdict_key(v: dict[str, Any]) -> tuple:
    """What makes a verdict unique within a run."""
    return (v.get("trial"), v.get("rule"), v.get("iteration"), v.get("action"),
            bool(v.get("shadow")), v.get("rule_version") or "")


class VerdictLog:
    """Append-only JSON-lines file of verdicts (or notices); every append is fsynced.

    Every entry is a JSON object; ``required``: the keys each must have, or a mapping of each
    key to the types its value may have (a line without them is not one of ours).
    """

    def __init__(self, path: str | Path,
                 required: tuple[str, ...] | dict[str, tuple[type, ...]] = ()) -> None:
        self.path = Path(path)
        self.shape = shape_of(required)
        self.required = tuple(self.shape)

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry, durable when this returns (``OSError`` when it cannot be).

        Never leaves half a line for the next entry to run into: a write the disk cut short is
        cut back, and a line torn by a crash is ended before the entry is written after it."""
        disk_full(self.path.name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(entry, allow_nan=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every complete entry; a torn line (crash mid-write) or one of another shape is
        skipped with a warning naming the file and line, and a log that cannot be read at all
        with one warning."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("%s: cannot be read (%s); its entries are left out (the run store "
                        "holds the verdicts)", self.path, describe(exc))
            return []
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipped an incomplete line", self.path, i)
                continue
            if not isinstance(entry, dict) or any(
                    k not in entry or not fits(entry[k], types) for k, types in self.shape.items()):
                log.warning("%s:%d: skipped a line that is not an entry of this log (expected "
                            "an object with %s)", self.path, i, self._expected())
                continue
            out.append(entry)
        return out


    def _expected(self) -> str:
        names = {str: "text", int: "number", float: "number", type(None): "null"}
        return ", ".join(
            k if types == (object,) else
            f"{k} ({' or '.join(dict.fromkeys(names.get(t, t.__name__) for t in types))})"
            for k, types in self.shape.items())


class VerdictRecorder:
    """Records verdicts in the run store and the verdict log of ``run_dir``.

    ``store_failed`` holds the reason the store stopped being written, if it did.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.log = VerdictLog(self.run_dir / LOG_FILE, VERDICT_SHAPE)
        self.notices_log = VerdictLog(self.run_dir / NOTICES_FILE, NOTICE_SHAPE)
        self._store = None
        self.store_failed: str | None = None
        self.log_failed: str | None = None
        self._noted: set[tuple[str, str]] | None = None  # (rule, signal) of recorded notices

    def _open_store(self):
        if self._store is None and self.store_failed is None:
            from monitor.store import open_for_driver

            try:
                self._store = open_for_driver(self.run_dir)
            except STORE_FAULTS as exc:
                self._store_fault(exc)
        return self._store

    def _store_fault(self, exc: BaseException) -> None:
        self.store_failed = describe(exc)
        note_loss(self.run_dir, f"run store ({self.run_dir / 'monitor.sqlite'}): verdicts not "
                  f"stored from here on ({self.store_failed}); the verdict log holds them")
        log.warning("run store in %s cannot be written (%s); verdicts go on in %s only",
                    self.run_dir, self.store_failed, self.log.path)
        self._store = None

    def _log_fault(self, exc: BaseException, verdict: dict[str, Any]) -> None:
        first = self.log_failed is None
        self.log_failed = describe(exc)
        where = "the run store holds it" if self.store_failed is None else \
            "and the run store cannot be written either: it is recorded nowhere"
        what = (f"verdict log ({self.log.path}): not appended from {verdict.get('rule')} on "
                f"{verdict.get('trial')} at iteration {verdict.get('iteration')} on "
                f"({self.log_failed}); {where}")
        if first or self.store_failed is not None:
            note_loss(self.run_dir, what)
            log.warning("%s", what)

    def record(self, verdict: dict[str, Any]) -> None:
        """Store, then log: both durable when this returns (one of them at least; a write
        that fails is reported, never raised: the decision stands)."""
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
        try:
            self.log.append(verdict)
        except OSError as exc:
            self._log_fault(exc, verdict)
        if stops:
            crash_point("kill:after-log")
            if not is_scheduler_verdict(verdict):  # a rule's kill, not ASHA's routine stop
                post_kill(verdict, self.run_dir.name)  # MONITOR_ALERT_WEBHOOK, if set

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
        stored = [v for v in stored if isinstance(v, dict)
                  and all(k in v and fits(v[k], t) for k, t in VERDICT_SHAPE.items())]
        in_log = {verdict_key(v) for v in logged}
        in_store = {verdict_key(v) for v in stored}
        for v in stored:
            if verdict_key(v) not in in_log:
                try:
                    self.log.append(v)
                except OSError as exc:
                    self._log_fault(exc, v)
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
        """Record a notice (a rule that cannot see a signal, a report that was refused in
        part) once per run; True if new. One that cannot be written is reported once."""
        if self._noted is None:
            self._noted = {(n["rule"], n["signal"]) for n in self.notices_log.read()}
        if (rule, signal) in self._noted:
            return False
        self._noted.add((rule, signal))
        try:
            self.notices_log.append({"rule": rule, "signal": signal, "message": message})
        except OSError as exc:
            what = f"notices ({self.notices_log.path}): not all written ({describe(exc)})"
            if note_loss(self.run_dir, what):
                log.warning("%s; the notice was: %s", what, message)
        log.info("%s", message)
        if (rule, signal) != RULES_NOTICE:  # which rules apply: said, but no alert
            export_notice(self.run_dir.name, rule, signal, message)
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
        state["_noted"] = None
        return state


def export_notice(run: str, rule: str, signal: str, message: str) -> None:
    """Show a notice in the metrics of the run's exporter, if one serves it in this process
    (``tune_health_notice_info``: what an alert tells a person)."""
    from monitor.serving.exporter import Exporter

    exporter = Exporter.for_run(run)
    if exporter is not None:
        exporter.note(rule, signal, message)


def read_notices(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's notices: rules that referred to signals nobody declared or reported."""
    return VerdictLog(Path(run_dir) / NOTICES_FILE, NOTICE_SHAPE).read()


# The notice that says, in one line, which rules apply to the run and which cannot fire
# (``heuristics.coverage.Applicability.line``): recorded with the others, shown apart.
RULES_NOTICE = ("(rules)", "applicability")


def rules_and_notices(run_dir: str | Path) -> tuple[str | None, list[str]]:
    """The run's rules line (None if none was recorded) and its other notices' messages."""
    line, rest = None, []
    for n in read_notices(run_dir):
        if (n["rule"], n["signal"]) == RULES_NOTICE:
            line = n["message"]
        else:
            rest.append(n["message"])
    return line, rest


class RunLock:
    """Says "a live driver writes this run": an exclusive ``flock`` on
    ``heuristics/driver.lock``, released by the kernel when the process ends, however."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if a live process holds it (or no lock file
        can be made)."""
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_fd": None}


def recover(storage: str | Path, experiment: str, exclude: Path | None = None) -> list[Path]:
    """Reconcile the verdicts of earlier runs of ``experiment`` under ``storage`` whose driver
    died (no ``summary.json``, no live process holding their lock): a verdict found in only
    the store or only the log is copied into the other. Returns the runs repaired."""
    repaired = []
    for run_dir in sorted(Path(storage).glob(f"{experiment}_*")):
        if run_dir == exclude or not (run_dir / "heuristics").is_dir() \
                or (run_dir / "summary.json").exists():
            continue
        lock = RunLock(run_dir)
        if not lock.acquire():
            continue
        try:
            before = len(VerdictLog(run_dir / LOG_FILE, VERDICT_SHAPE).read())
            recorder = VerdictRecorder(run_dir)
            try:
                after = len(recorder.reconcile())
            finally:
                recorder.close()
            if after != before:
                repaired.append(run_dir)
                log.info("%s: verdicts of the interrupted run reconciled", run_dir)
        except Exception as exc:  # noqa: BLE001 - repairing an old run never stops a new one
            log.warning("%s: the interrupted run's verdicts could not be reconciled (%s)",
                        run_dir, describe(exc))
        finally:
            lock.release()
    return repaired
