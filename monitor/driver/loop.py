"""Health monitoring and early kill for a training that does not run under Ray Tune.

::

    health = monitor.attach(model)
    run = monitor.LoopMonitor("my_training", signals=monitor.Vocabulary(
        train_loss="loss", validation="val_loss"), budget=100)
    for iteration in range(100):
        ...                                   # train; health.step() after each optimiser step
        decision = run.report({"loss": loss, "val_loss": val}, health=health)
        if decision.stop:
            print(decision.reason)
            break
    run.close()

The same rules, engine, run store, verdict log (and, on request, Prometheus metrics) as under
Tune, so ``monitor kill-report``, ``replay`` and ``calibrate`` work on its runs too.

``report`` refuses, with a ``ValueError``/``TypeError`` that says what was expected and before
anything is recorded, what is not a report (metrics that are not a mapping, a trial name that
is not text, an iteration that is not a whole number from 0 to 2**53); within a report,
values that are not signals are left out with a notice (``heuristics.results.clean_result``).
``close()`` never raises: a write that fails is named in the summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heuristics.coverage import SignalCoverage
from heuristics.engine import RuleEngine
from heuristics.results import MAX_ITERATION, clean_result, text_ok, whole_number
from heuristics.results import shown as _shown
from heuristics.ruleset import RuleSet
from heuristics.vocabulary import Vocabulary
from monitor.console import CONTROL, console, one_line
from monitor.console import plain as console_plain
from monitor.driver.recording import StoreWriter
from monitor.driver.rulechanges import RuleChangeError, RuleController, user_name
from monitor.driver.run import USER_ERRORS, RuleSources, RunSpec, record_rules, start_lines
from monitor.driver.summary import plain, print_summary, summarise
from monitor.driver.verdicts import RunLock, VerdictRecorder, recover
from monitor.durability import describe, note_loss

log = logging.getLogger(__name__)


def check_report(metrics: object, trial: object, iteration: object) -> None:
    """Refuse what is not a report, before anything is recorded (``TypeError``/
    ``ValueError`` saying what was expected)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"LoopMonitor.report: metrics: expected a mapping of reported values "
                        f"(e.g. {{'loss': 0.31}}), got {_shown(metrics)} (trial {_shown(trial)})")
    if not isinstance(trial, str) or not trial or not text_ok(trial) or CONTROL.search(trial):
        raise ValueError(f"LoopMonitor.report: trial: expected a non-empty name (valid text, "
                         f"no control characters such as line breaks), got {_shown(trial)}")
    if iteration is not None and whole_number(iteration, MAX_ITERATION) is None:
        raise ValueError(f"LoopMonitor.report: iteration: expected a whole number from 0 to "
                         f"2**53, got {_shown(iteration)} (trial {_shown(trial)})")


@dataclass(frozen=True)
class Decision:
    """What the rules say after one report: ``stop`` and, if so, why (a full sentence, control
    characters made visible so it is safe to print)."""

    stop: bool
    reason: str | None = None
    rule: str | None = None
    failure: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


