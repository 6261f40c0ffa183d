"""Where runs go: ``$MONITOR_RUNS_DIR``, or ``./runs`` of the current directory.

Never derived from a module's ``__file__``: installed from a wheel, that is site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS_ENV = "MONITOR_RUNS_DIR"


def runs_dir() -> Path:
    """The absolute directory runs are written to and read from (not created here)."""
    configured = os.environ.get(RUNS_ENV, "").strip()
    base = Path(configured).expanduser() if configured else Path("runs")
    return base if base.is_absolute() else (Path.cwd() / base).resolve()
