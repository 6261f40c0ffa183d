"""What a run writes, written safely: one atomic-write helper, the record of what a full disk
(or any write failure) cost, and the fault injection that tests both.

- ``write_atomic(path, text)``: a reader sees the old file or the new one, never half of one
  (temporary file in the same directory, fsync, ``os.replace``).
- ``note_loss(run_dir, what)`` / ``losses(run_dir)``: each part of the driver (run store,
  verdict log, rule state, notices, exporter files, summary) says once what it could not
  write; the summary names it. Kept in this process (the driver), keyed by run directory.
- ``MONITOR_DISK_FULL_AT=<file>[,<file>...]`` makes every write of those files fail as a full
  disk does (``state.sqlite``, ``monitor.sqlite``, ``verdicts.jsonl``, ``notices.jsonl``,
  ``summary.json``, ``file_sd``; ``all`` for every one): ``disk_full(name)`` raises
  ``OSError(ENOSPC)``, or SQLite's own "database or disk is full" for databases. Unset, it
  costs one dictionary look-up.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
DISK_FULL_ENV = "MONITOR_DISK_FULL_AT"
WRITES = ("monitor.sqlite", "verdicts.jsonl", "notices.jsonl", "state.sqlite", "summary.json",
          "file_sd")
_LOSSES: dict[str, list[str]] = {}


def disk_full(name: str) -> None:
    """Fail this write of ``name`` as a full disk would, if ``MONITOR_DISK_FULL_AT`` says so."""
    points = os.environ.get(DISK_FULL_ENV)
    if not points:
        return
    wanted = {p.strip() for p in points.split(",")}
    if name in wanted or "all" in wanted:
        if name.endswith(".sqlite"):
            raise sqlite3.OperationalError("database or disk is full")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)


def write_atomic(path: str | Path, text: str, fault: str | None = None) -> None:
    """Write ``text`` to ``path`` so that no reader ever sees a partial file (``OSError`` when
    it cannot be written; the old file, if any, is then left as it was)."""
    path = Path(path)
    disk_full(fault or path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key(run_dir: str | Path) -> str:
    return os.path.abspath(run_dir)


def note_loss(run_dir: str | Path, what: str) -> bool:
    """Remember (once) that ``what`` of the run in ``run_dir`` was not recorded; True if new."""
    known = _LOSSES.setdefault(_key(run_dir), [])
    if what in known:
        return False
    known.append(what)
    return True


def losses(run_dir: str | Path) -> list[str]:
    """What this process could not record for the run in ``run_dir``, in order."""
    return list(_LOSSES.get(_key(run_dir), []))


def describe(exc: BaseException) -> str:
    """An exception in one line, without its traceback (``OSError: [Errno 28] ...``)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
