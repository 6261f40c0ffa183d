"""The early-kill scheduler: evaluates heuristic rules on every Tune result.

``HeuristicScheduler`` subclasses ``FIFOScheduler``. On each result it asks the rule engine
for verdicts and records them durably (run store, then the fsynced verdict log:
``monitor.driver.verdicts``) *before* it saves the rule state and returns STOP for a kill; it counts
them in the exporter. With no kill it delegates to a wrapped scheduler (e.g. ASHA) if one is
given, and records that scheduler's stops as its verdicts, just as durably
(``monitor.driver.scheduler_stops``). In shadow mode it records every would-be kill and stops
nothing (the wrapped scheduler still stops what it stops).

Ray Tune pickles a scheduler once, when the experiment starts, and does not save its state.
This one keeps its rule state in ``<run dir>/heuristics/state.sqlite`` (the newest record
appended after every result, after the verdicts: ``monitor.driver.rulestate``) and its verdicts in
the store and log; after ``Tuner.restore`` it reconciles both on its first call, so no kill
is forgotten, lost or repeated and ``for`` streaks continue.

Nothing a trial reports stops the sweep: each result is first made readable
(``heuristics.results.clean_result``: any numeric type to a float, what is no signal left out
with a notice), and a write that fails (full disk) is reported and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from heuristics.coverage import Applicability, SignalCoverage
from heuristics.engine import RuleEngine, TrialState, Verdict
from heuristics.results import clean_result, whole_number
from heuristics.rules import Rule
from heuristics.ruleset import RuleSet
from heuristics.vocabulary import Vocabulary
from monitor.console import plain
from monitor.driver.rulechanges import RuleController
from monitor.driver.rulestate import RuleStateStore
from monitor.driver.run import record_rules
from monitor.driver.scheduler_stops import before, is_scheduler_verdict, stop_verdict
from monitor.driver.verdicts import RunLock, VerdictRecorder
from monitor.durability import describe
from monitor.faults import crash_point
from monitor.serving.exporter import Exporter
from monitor.serving.grafana import KillAnnotator

log = logging.getLogger(__name__)


_LIVE: dict[str, HeuristicScheduler] = {}  # run name -> its scheduler, in the driver process


def kill_of(run: str | None, trial: str) -> dict[str, Any] | None:
    """The verdict that stopped ``trial`` in ``run`` (a rule's kill, or the wrapped
    scheduler's stop), as this process's scheduler knows it."""
    scheduler = _LIVE.get(run) if run else None
    return scheduler.stopped(trial) if scheduler is not None else None


def live(run: str | None) -> HeuristicScheduler | None:
    """The scheduler of ``run`` live in this process (the one Tune calls), if any."""
    return _LIVE.get(run) if run else None


class _Witness:
    """Tune's controller as the wrapped scheduler sees it: a trial the scheduler stops directly
    (HyperBand stops the paused trials of a cut bracket) is recorded as its stop first."""

    def __init__(self, controller: Any, on_stop: Any) -> None:
        self._controller, self._on_stop = controller, on_stop

    def stop_trial(self, trial: Any) -> Any:
        self._on_stop(trial)
        return self._controller.stop_trial(trial)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


class HeuristicScheduler(FIFOScheduler):
    """Stops trials whose kill rules fire; otherwise defers to ``scheduler`` (if any).

    Args:
        rules: the effective rule set (``heuristics.rules.load_rules``).
        run_dir: the experiment's directory; verdicts and rule state live under ``heuristics/``.
        experiment: experiment name, for verdicts and metrics.
        budget: iterations a trial may run (for grace shares and "% of budget").
        shadow: record would-be kills, stop nothing.
        scheduler: another Tune scheduler to delegate to when no rule kills.
        run: the exporter's run name, to count kills in its metrics.
    """

    def __init__(self, rules: list[Rule], run_dir: str | Path, experiment: str = "",
                 budget: int | None = None, shadow: bool = False,
                 scheduler: TrialScheduler | None = None, run: str | None = None,
                 vocabulary: Vocabulary | None = None) -> None:
        super().__init__()
        self.vocabulary = vocabulary or Vocabulary()
        self.all_rules = list(rules)  # those the engine leaves out too, to say why
        self.applicability: Applicability | None = None
        self.engine = RuleEngine(rules, experiment, budget, shadow, self.vocabulary)
        self.coverage = SignalCoverage(self.engine.rules, self.vocabulary)
        self.run_dir = Path(run_dir)
        self.run = run
        self.wrapped = scheduler
        self.recorder = VerdictRecorder(self.run_dir)
        # The rules can change while the run goes on (``monitor rules apply``): the base
        # engine holds the rules it started with, the rule set every rule applied since.
        self.ruleset = RuleSet(self.engine)
        self.controller = RuleController(self.ruleset, self.run_dir, self.recorder)
        self.annotator = KillAnnotator()  # posts kills to Grafana when GRAFANA_URL is set
        self._state: RuleStateStore | None = None  # opened on first use (not pickled)
        self._loaded = False
        self._supports_buffered_results = False  # act on every result as it arrives
        self._lock = RunLock(self.run_dir)  # "a live driver writes this run"
        self._failed: set[str] = set()  # trials whose result could not be evaluated
        self.stops: dict[str, dict[str, Any]] = {}  # trial -> the wrapped scheduler's stop

    @property
    def state(self) -> RuleStateStore:
        if self._state is None:
            self._state = RuleStateStore(self.run_dir, self.engine.keep)
        return self._state

    def declaration_notices(self) -> list[str]:
        """Record which rules apply (one line: ``monitor.driver.run.record_rules``) and each rule of
        the user's naming a role the vocabulary leaves undeclared; return the latter."""
        self.applicability = record_rules(self.recorder, self.all_rules, self.vocabulary,
                                          self.engine.experiment)
        return [n.message for n in self.applicability.notices]

    # -- state that survives a restore ------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self._lock.acquire()
        if self.run:
            _LIVE[self.run] = self
        for trial, data in self.state.load().items():
            try:
                self.engine.load_trial_state(trial, data)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: rule state of %s unreadable (%s); starting it afresh",
                            self.state.path, trial, exc)
        exporter = Exporter.for_run(self.run) if self.run else None
        if exporter:
            exporter.snapshot.declare_rules(self.engine.experiment, self.engine.rules,
                                            self.engine.shadow)
            for n in self.recorder.notices():  # those recorded before a restart
                exporter.note(n["rule"], n["signal"], n["message"])
        for v in self.recorder.reconcile():  # the recorded verdicts are the truth about kills
            if is_scheduler_verdict(v):
                self.stops.setdefault(v["trial"], v)
                continue
            state = self.engine.trials.get(v["trial"])
            stops = v["action"] == "kill" and not v.get("shadow")
            if stops:
                if state is None:
                    state = self.engine.trials[v["trial"]] = TrialState()
                if state.killed is None:
                    state.killed = v
            if exporter:
                exporter.snapshot.count_verdict(v)
        self.controller.start()  # revision 1, or the applied rules rebuilt after a restore

    def stopped(self, trial: str) -> dict[str, Any] | None:
        """The verdict that stopped ``trial``: a rule's kill, else the wrapped scheduler's."""
        return self.ruleset.killed(trial) or self.stops.get(trial)

    def scheduler_stops(self) -> list[dict[str, Any]]:
        """The wrapped scheduler's stops this process knows of."""
        return list(self.stops.values())

    def _save(self, trial: str) -> None:
        self.state.append(trial, self.engine.last_record(trial))

    def _record(self, verdict: Verdict) -> None:
        data = verdict.to_dict()
        self.recorder.record(data)  # store and log, durable before anything acts on it
        exporter = Exporter.for_run(self.run) if self.run else None
        if exporter:
            exporter.snapshot.count_verdict(data)
        (log.warning if verdict.stops else log.info)("%s", plain(verdict.reason))
        if verdict.stops:
            self.annotator.post(data)

    # -- Tune scheduler interface -----------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        ok = super().set_search_properties(metric, mode, **spec)
        if self.wrapped is not None:
            ok = self.wrapped.set_search_properties(metric, mode, **spec) and ok
        return ok

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        if self.wrapped is not None:
            self.wrapped.on_trial_add(tune_controller, trial)

    def _input_notices(self, trial: str, problems: list[str]) -> None:
        for problem in problems:
            key = problem.split(": ", 1)[0]
            self.recorder.note("(input)", f"{trial}:{key}",
                               f"trial {trial} reported {problem}")

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load()
        self.controller.poll()  # rule changes asked for: swapped in between two results
        if self.stopped(trial.trial_id) is not None:
            return TrialScheduler.STOP  # stopped before a restart: never resumed, never twice
        try:
            result, problems = clean_result(result)
            if problems:
                self._input_notices(trial.trial_id, problems)
            with self.controller.lock:
                return self._evaluate(tune_controller, trial, result)
        except Exception as exc:  # noqa: BLE001 - one trial's result never ends the sweep
            if trial.trial_id not in self._failed:
                self._failed.add(trial.trial_id)
                log.error("result of trial %s at iteration %s could not be evaluated (%s); "
                          "the trial goes on", trial.trial_id,
                          result.get("training_iteration"), describe(exc))
                self.recorder.note("(input)", f"{trial.trial_id}:evaluation",
                                   f"trial {trial.trial_id}: a result could not be evaluated "
                                   f"({describe(exc)})")
            return TrialScheduler.CONTINUE

    def _evaluate(self, tune_controller, trial, result: dict) -> str:
        verdicts = self.ruleset.observe(trial.trial_id, result)
        for verdict in verdicts:
            self._record(verdict)  # durable before the state says killed and before STOP
        self._save(trial.trial_id)
        if any(v.stops for v in verdicts):
            crash_point("kill:after-state")
        seen = self.engine.trials[trial.trial_id]
        for notice in self.coverage.observe(trial.trial_id, seen.reports[-1].layers,
                                            seen.reported):
            self.recorder.note(notice.rule, notice.signal, notice.message)
        if any(v.stops for v in verdicts):
            if self.wrapped is not None:
                self.wrapped.on_trial_remove(self._seen_by(tune_controller), trial)
            return TrialScheduler.STOP
        if self.wrapped is not None:
            return self._delegate(tune_controller, trial, result)
        return TrialScheduler.CONTINUE

    def _seen_by(self, tune_controller: Any) -> _Witness:
        return _Witness(tune_controller, self._stopped_directly)

    def _stopped_directly(self, trial: Any) -> None:
        if trial is not None and self.stopped(trial.trial_id) is None:
            self._record_stop(trial, dict(getattr(trial, "last_result", None) or {}), {})

    def _delegate(self, tune_controller, trial, result: dict) -> str:
        """The wrapped scheduler's decision; a STOP is recorded as its verdict first."""
        context = before(self.wrapped, trial.trial_id, result)
        decision = self.wrapped.on_trial_result(self._seen_by(tune_controller), trial, result)
        if decision == TrialScheduler.STOP:
            self._record_stop(trial, result, context)
        return decision

    def _record_stop(self, trial: Any, result: dict, context: dict[str, Any]) -> None:
        try:
            budget = self.engine.budget or whole_number(result.get("max_iterations")) or None
            verdict = stop_verdict(
                self.wrapped, trial, result, context, metric=self.vocabulary.validation,
                mode=self.vocabulary.mode, experiment=self.engine.experiment,
                budget=int(budget) if budget else None)
            if verdict is not None:
                self.stops[trial.trial_id] = verdict
                self.recorder.record(verdict)  # store and log, durable before Tune stops it
                log.info("%s", plain(verdict["reason"]))
        except Exception as exc:  # noqa: BLE001 - recording a stop never prevents it
            log.warning("the stop of trial %s by %s could not be recorded (%s)",
                        trial.trial_id, type(self.wrapped).__name__, describe(exc))

    def on_trial_error(self, tune_controller, trial) -> None:
        if self.wrapped is not None:
            self.wrapped.on_trial_error(self._seen_by(tune_controller), trial)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if self.wrapped is not None:
            self.wrapped.on_trial_complete(self._seen_by(tune_controller), trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if self.wrapped is not None:
            self.wrapped.on_trial_remove(self._seen_by(tune_controller), trial)

    def choose_trial_to_run(self, tune_controller):
        self._load()
        self.controller.poll()
        for trial in tune_controller.get_trials():  # killed before a crash: never relaunched
            if trial.status in (Trial.PENDING, Trial.PAUSED) \
                    and self.stopped(trial.trial_id) is not None:
                tune_controller.stop_trial(trial)
        if self.wrapped is not None:
            return self.wrapped.choose_trial_to_run(self._seen_by(tune_controller))
        return super().choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        mode = "shadow mode, " if self.engine.shadow else ""
        inner = f"; otherwise: {self.wrapped.debug_string()}" if self.wrapped else ""
        rules = self.ruleset.describe()
        shadow = sum(r["mode"] == "shadow" for r in rules)
        extra = f", {shadow} in shadow" if shadow else ""
        revision = f", revision {self.ruleset.revision}" if self.ruleset.revision > 1 else ""
        return (f"Heuristic early kill ({mode}{len(rules) - shadow} rules{extra}{revision})"
                f"{inner}")
