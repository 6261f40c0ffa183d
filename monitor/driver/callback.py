"""The driver-side Tune callback that feeds every trial's results to the Prometheus exporter.

Trials send their signals inside their Tune results (``tune.report``), so trials on any node
reach this one exporter: one scrape target per experiment, however many trials run.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ray import tune

from heuristics.results import clean_result
from heuristics.vocabulary import Vocabulary
from monitor.driver.recording import StoreWriter
from monitor.driver.scheduler import kill_of
from monitor.durability import describe
from monitor.serving.exporter import Exporter

log = logging.getLogger(__name__)


_ITERATIONS: dict[str, int] = {}  # trial -> the last training_iteration its results had


def readable(result: dict, trial: str | None = None) -> dict:
    """Make ``result`` readable by everything after this callback, in place: every reported
    number a float (``10**400`` is ``inf``, a tensor or ``Decimal`` its value), what is no
    signal left out (``heuristics.results.clean_result``; the scheduler has named it in a
    notice). Tune hands every callback, its own loggers after ours, the same dict: Ray's
    TensorBoard logger, for one, raises on an integer beyond the float range, and on a result
    without ``training_iteration``, so a trial's own unreadable one (``2**63``) becomes the
    one after ``trial``'s last."""
    cleaned, _ = clean_result(result)
    if cleaned is not result:
        had = "training_iteration" in result
        result.clear()
        result.update(cleaned)
        if had and "training_iteration" not in result:
            result["training_iteration"] = _ITERATIONS.get(trial or "", 0) + 1
    if trial is not None and type(result.get("training_iteration")) is int:
        if len(_ITERATIONS) >= 100_000:
            _ITERATIONS.clear()
        _ITERATIONS[trial] = result["training_iteration"]
    return result


class HealthExporterCallback(tune.Callback):
    """Starts the exporter when the experiment starts, updates it on every result.

    Host and port default to ``MONITOR_EXPORTER_HOST`` (127.0.0.1) and
    ``MONITOR_EXPORTER_PORT`` (0: a free port; the file_sd file says which).
    """

    def __init__(self, experiment: str, run: str, sd_dir: str | Path | None = None,
                 host: str | None = None, port: int | None = None,
                 retain_s: float = 30.0, vocabulary: Vocabulary | None = None) -> None:
        self.experiment, self.run = experiment, run
        self.host, self.port = host, port  # None: from the environment (checked by Exporter)
        self.sd_dir = sd_dir
        self.retain_s = retain_s
        self.vocabulary = vocabulary
        self.exporter: Exporter | None = None

    def start(self) -> Exporter:
        """Start serving now (before Tune starts, so that a taken port fails early)."""
        if self.exporter is None:
            self.exporter = Exporter(self.experiment, self.run, self.host, self.port,
                                     self.sd_dir, self.retain_s, self.vocabulary)
            self.exporter.start()
            log.info("health metrics at %s", self.exporter.url)
        return self.exporter

    def setup(self, **info: Any) -> None:
        self.start()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        exporter = self.start()
        try:  # what a trial reports never stops the sweep (the scheduler notes the problems)
            exporter.snapshot.update(self.experiment, trial.trial_id,
                                    readable(result, trial.trial_id))
        except Exception as exc:  # noqa: BLE001
            log.warning("the exporter could not take a result of %s (%s)", trial.trial_id,
                        describe(exc))

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
    """Writes trials and their signal samples to the run store (``monitor.driver.recording``).

    A trial's name is its config's ``variant.name`` when there is one, else Tune's experiment
    tag (``3_lr=0.1``).
    """

    def __init__(self, run_dir: str | Path, experiment: str, run: str,
                 vocabulary: Vocabulary | None = None, budget: int | None = None,
                 healthy_threshold: float | None = None, flush_s: float = 2.0) -> None:
        self.writer = StoreWriter(run_dir, experiment, run, vocabulary, budget,
                                  healthy_threshold, flush_s)
        self.loop_thread: int | None = None  # the thread running Tune's loop, while it runs
        # What the run says when Tune starts it (``TuneMonitor``: metrics URL, rules), unless
        # ``announce()`` said it already.
        self.banner: list[str] | None = None

    @property
    def failed(self) -> str | None:
        return self.writer.failed

    def setup(self, **info: Any) -> None:
        self.loop_thread = threading.get_ident()
        self.writer.open()
        if self.banner:
            from monitor.console import console, safe

            for line in self.banner:
                console.print(safe(line), soft_wrap=True, highlight=False)
            self.banner = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["banner"] = None  # a restored run says its own (another port, another URL)
        return state

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        config = dict(trial.config)
        variant = config.get("variant") if isinstance(config.get("variant"), dict) else {}
        name = variant.get("name") or getattr(trial, "experiment_tag", None) or trial.trial_id
        self.writer.start(trial.trial_id, str(name), config)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        try:  # what a trial reports never stops the sweep (the scheduler notes the problems)
            self.writer.add(trial.trial_id, readable(result, trial.trial_id))
        except Exception as exc:  # noqa: BLE001
            log.warning("the run store could not take a result of %s (%s)", trial.trial_id,
                        describe(exc))
        kill = kill_of(self.writer.run, trial.trial_id)
        if kill is not None:  # Tune's own results and tables show why the trial stopped
            result["monitor_killed"] = kill["rule"]
            result["monitor_reason"] = kill["reason"]

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.writer.end(trial.trial_id, "TERMINATED", trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.writer.end(trial.trial_id, "ERROR", trial.last_result)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.loop_thread = None
        self.writer.close()
