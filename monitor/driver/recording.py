"""Writes a run's trials and samples to its run store, for any driver (Tune callback, loop).

Samples are batched: flushed when a batch fills, at most ``flush_s`` seconds after the previous
flush, and when a trial ends. Outcomes: a killed trial carries the failure its rule predicted;
a trial that ran to its end is ``healthy`` or ``failed`` by its final validation metric against
``healthy_threshold`` (when one is given).

A store that cannot be written (full disk, read-only, permissions) is reported once and
skipped: trainings and kills go on, and ``failed`` says why for the summary.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heuristics.results import number
from heuristics.vocabulary import Vocabulary
from monitor.driver.scheduler_stops import is_scheduler_verdict
from monitor.durability import describe, note_loss
from monitor.store import StoreError
from monitor.training import audio_samples
from monitor.training.audio_samples import AUDIO_KEY, REFERENCE_KEY

log = logging.getLogger(__name__)
STORE_FAULTS = (OSError, sqlite3.Error, StoreError)  # full disk, read-only, damaged
_LIVE: dict[str, StoreWriter] = {}  # run directory -> its open writer, in this process


def flush_live(run_dir: str | Path) -> None:
    """Write the buffered results of ``run_dir``'s live writer, if this process has one (so
    that a reader of the store sees every result given so far)."""
    writer = _LIVE.get(str(Path(run_dir)))
    if writer is not None and writer.store is not None:
        writer._write(lambda s: s.flush())


class StoreWriter:
    def __init__(self, run_dir: str | Path, experiment: str, run: str,
                 vocabulary: Vocabulary | None = None, budget: int | None = None,
                 healthy_threshold: float | None = None, flush_s: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.experiment, self.run = experiment, run
        self.vocabulary = vocabulary or Vocabulary()
        self.budget = budget
        self.healthy_threshold = healthy_threshold
        self.flush_s = flush_s
        self.store = None
        self.failed: str | None = None
        self._last_flush = 0.0
        self._iterations: dict[str, int] = {}  # trial -> last iteration recorded

    @property
    def metric(self) -> str | None:
        return self.vocabulary.validation

    def _open(self):
        if self.store is None and self.failed is None:
            from monitor.store import open_for_driver

            try:
                self.store = open_for_driver(self.run_dir)
                _LIVE[str(self.run_dir)] = self
                self.store.set_meta(experiment=self.experiment, run=self.run,
                                    metric=self.metric, mode=self.vocabulary.mode,
                                    budget=self.budget, healthy_threshold=self.healthy_threshold,
                                    vocabulary=self.vocabulary.model_dump())
            except STORE_FAULTS as exc:
                self._fault(exc)
        return self.store

    def _fault(self, exc: BaseException) -> None:
        self.failed = describe(exc)
        note_loss(self.run_dir, f"run store ({self.run_dir / 'monitor.sqlite'}): samples not "
                  f"recorded from here on ({self.failed})")
        log.warning("run store in %s cannot be written (%s); trainings and kills go on, "
                    "samples are not recorded from here on", self.run_dir, self.failed)
        self.store = None

    def _write(self, action: Callable[[Any], None]) -> None:
        store = self._open()
        if store is None:
            return
        try:
            action(store)
        except STORE_FAULTS as exc:
            self._fault(exc)
        except Exception as exc:  # noqa: BLE001 - data it cannot take: this write only
            what = f"run store ({self.run_dir / 'monitor.sqlite'}): a write failed " \
                   f"({describe(exc)})"
            if note_loss(self.run_dir, what):
                log.warning("%s", what)

    def open(self) -> None:
        self._open()

    def start(self, trial: str, name: str, config: dict[str, Any]) -> None:
        self._write(lambda s: s.upsert_trial(
            trial, experiment=self.experiment, run=self.run, variant=name, config=config,
            status="RUNNING", budget=self.budget, started=time.time()))

    def add(self, trial: str, result: dict[str, Any]) -> None:
        """Record one result (its iteration and time read through
        ``heuristics.results.number``; a result the store cannot key is left out, said once,
        and never costs another trial's buffered results)."""
        from monitor.store import iteration_of

        role = result.get("role")
        try:
            iteration = iteration_of(result)
        except StoreError as exc:
            what = f"results of trial {trial}: some not recorded ({exc})"
            if note_loss(self.run_dir, what):
                log.warning("%s", what)
            result.pop(AUDIO_KEY, None)
            result.pop(REFERENCE_KEY, None)
            return
        if AUDIO_KEY in result or REFERENCE_KEY in result:
            self._keep_audio(trial, iteration, result)
        self._iterations[trial] = iteration
        seconds = number(result.get("time_total_s"))

        def write(store) -> None:
            store.add_result(trial, result)
            store.upsert_trial(trial,
                               role=role if isinstance(role, str) else self.vocabulary.role,
                               iterations=iteration,
                               time_total_s=seconds if seconds is not None
                               and seconds == seconds else 0.0)
            if time.time() - self._last_flush > self.flush_s:
                store.flush()
                self._last_flush = time.time()

        self._write(write)

    def _keep_audio(self, trial: str, iteration: int, result: dict[str, Any]) -> None:
        """Move the report's audio clips to the run directory
        (``monitor.training.audio_samples``)."""
        try:
            problems = audio_samples.keep(self.run_dir, trial, iteration, result)
        except OSError as exc:
            problems = [f"audio of trial {trial}: not kept ({describe(exc)})"]
        for what in problems:
            if note_loss(self.run_dir, what):
                log.warning("%s", what)

    def end(self, trial: str, status: str, last: dict[str, Any] | None) -> None:
        def write(store) -> None:
            store.flush()
            metric = number((last or {}).get(self.metric)) if self.metric else None
            kill = next((v for v in store.verdicts("kill")
                         if v["trial"] == trial and not v.get("shadow")), None)
            outcome = source = None
            final = status
            extra: dict[str, Any] = {}
            if kill:
                # A crash between the verdict and this result's callback: the verdict knows.
                extra["iterations"] = max(self._iterations.get(trial, 0), kill["iteration"])
            if kill and not is_scheduler_verdict(kill):
                outcome, source, final = kill["failure"], "rule", "KILLED"
            elif status == "ERROR":
                outcome, source = "error", "error"
            elif self.healthy_threshold is not None and metric is not None:
                good = (metric == self.healthy_threshold
                        or self.vocabulary.better(metric, self.healthy_threshold))
                outcome, source = ("healthy" if good else "failed"), "quality"
            if kill and final == "TERMINATED":  # the wrapped scheduler's stop: no diagnosis
                final = "STOPPED"
            store.upsert_trial(trial, status=final, ended=time.time(),
                               final_metric=metric,
                               outcome=outcome, outcome_source=source, **extra)

        self._write(write)

    def close(self) -> None:
        if _LIVE.get(str(self.run_dir)) is self:
            del _LIVE[str(self.run_dir)]
        if self.store is not None:
            try:
                self.store.close()
            except STORE_FAULTS as exc:
                self._fault(exc)
            self.store = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["store"] = None  # a database connection is not part of the saved state
        return state
