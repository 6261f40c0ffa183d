"""Fault injection for the crash tests: ``MONITOR_CRASH_AT=<point>`` SIGKILLs this process
when it reaches ``<point>`` (the kill path's steps). Unset, it costs one dictionary look-up."""

from __future__ import annotations

import os
import signal

ENV = "MONITOR_CRASH_AT"
POINTS = ("kill:before-record", "kill:after-store", "kill:after-log", "kill:after-state")


def crash_point(point: str) -> None:
    """Die here, at once and without clean-up, if ``MONITOR_CRASH_AT`` names ``point``."""
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