class LoopMonitor:
    """Evaluates the rules on every report of one or more trainings in this process.

    Args: as ``monitor.TuneMonitor`` (experiment, signals, rules, budget, storage, shadow,
    healthy_threshold); ``exporter=True`` serves Prometheus metrics while it runs (``url``).

    At its first report it says where the metrics are served, which rules run and what they
    cannot see (``announce()`` says it earlier); ``print_summary()`` says it again at the end.
    """

    def __init__(self, experiment: str, *, signals: Vocabulary | dict[str, Any] | None = None,
                 rules: RuleSources = ("builtin", "custom"), budget: int | None = None,
                 storage: str | Path | None = None, shadow: bool = False,
                 exporter: bool = False, healthy_threshold: float | None = None) -> None:
        try:
            self.spec = spec = RunSpec.create(experiment, rules=rules, signals=signals,
                                              budget=budget, storage=storage, shadow=shadow,
                                              healthy_threshold=healthy_threshold)
        except USER_ERRORS as exc:  # uncaught: one line, no traceback
            raise one_line(exc) from None
        self.engine = RuleEngine(spec.rules, experiment, spec.budget, shadow, spec.vocabulary)
        self.coverage = SignalCoverage(self.engine.rules, spec.vocabulary)
        self.recorder = VerdictRecorder(spec.run_dir)
        self.ruleset = RuleSet(self.engine)  # the rules can change while it runs
        self.controller = RuleController(self.ruleset, spec.run_dir, self.recorder)
        self.writer = StoreWriter(spec.run_dir, experiment, spec.name, spec.vocabulary,
                                  spec.budget, spec.healthy_threshold)
        self.exporter = None
        if exporter:
            from monitor.serving.exporter import Exporter, ExporterError

            self.exporter = Exporter(experiment, spec.name, sd_dir=spec.run_dir.parent / "file_sd",
                                     vocabulary=spec.vocabulary)
            try:
                self.exporter.start()
            except ExporterError as exc:  # a taken port: one line, uncaught
                raise one_line(exc) from None
            if self.exporter.sd_failed:
                note_loss(spec.run_dir, self.exporter.sd_failed)
            self.exporter.snapshot.declare_rules(experiment, self.engine.rules, shadow)
        self._trials: dict[str, dict[str, Any]] = {}  # trial -> {"n", "started", "last"}
        self._closed = False
        self._lock = RunLock(spec.run_dir)
        self._lock.acquire()
        recover(spec.run_dir.parent, experiment, exclude=spec.run_dir)  # earlier runs killed
        self.applicability = record_rules(self.recorder, spec.rules, spec.vocabulary,
                                          experiment)
        self.notices = [n.message for n in self.applicability.notices]
        self.served_at = self.url  # kept for the summary, after the exporter has stopped
        self._banner: list[str] | None = self.start_lines()

    @property
    def url(self) -> str | None:
        """Where Prometheus scrapes this run (``exporter=True``), else None."""
        return self.exporter.url if self.exporter is not None else None

    def start_lines(self) -> list[str]:
        """What the run says at its start: where the metrics are served, which rules run (one
        line) and each rule of yours that cannot fire, the run directory."""
        return start_lines(self.name, self.url,
                           self.exporter.sd_file if self.exporter is not None else None,
                           self.applicability, self.spec.shadow, self.run_dir)

    def announce(self) -> None:
        """Say now what the first report would say (then not again)."""
        for line in self._banner or self.start_lines():
            console.print(console_plain(line), soft_wrap=True, highlight=False, markup=False)
        self._banner = None

    # -- changing the rules while it runs (monitor.driver.rulechanges) -----------------------
    def apply_rules(self, path: str | Path) -> dict[str, Any]:
        """Apply the rules of a YAML file, in shadow (as ``TuneMonitor.apply_rules``): checked,
        replayed over every trial's recorded history, evaluated from the next report on;
        ``RuleChangeError`` (one line) when refused."""
        return self._answer(self.controller.apply_file(path, user_name()))

    def arm_rule(self, rule: str) -> dict[str, Any]:
        """Make the shadow version of ``rule`` act from the next report on."""
        return self._answer(self.controller.arm(rule, user_name()))

    def retire_rule(self, rule: str, version: str | None = None) -> dict[str, Any]:
        """Remove ``rule`` (its ``version``, where it has an armed and a shadow one)."""
        return self._answer(self.controller.retire(rule, version, user_name()))

    def rules_status(self) -> dict[str, Any]:
        """Each rule version applied, its would-be kills beside the trials' outcomes so far."""
        from monitor.driver.rulestatus import build

        self.writer._write(lambda s: s.flush())
        return build(self.run_dir)

    @staticmethod
    def _answer(answer: dict[str, Any]) -> dict[str, Any]:
        if not answer.get("ok"):
            raise RuleChangeError(answer.get("message", "refused"))
        return answer

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    @property
    def name(self) -> str:
        return self.spec.name

    def report(self, metrics: dict[str, Any], *, health: Any = None, trial: str = "main",
               iteration: int | None = None) -> Decision:
        """Take one report of ``trial`` (its metrics, and the health block: a
        ``HealthMonitor`` to collect from, or what its ``collect()`` returned); return the
        decision. A killed trial's later reports are ignored and keep saying stop."""
        if self._closed:
            raise RuntimeError(f"LoopMonitor {self.name} is closed; create a new one")
        check_report(metrics, trial, iteration)
        if self._banner is not None:
            self.announce()
        self.controller.start()  # revision 1 recorded at the first report
        self.controller.poll()  # changes asked for by `monitor rules` (between two reports)
        state = self._trials.get(trial)
        if state is None:
            state = self._trials[trial] = {"n": 0, "started": time.time(), "last": {}}
            self.writer.start(trial, trial, {})
        killed = self.ruleset.killed(trial)
        if killed is not None:
            return Decision(True, console_plain(killed["reason"]), killed["rule"],
                            killed["failure"])
        state["n"] += 1
        result = dict(metrics)
        if health is not None:
            result["health"] = health.collect() if hasattr(health, "collect") else health
        result["training_iteration"] = whole_number(iteration) if iteration is not None \
            else state["n"]
        result, problems = clean_result(result)
        if "time_total_s" not in result:
            result["time_total_s"] = time.time() - state["started"]
        for problem in problems:
            key = problem.split(": ", 1)[0]
            if self.recorder.note("(input)", f"{trial}:{key}",
                                  f"trial {trial} reported {problem}"):
                console.print(plain(f"Warning: trial {trial} reported {problem}"))
        state["last"] = result
        self.writer.add(trial, result)
        if self.exporter is not None:
            self.exporter.snapshot.update(self.spec.experiment, trial, result)
        verdicts = self.ruleset.observe(trial, result)
        warnings = []
        for v in verdicts:
            data = v.to_dict()
            self.recorder.record(data)  # durable before the caller acts on it
            if self.exporter is not None:
                self.exporter.snapshot.count_verdict(data)
            if not v.stops:
                warnings.append(v.reason)
        seen = self.engine.trials[trial]
        for n in self.coverage.observe(trial, seen.reports[-1].layers, seen.reported):
            if self.recorder.note(n.rule, n.signal, n.message):
                console.print(plain(f"Warning: {n.message}"))
        kill = next((v for v in verdicts if v.stops), None)
        if kill is not None:
            self.end(trial)
            return Decision(True, console_plain(kill.reason), kill.rule, kill.failure,
                            tuple(console_plain(w) for w in warnings))
        return Decision(False, warnings=tuple(console_plain(w) for w in warnings))

    def end(self, trial: str = "main", status: str = "TERMINATED") -> None:
        """Mark ``trial`` as finished (``close()`` ends every trial still running)."""
        state = self._trials.get(trial)
        if state is None or state.get("ended"):
            return
        state["ended"] = True
        self.writer.end(trial, status, state["last"])
        if self.exporter is not None:
            self.exporter.snapshot.end(trial)

    def close(self) -> dict[str, Any]:
        """End every trial, flush the store, stop the exporter; return the run's summary."""
        if not self._closed:
            self._closed = True
            steps = [*(lambda t=t: self.end(t) for t in list(self._trials)),
                     self.writer.close, self.recorder.close]
            if self.exporter is not None:
                steps.append(self.exporter.stop)
            for step in steps:  # each step is tried; none stops the others or the summary
                try:
                    step()
                except Exception as exc:  # noqa: BLE001
                    what = f"closing the run: {describe(exc)}"
                    if note_loss(self.run_dir, what):
                        log.warning("%s", what)
        summary = summarise(self.run_dir, self.spec.experiment, self.spec.vocabulary,
                            started=self.spec.started, store_failed=self.writer.failed,
                            known=self.ruleset.kills(), url=self.served_at)
        self._lock.release()
        return summary

    def print_summary(self) -> dict[str, Any]:
        summary = self.close()
        print_summary(summary, console)
        return summary

    def __enter__(self) -> LoopMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
