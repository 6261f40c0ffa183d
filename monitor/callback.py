"""The driver-side Tune callback that feeds every trial's results to the Prometheus exporter.

Trials send their signals inside their Tune results (``tune.report``), so trials on any node
reach this one exporter: one scrape target per experiment, however many trials run.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from monitor.exporter import Exporter

log = logging.getLogger(__name__)


class HealthExporterCallback(tune.Callback):
    """Starts the exporter when the experiment starts, updates it on every result.

    Host and port default to ``MONITOR_EXPORTER_HOST`` (127.0.0.1) and
    ``MONITOR_EXPORTER_PORT`` (0: a free port; the file_sd file says which).
    """

    def __init__(self, experiment: str, run: str, sd_dir: str | Path | None = None,
                 host: str | None = None, port: int | None = None,
                 retain_s: float = 30.0) -> None:
        self.experiment, self.run = experiment, run
        self.host = host or os.environ.get("MONITOR_EXPORTER_HOST", "127.0.0.1")
        self.port = port if port is not None else int(os.environ.get("MONITOR_EXPORTER_PORT", 0))
        self.sd_dir = sd_dir
        self.retain_s = retain_s
        self.exporter: Exporter | None = None

    def start(self) -> Exporter:
        """Start serving now (before Tune starts, so that a taken port fails early)."""
        if self.exporter is None:
            self.exporter = Exporter(self.experiment, self.run, self.host, self.port,
                                     self.sd_dir, self.retain_s)
            self.exporter.start()
            log.info("health metrics at %s", self.exporter.url)
        return self.exporter

    def setup(self, **info: Any) -> None:
        self.start()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.start().snapshot.update(self.experiment, trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        if self.exporter:
            self.exporter.snapshot.end(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        if self.exporter:
            self.exporter.snapshot.end(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.exporter:
            self.exporter.stop()
            self.exporter = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["exporter"] = None  # a live server is not part of the saved experiment state
        return state


class RunStoreCallback(tune.Callback):
    """Writes trials and their signal samples to the run store (``monitor.store``).

    Samples are batched: flushed when a batch fills, at most ``flush_s`` seconds after the
    previous flush, and when a trial ends. Trial outcomes: a killed trial carries the failure its
    rule predicted; a trial that ran to its end is ``healthy`` or ``failed`` by its final metric
    against ``healthy_threshold`` (when the experiment sets one).
    """

    def __init__(self, run_dir: str | Path, experiment: str, run: str, metric: str, mode: str,
                 budget: int, healthy_threshold: float | None = None,
                 flush_s: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.experiment, self.run = experiment, run
        self.metric, self.mode, self.budget = metric, mode, budget
        self.healthy_threshold = healthy_threshold
        self.flush_s = flush_s
        self.store = None
        self._last_flush = 0.0

    def _store(self):
        if self.store is None:
            from monitor.store import RunStore

            self.store = RunStore(self.run_dir)
            self.store.set_meta(experiment=self.experiment, run=self.run, metric=self.metric,
                                mode=self.mode, budget=self.budget,
                                healthy_threshold=self.healthy_threshold)
        return self.store

    def setup(self, **info: Any) -> None:
        self._store()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        config = dict(trial.config)
        variant = (config.get("variant") or {}).get("name")
        self._store().upsert_trial(trial.trial_id, experiment=self.experiment, run=self.run,
                                   variant=variant, config=config, status="RUNNING",
                                   budget=self.budget, started=time.time())

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        store = self._store()
        store.add_result(trial.trial_id, result)
        store.upsert_trial(trial.trial_id, role=str(result.get("role", "")),
                           iterations=int(result.get("training_iteration", 0)),
                           time_total_s=float(result.get("time_total_s", 0.0)))
        if time.time() - self._last_flush > self.flush_s:
            store.flush()
            self._last_flush = time.time()

    def _end(self, trial, status: str) -> None:
        store = self._store()
        store.flush()
        last = trial.last_result or {}
        metric = last.get(self.metric)
        kill = next((v for v in store.verdicts("kill")
                     if v["trial"] == trial.trial_id and not v.get("shadow")), None)
        outcome = source = None
        if kill:
            outcome, source, status = kill["failure"], "rule", "KILLED"
        elif status == "ERROR":
            outcome, source = "error", "error"
        elif self.healthy_threshold is not None and isinstance(metric, (int, float)):
            good = (metric <= self.healthy_threshold if self.mode == "min"
                    else metric >= self.healthy_threshold)
            outcome, source = ("healthy" if good else "failed"), "quality"
        store.upsert_trial(trial.trial_id, status=status, ended=time.time(),
                           final_metric=metric if isinstance(metric, (int, float)) else None,
                           outcome=outcome, outcome_source=source)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["store"] = None  # a database connection is not part of the saved state
        return state
