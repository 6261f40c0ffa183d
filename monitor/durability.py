"""What a run writes, written safely: one atomic-write helper, the record of what a full disk
(or any write failure) cost, and the fault injection that tests both.

- ``write_atomic(path, data)``: a reader sees the old file or the new one, never half of one
  (temporary file in the same directory, fsync, ``os.replace``); every whole file the project
  writes (summary, exporter file_sd, rule-change requests and answers, audio clips, reports,
  suggested rules, server configurations) goes through it.
- ``move_aside(path)``: a damaged file the driver reads on a restore (rule state, run store)
  is renamed ``<name>.damaged-<time>`` (with its ``-wal``/``-shm``), kept for a person to
  look at, and that part starts afresh.
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
import time
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


def _default_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the umask (read without a race)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, data: str | bytes, fault: str | None = None,
                 mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` so that no reader ever sees a partial file
    (``OSError`` when it cannot be written; the old file, if any, is then left as it was).

    ``mode``: the new file's permissions; by default those of the file it replaces, else what
    ``open()`` would give (a temporary file alone would be 0o600, which a Prometheus reading
    file_sd as another user could not read)."""
    path = Path(path)
    disk_full(fault or path.name)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = _default_mode()
    blob = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself durable: a crash now cannot bring the old file back
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def move_aside(path: str | Path) -> str:
    """Rename a damaged ``path`` (and its SQLite ``-wal``/``-shm``) to
    ``<name>.damaged-<time>`` beside it; returns what was done, for the one warning line
    (``moved to X``, or ``left in place (why)`` when it cannot be moved)."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                part.rename(Path(f"{aside}{suffix}"))
    except OSError as exc:
        return f"left in place ({describe(exc)})"
    return f"moved to {aside.name}"


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
