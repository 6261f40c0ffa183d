"""Health monitoring and early kill for any Ray Tune run, in a few lines.

::

    mon = monitor.TuneMonitor("mlp_sweep", signals=monitor.Vocabulary(
        train_loss="loss", validation="val_loss", mode="min"), budget=20)
    tuner = tune.Tuner(train, param_space=space,
                       tune_config=mon.tune_config(num_samples=4),
                       run_config=mon.run_config())
    mon.print_summary(tuner.fit())

Inside the trainable: ``health = monitor.attach(model)``, ``health.step()`` after each
optimiser step, and ``tune.report({..., "health": health.collect()})``.

``TuneMonitor`` builds the scheduler (``HeuristicScheduler``, wrapping any other Tune
scheduler) and the callbacks (Prometheus exporter, run store) from one run directory, one run
name, one rule set, one vocabulary and one budget, so they cannot disagree.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from heuristics.vocabulary import Vocabulary
from monitor.console import console, one_line
from monitor.driver.callback import HealthExporterCallback, RunStoreCallback
from monitor.driver.rulechanges import Requests, RuleChangeError, user_name
from monitor.driver.run import USER_ERRORS, RuleSources, RunSpec, start_lines
from monitor.driver.scheduler import HeuristicScheduler, live
from monitor.driver.summary import plain, print_summary, summarise
from monitor.durability import note_loss
from monitor.serving.exporter import ExporterError

log = logging.getLogger(__name__)


class TuneMonitor:
    """The scheduler and callbacks of one monitored Tune run, consistent with each other.

    Args:
        experiment: a name for the experiment (labels metrics; prefixes the run directory).
        signals: which reported keys are the training loss, GAN losses, validation metric
            (and its direction): a ``Vocabulary`` or a mapping.
        rules: rule sources (``builtin``, ``custom``, YAML files, directories) or ``Rule``s.
        budget: the iterations a trial may run (for ``grace: 10%`` and "% of budget").
        scheduler: another Tune scheduler (ASHA, PBT, MedianStoppingRule...) to defer to when
            no rule kills.
        storage: the directory runs go to (default ``$MONITOR_RUNS_DIR`` or ``./runs``).
        shadow: record would-be kills, stop nothing.
        exporter: serve Prometheus metrics (host/port from ``MONITOR_EXPORTER_HOST``/``_PORT``).
        healthy_threshold: a final validation value at least this good counts as healthy
            (outcomes for ``monitor calibrate``); without it, finished trials stay unlabelled.
        tune_storage: where Tune keeps results and checkpoints (a path or URI); default
            ``storage``.
    """

    def __init__(self, experiment: str, *, signals: Vocabulary | dict[str, Any] | None = None,
                 rules: RuleSources = ("builtin", "custom"), budget: int | None = None,
                 scheduler: Any = None, storage: str | Path | None = None,
                 shadow: bool = False, exporter: bool = True,
                 healthy_threshold: float | None = None, tune_storage: str | None = None,
                 rules_base: Path | None = None) -> None:
        try:
            self.spec = RunSpec.create(experiment, rules=rules, signals=signals,
                                       budget=budget, storage=storage, shadow=shadow,
                                       healthy_threshold=healthy_threshold,
                                       rules_base=rules_base)
        except USER_ERRORS as exc:  # uncaught: one line, no traceback
            raise one_line(exc) from None
        spec = self.spec
        self.tune_storage = tune_storage.rstrip("/") if tune_storage else str(
            spec.run_dir.parent)
        self.scheduler = HeuristicScheduler(
            spec.rules, spec.run_dir, experiment, spec.budget, shadow=shadow, scheduler=scheduler,
            run=spec.name, vocabulary=spec.vocabulary)
        self.store_callback = RunStoreCallback(spec.run_dir, experiment, spec.name,
                                               spec.vocabulary, spec.budget,
                                               spec.healthy_threshold)
        self.exporter_callback = None
        if exporter:
            self.exporter_callback = HealthExporterCallback(
                experiment, spec.name, sd_dir=spec.run_dir.parent / "file_sd",
                vocabulary=spec.vocabulary)
            try:  # a taken port fails here, before Tune: one line, uncaught
                exporter = self.exporter_callback.start()
            except ExporterError as exc:
                raise one_line(exc) from None
            if exporter.sd_failed:
                note_loss(spec.run_dir, exporter.sd_failed)
        self.served_at = self.url  # kept for the summary, after the exporter has stopped
        self.notices = self.scheduler.declaration_notices()
        # Said once when Tune starts the run (the store callback's setup), or by announce().
        self.store_callback.banner = self.start_lines()

    # -- what a Tuner needs ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run's name: Tune's experiment name and the run directory's name."""
        return self.spec.name

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    @property
    def vocabulary(self) -> Vocabulary:
        return self.spec.vocabulary

    @property
    def callbacks(self) -> list[Any]:
        return [c for c in (self.exporter_callback, self.store_callback) if c is not None]

    @property
    def url(self) -> str | None:
        """Where Prometheus scrapes this run, if an exporter serves it."""
        exp = self.exporter_callback.exporter if self.exporter_callback else None
        return exp.url if exp else None

    def tune_config(self, **kwargs: Any):
        """``tune.TuneConfig`` with this run's scheduler and the declared validation metric and
        mode; other arguments pass through."""
        from ray import tune

        v = self.spec.vocabulary
        if v.validation:
            kwargs.setdefault("metric", v.validation)
            kwargs.setdefault("mode", v.mode)
        return tune.TuneConfig(scheduler=self.scheduler, **kwargs)

    def run_config(self, **kwargs: Any):
        """``tune.RunConfig`` with this run's name, storage and callbacks; other arguments
        (``stop``, ``checkpoint_config``, more ``callbacks``...) pass through."""
        from ray import tune

        callbacks = [*self.callbacks, *(kwargs.pop("callbacks", None) or [])]
        kwargs.setdefault("failure_config", tune.FailureConfig(max_failures=0))
        return tune.RunConfig(name=self.name, storage_path=self.tune_storage,
                              callbacks=callbacks, **kwargs)

    def start_lines(self) -> list[str]:
        """What the run says at its start: where the metrics are served, which rules run (one
        line) and each rule of yours that cannot fire, the run directory."""
        exp = self.exporter_callback.exporter if self.exporter_callback else None
        return start_lines(self.name, self.url, exp.sd_file if exp else None,
                           self.scheduler.applicability, self.spec.shadow, self.run_dir)

    def announce(self) -> None:
        """Say now what the run says when Tune starts it (then not again): where the metrics
        are, which rules run, and what they cannot see."""
        for line in self.start_lines():
            console.print(plain(line), soft_wrap=True, highlight=False)
        self.store_callback.banner = None

    # -- changing the rules while the sweep runs (monitor.driver.rulechanges) -----------------
    def apply_rules(self, path: str | Path, *, timeout: float = 60.0) -> dict[str, Any]:
        """Apply the rules of a YAML file to this run, in shadow: checked as ``monitor rules
        check`` does and against the run, replayed over every trial's recorded history, then
        evaluated live; returns the driver's answer (``revision``, would-be kills, ``message``),
        ``RuleChangeError`` (one line) when refused. Safe to call from any thread while
        ``tuner.fit()`` runs: the change is swapped in between two results."""
        from heuristics.yamlfile import ConfigError, read_text

        try:
            text = read_text(path, "a rule file")
        except ConfigError as exc:
            raise RuleChangeError(str(exc)) from None
        return self._change({"op": "apply", "text": text, "file": str(path)}, timeout)

    def arm_rule(self, rule: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Make the shadow version of ``rule`` act (it stops trials from the next result)."""
        return self._change({"op": "arm", "rule": rule}, timeout)

    def retire_rule(self, rule: str, version: str | None = None, *,
                    timeout: float = 60.0) -> dict[str, Any]:
        """Remove ``rule`` (its ``version``, where it has an armed and a shadow one)."""
        return self._change({"op": "retire", "rule": rule, "version": version}, timeout)

    def rules_status(self) -> dict[str, Any]:
        """Each rule version applied, its would-be kills beside the trials' outcomes so far."""
        from monitor.driver.rulestatus import build

        return build(self.run_dir)

    def _change(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        request["user"] = user_name()
        scheduler = live(self.name) or self.scheduler
        loop = self.store_callback.loop_thread
        answer = None
        if loop is not None and loop != threading.get_ident():  # fit() runs: ask its loop
            answer = self._ask_loop(dict(request), timeout)
        if answer is None:  # before or after fit(), or on the loop's own thread: here and now
            answer = scheduler.controller.handle(request)
        if not answer.get("ok"):
            raise RuleChangeError(answer.get("message", "refused"))
        return answer

    def _ask_loop(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The answer of Tune's loop to ``request``; None if fit() ended before it took it."""
        requests = Requests(self.run_dir)
        rid = requests.submit(request.pop("op"), **request)
        deadline = time.monotonic() + timeout
        while True:
            answer = requests.wait(rid, 0.25)
            if answer is not None:
                return answer
            ended = self.store_callback.loop_thread is None
            if ended or time.monotonic() > deadline:
                if requests.withdraw(rid):
                    if ended:
                        return None
                    raise RuleChangeError(f"{self.name}: the driver did not take the request "
                                          f"within {timeout:g} s; it was withdrawn")
                return requests.wait(rid, timeout) or {
                    "ok": False, "message": "the driver took the request but gave no answer"}

    # -- after the run -------------------------------------------------------------------------
    def summary(self, results: Any = None) -> dict[str, Any]:
        """The run's summary (also ``<run dir>/summary.json``); ``results``: ``tuner.fit()``'s
        ``ResultGrid``."""
        url = self.url or self.served_at
        self.close()
        scheduler = live(self.name) or self.scheduler
        return summarise(self.run_dir, self.spec.experiment, self.spec.vocabulary, results,
                         self.spec.started, store_failed=self.store_callback.failed,
                         known=scheduler.ruleset.kills() + scheduler.scheduler_stops(),
                         url=url)

    def print_summary(self, results: Any = None,
                      extra_columns: tuple[str, ...] = ()) -> dict[str, Any]:
        """``summary(results)``, shown as a table (killed trials with rule and iteration,
        those the wrapped scheduler stopped with its name and iteration)."""
        summary = self.summary(results)
        print_summary(summary, console, extra_columns)
        return summary

    def close(self) -> None:
        """Stop the exporter (after a final scrape, if Prometheus is scraping it)."""
        if self.exporter_callback is not None:
            self.exporter_callback.close()

