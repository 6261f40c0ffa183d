"""The rule engine: evaluates rules over each trial's reports and returns verdicts.

One implementation serves every driver (the Tune scheduler, and replays of recorded
histories). The engine holds no clock and does no I/O; its whole state is JSON-serialisable
(``state_dict``/``load_state_dict``) so that it survives a driver restart.

Semantics, per trial and rule:

* the condition is evaluated on every report; a report without the data it needs leaves the
  streak as it is (neither holds nor breaks it);
* it *fires* once it has held on ``for`` reports in a row (or for a duration of the trial's own
  training time), from iteration ``grace`` on;
* ``kill`` rules produce one kill verdict and the trial is done; ``warn`` rules produce a
  verdict when they start firing (once per streak). In *shadow* mode kill rules behave like warn
  rules, marked as would-be kills, and nothing is stopped;
* a report whose iteration is not after the last one (a trial restored from an older
  checkpoint replays iterations) first drops the reports it replaces, so streaks and running
  minima roll back consistently.

Rules are isolated from each other: each evaluates in its own scope of the reports' caches
(window inputs, running minima), keeps its own streak, and sees exactly the reports it would
see if it were the only rule (its own history length, also across restores). A rule's verdicts
are the same alone as in any rule set (``tests/test_engine_property.py``).

State: a trial's state is its recent records plus two small mappings (``killed`` and each
rule's first visible iteration). ``trial_state``/``load_trial_state`` give and take it whole;
``last_record`` gives only the newest record, for stores that append a record per result.
Records keep only the signals the rules read.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from typing import Any

from heuristics.expr import (
    LAYER_SIGNALS,
    PEER_LAG,
    PEER_NOISE,
    Call,
    Report,
    Value,
    comparisons,
    evaluate,
    noise,
    signals_of,
    truth,
    walk,
)
from heuristics.results import number, observe, whole_number
from heuristics.rules import PLACEHOLDER, Rule, rule_version
from heuristics.vocabulary import Vocabulary

WINDOW_SHOWN = 5  # recent reports kept in a verdict's evidence
BEST = "$best"  # ``ever`` slots of a record: the best declared validation value, its iteration
EXTRA_HISTORY = 32  # reports kept beyond the longest window, for replays after a restore


@dataclass
class Verdict:
    rule: str
    group: str
    failure: str
    action: str  # kill | warn
    shadow: bool  # a would-be kill in shadow mode: recorded, nothing stopped
    experiment: str
    trial: str
    iteration: int
    budget: int | None
    wall_time: float
    trial_time_s: float
    expr: str
    value: Value
    values: dict[str, Value]
    window: dict[str, list[list[Any]]]
    held_reports: int
    summary: str
    reason: str
    labels: dict[str, str] = field(default_factory=dict)
    rule_version: str = ""  # the rule's content hash (``heuristics.rules.rule_version``)
    ruleset_revision: int = 0  # the run's rule-set revision when the verdict was given
    retroactive: bool = False  # found replaying recorded history when the rule was applied

    @property
    def stops(self) -> bool:
        return self.action == "kill" and not self.shadow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Record(Report):
    """A report plus each rule's outcome on it: whether its condition held (``None``: absent),
    whether it fired, and its streak (reports in a row, trial time of the first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: dict[str, bool | None] = {}
        self.firing: dict[str, bool] = {}
        self.streak: dict[str, list[Any]] = {}  # rule -> [count, time_s of the first]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "held": self.held, "firing": self.firing,
                "streak": self.streak}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        r = cls(d["iteration"], d["time_s"], d["layers"], d["scalars"])
        r.load_slots(d)
        r.held, r.firing = dict(d["held"]), dict(d["firing"])
        r.streak = {k: list(v) for k, v in d.get("streak", {}).items()}
        return r


def next_streak(previous: list[Any] | None, held: bool | None, time_s: float) -> list[Any]:
    """A rule's streak after a report: absent data leaves it as it is, false ends it."""
    count, first = previous if previous else (0, None)
    if held is None:
        return [count, first]
    if not held:
        return [0, None]
    return [count + 1, first if count else time_s]


def fmt(value: Value) -> str:
    """A value for a sentence: numbers with 3 significant digits, vectors by their maximum."""
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        if not value:
            return "n/a"
        finite = {k: v for k, v in value.items() if not math.isnan(v)}
        if not finite:
            return "NaN in every layer"
        layer = max(finite, key=finite.get)
        return f"{finite[layer]:.3g} (max, layer {layer})"
    return f"{value:.3g}"


class TrialState:
    def __init__(self) -> None:
        self.reports: list[Record] = []
        self.killed: dict[str, Any] | None = None
        # every scalar name of the last report (roles, keys, derived), read or not by a rule:
        # what ``SignalCoverage`` checks the vocabulary's declared keys against
        self.reported: frozenset[str] = frozenset()
        self.first: dict[str, int] = {}  # rule -> first iteration it still sees
        # ``peer_zscore`` inputs of this trial: canonical text -> iteration -> value, kept for
        # the trial's whole life (the other trials compare with them, whenever they run)
        self.peer: dict[str, dict[int, Value]] = {}
        # the trial's own noise of each input at an iteration (``noise``), computed when a
        # sibling first asks for it; an iteration's noise depends only on values up to it
        self._noise: dict[str, dict[int, Value]] = {}
        self._noise_newest: dict[str, int] = {}

    def add_peer(self, record: Record) -> None:
        for key, value in record.peer.items():
            self.peer.setdefault(key, {})[record.iteration] = value

    def forget_peer_from(self, iteration: int) -> None:
        """Drop the values of ``iteration`` and later (a restored trial replays them). Values
        are added in iteration order, so the newest is the last key: one look per result."""
        for values in self.peer.values():
            while values and next(reversed(values)) >= iteration:
                values.popitem()
        for key, newest in self._noise_newest.items():  # filled in the order siblings asked
            if newest >= iteration:
                kept = {it: v for it, v in self._noise[key].items() if it < iteration}
                self._noise[key] = kept
                self._noise_newest[key] = max(kept, default=0)

    def peer_at(self, key: str, iteration: int) -> Value:
        """This trial's ``key`` at ``iteration``, or at the newest of the PEER_LAG before."""
        values = self.peer.get(key)
        if not values:
            return None
        for it in range(iteration, iteration - PEER_LAG - 1, -1):
            if it in values:
                return values[it]
        return None

    def peer_evidence(self, key: str, iteration: int) -> tuple[Value, Value]:
        """(value, the trial's own noise there) of ``key`` at ``iteration`` or the newest of
        the PEER_LAG before; (None, None) without one. The noise: ``noise`` over the trial's
        last PEER_NOISE values up to that iteration."""
        values = self.peer.get(key)
        if not values:
            return None, None
        for it in range(iteration, iteration - PEER_LAG - 1, -1):
            if it in values:
                break
        else:
            return None, None
        cache = self._noise.setdefault(key, {})
        if it not in cache:
            series = []
            for k in reversed(values):  # added in iteration order
                if k <= it:
                    series.append(values[k])
                    if len(series) == PEER_NOISE:
                        break
            cache[it] = noise(series)
            self._noise_newest[key] = max(it, self._noise_newest.get(key, 0))
        return values[it], cache[it]

    def view(self, rule: str, keep: int) -> list[Record]:
        """The reports ``rule`` sees now (call once per report): its last ``keep``, never
        from before the first it still had, exactly as if it were the only rule."""
        reports = self.reports[-keep:]
        first = self.first.get(rule)
        if first is not None:
            i = bisect_left(reports, first, key=lambda r: r.iteration)
            reports = reports[i:] or reports[-1:]  # its reports were all replaced: start anew
        self.first[rule] = reports[0].iteration
        return reports


class RuleEngine:
    """Evaluates ``rules`` on every report of every trial."""

    def __init__(self, rules: list[Rule], experiment: str = "", budget: int | None = None,
                 shadow: bool = False, vocabulary: Vocabulary | None = None) -> None:
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be a positive number of iterations, got {budget}")
        self.vocabulary = vocabulary or Vocabulary()
        # ``requires`` met by the vocabulary, and the rule's file names this experiment
        self.rules = [r for r in rules if r.applies(self.vocabulary)
                      and r.for_experiment(experiment)]
        self.experiment = experiment
        self.budget = budget
        self.shadow = shadow
        # A candidate engine (a rule applied to a running sweep, not yet armed) only records:
        # its kills are would-be kills and its warnings too are marked shadow.
        self.candidate = False
        self.revision = 1  # the rule-set revision its verdicts carry (``RuleSet`` sets it)
        self.versions = {r.name: rule_version(r) for r in self.rules}
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {sorted(names)}")
        # Reports each rule sees: its windows and evidence, plus replays after a restore.
        self.keeps = {r.name: max(WINDOW_SHOWN, r.window) + EXTRA_HISTORY for r in self.rules}
        self.keep = max([*self.keeps.values(), WINDOW_SHOWN + EXTRA_HISTORY])
        self.layer_signals, self.scalar_signals = read_signals(self.rules)
        self.trials: dict[str, TrialState] = {}

    def drop(self, name: str) -> None:
        """Stop evaluating rule ``name`` (retired or replaced; its slots in records stay)."""
        self.rules = [r for r in self.rules if r.name != name]

    def killed(self, trial: str) -> dict[str, Any] | None:
        state = self.trials.get(trial)
        return state.killed if state else None

    def observe(self, trial: str, result: dict[str, Any],
                wall_time: float | None = None) -> list[Verdict]:
        """Take one result of ``trial``; return the verdicts it triggers (kills first)."""
        state = self.trials.setdefault(trial, TrialState())
        if state.killed is not None:
            return []
        last = state.reports[-1].iteration if state.reports else 0
        iteration = whole_number(result.get("training_iteration", last + 1))
        iteration = last + 1 if iteration is None else iteration
        time_s = number(result.get("time_total_s")) or 0.0
        time_s = time_s if math.isfinite(time_s) else 0.0
        while state.reports and state.reports[-1].iteration >= iteration:
            state.reports.pop()  # a restored trial replays iterations after its checkpoint
        state.forget_peer_from(iteration)
        obs = observe(result, self.vocabulary, iteration)
        layers = {layer: kept for layer, signals in obs.layers.items()
                  if (kept := {k: v for k, v in signals.items() if k in self.layer_signals})}
        scalars = {k: v for k, v in obs.scalars().items() if k in self.scalar_signals}
        if "quality" in self.scalar_signals and "validation" in obs.roles:
            value = obs.roles["validation"]  # the declared metric, higher is better
            scalars["quality"] = value if self.vocabulary.mode == "max" else -value
        state.reported = frozenset(obs.scalars()) | frozenset(scalars)
        record = Record(iteration, time_s, layers, scalars)
        record.peers = lambda key: [s.peer_evidence(key, iteration)
                                    for t, s in self.trials.items() if t != trial]
        record.seq = state.reports[-1].seq + 1 if state.reports and \
            state.reports[-1].seq is not None else 0
        state.reports.append(record)
        self._track_best(state, record, obs.roles.get("validation"))
        del state.reports[:-self.keep]
        budget = self.budget or whole_number(result.get("max_iterations")) or None
        verdicts = []
        for rule in self.rules:
            history = state.view(rule.name, self.keeps[rule.name])
            held = truth(evaluate(rule.tree, history, rule.name))
            record.held[rule.name] = held
            previous = history[-2].streak.get(rule.name) if len(history) > 1 else None
            record.streak[rule.name] = next_streak(previous, held, time_s)
            streak, first_time = record.streak[rule.name]
            if rule.hold.seconds is not None:
                satisfied = streak >= 1 and time_s - first_time >= rule.hold.seconds
            else:
                satisfied = streak >= rule.hold.reports
            firing = bool(held) and satisfied and iteration >= rule.grace.first_iteration(budget)
            record.firing[rule.name] = firing
            was_firing = len(history) > 1 and history[-2].firing.get(rule.name, False)
            if not firing:
                continue
            shadow = self.candidate or (rule.action == "kill" and self.shadow)
            if (rule.action == "kill" and not shadow) or not was_firing:
                verdicts.append(self._verdict(rule, trial, history, streak, budget, shadow,
                                              wall_time))
        record.peers = None
        state.add_peer(record)
        verdicts.sort(key=lambda v: not v.stops)
        if verdicts and verdicts[0].stops:
            state.killed = verdicts[0].to_dict()
            verdicts = [verdicts[0]] + [v for v in verdicts[1:] if not v.stops]
        return verdicts

    def _verdict(self, rule: Rule, trial: str, history: list[Record], streak: int,
                 budget: int | None, shadow: bool, wall_time: float | None) -> Verdict:
        now = history[-1]
        value = self._value(rule, history)
        values: dict[str, Value] = {}
        window: dict[str, list[list[Any]]] = {}
        for sig in signals_of(rule.tree):
            label = sig.label()
            if label in values:
                continue
            values[label] = evaluate(sig, history, rule.name)
            shown = history[-max(WINDOW_SHOWN, rule.window):]
            start = len(history) - len(shown)
            window[label] = [[r.iteration, evaluate(sig, history[:start + i + 1], rule.name)]
                             for i, r in enumerate(shown)]
        best = now.ever.get(BEST)
        context = {"$value": fmt(value), "$trial": trial, "$iteration": str(now.iteration),
                   "$rule": rule.name, "$for": rule.hold.describe(),
                   "$budget": str(budget) if budget else "unknown",
                   "$validation": self.vocabulary.validation or "validation",
                   "$best": (f"{fmt(best[0])} at iteration {int(best[1])}" if best
                             else "unknown")}
        summary = fill(rule.annotations.get("summary", ""), context, rule.labels, values)
        version = self.versions.get(rule.name) or rule_version(rule)
        reason = sentence(rule, trial, now.iteration, budget, shadow, summary, value, streak)
        if self.candidate:
            reason = reason.replace("(shadow mode)", f"(shadow rule, version {version})")
        return Verdict(rule=rule.name, group=rule.group, failure=rule.failure,
                       action=rule.action, shadow=shadow, experiment=self.experiment,
                       trial=trial, iteration=now.iteration, budget=budget,
                       wall_time=wall_time if wall_time is not None else time.time(),
                       trial_time_s=now.time_s, expr=rule.expr, value=value, values=values,
                       window=window, held_reports=streak, summary=summary, reason=reason,
                       labels=dict(rule.labels), rule_version=version,
                       ruleset_revision=self.revision)

    def _track_best(self, state: TrialState, record: Record, value: Any) -> None:
        """The trial's best declared validation value so far and its iteration, carried by
        every record (in its ``ever`` slots, so that it is saved and restored with them)."""
        previous = state.reports[-2].ever.get(BEST) if len(state.reports) > 1 else None
        best = previous
        if isinstance(value, (int, float)) and math.isfinite(value) and (
                previous is None or self.vocabulary.better(value, previous[0])):
            best = {0: float(value), 1: float(record.iteration)}
        if best is not None:
            record.ever[BEST] = dict(best)

    @staticmethod
    def _value(rule: Rule, history: list[Record]) -> Value:
        """``$value``: the left side of the first comparison that holds now (of an ``or`` of
        several, the one that made the rule fire), else of the first one with a value."""
        present = None
        for comparison in comparisons(rule.tree):
            left = evaluate(comparison.left, history, rule.name)
            if left is None:
                continue
            if truth(evaluate(comparison, history, rule.name)):
                return left
            if present is None:
                present = left
        return present

    def state_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "budget": self.budget, "shadow": self.shadow,
                "trials": {t: self.trial_state(t) for t in self.trials}}

    def trial_state(self, trial: str) -> dict[str, Any]:
        """The whole state of ``trial`` (JSON-serialisable; NaN needs ``allow_nan``)."""
        s = self.trials[trial]
        return {"reports": [r.to_dict() for r in s.reports], "killed": s.killed,
                "first": dict(s.first),
                "peer": {k: {str(it): v for it, v in vals.items()} for k, vals in s.peer.items()}}

    def last_record(self, trial: str) -> dict[str, Any]:
        """The newest record of ``trial`` (what the last ``observe`` added) and the small
        per-trial part of its state, for a store that appends one record per result.

        Such a store keeps records by (trial, iteration): a record replaces every stored one
        of its trial with an iteration >= its own (a restored trial replays iterations), and
        only the last ``keep`` records are needed. ``load_trial_state({"reports": records in
        iteration order, "killed": ..., "first": ...})`` restores the trial.
        """
        s = self.trials[trial]
        return {"record": s.reports[-1].to_dict(), "killed": s.killed, "first": dict(s.first)}

    def load_trial_state(self, trial: str, data: dict[str, Any]) -> None:
        s = TrialState()
        s.reports = [Record.from_dict(r) for r in data["reports"]]
        s.reports.sort(key=lambda r: r.iteration)
        s.peer = {k: {int(it): v for it, v in vals.items()}
                  for k, vals in (data.get("peer") or {}).items()}
        for r in s.reports:  # a store of records: each holds its own peer values
            s.add_peer(r)
        del s.reports[:-self.keep]
        for seq, r in enumerate(s.reports):
            r.seq = seq
        s.killed = data.get("killed")
        s.first = {k: int(v) for k, v in (data.get("first") or {}).items()}
        if any(not r.streak for r in s.reports):  # an older format: streaks from ``held``
            for i, r in enumerate(s.reports):
                for rule, held in r.held.items():
                    previous = s.reports[i - 1].streak.get(rule) if i else None
                    r.streak[rule] = next_streak(previous, held, r.time_s)
        self.trials[trial] = s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trials = {}
        for trial, data in state.get("trials", {}).items():
            self.load_trial_state(trial, data)


def read_signals(rules: list[Rule]) -> tuple[set[str], set[str]]:
    """The per-layer signals and the scalar keys ``rules`` read (all a record needs)."""
    layers, scalars = set(), set()
    for rule in rules:
        for sig in signals_of(rule.tree):
            (layers if sig.name in LAYER_SIGNALS else scalars).add(sig.name)
        scalars.update(n.args[0] for n in walk(rule.tree)
                       if isinstance(n, Call) and n.fn == "result")
    return layers, scalars


def fill(template: str, context: dict[str, str], labels: dict[str, str],
         values: dict[str, Value]) -> str:
    """Fill ``{{ $name }}`` placeholders (no code is evaluated)."""

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key in context:
            return context[key]
        if key.startswith("$labels."):
            return labels.get(key[8:], "")
        if key.startswith("$values."):
            name = key[8:]
            match = next((v for k, v in values.items() if k.split("{")[0] == name), None)
            return fmt(match)
        return m.group(0)

    return PLACEHOLDER.sub(sub, template)


def sentence(rule: Rule, trial: str, iteration: int, budget: int | None, shadow: bool,
             summary: str, value: Value, streak: int) -> str:
    """The decision as one sentence with its numbers."""
    if rule.action == "kill":
        verb = "would have been stopped (shadow mode)" if shadow else "stopped"
    else:
        verb = "would have been warned about (shadow rule)" if shadow else "warned"
    share = f" ({100 * iteration / budget:.0f}% of its {budget}-iteration budget)" if budget \
        else ""
    held = (f"{streak} report{'s' if streak != 1 else ''} in a row"
            if rule.hold.seconds is None else rule.hold.describe())
    text = (f"Trial {trial} {verb} at iteration {iteration}{share} by rule {rule.name} "
            f"(predicts {rule.failure}): `{rule.expr}` held for {held}")
    if value is not None:
        text += f", value {fmt(value)}"
    text += "."
    if summary:
        text += f" {summary.rstrip('.')}."
    return text
