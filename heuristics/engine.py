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
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from heuristics.expr import Report, Value, evaluate, signals_of, threshold_operand, truth
from heuristics.rules import PLACEHOLDER, Rule
from heuristics.results import unflatten_health

WINDOW_SHOWN = 5  # recent reports kept in a verdict's evidence
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

    @property
    def stops(self) -> bool:
        return self.action == "kill" and not self.shadow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Record(Report):
    """A report plus each rule's outcome on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: dict[str, bool | None] = {}
        self.firing: dict[str, bool] = {}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "held": self.held, "firing": self.firing}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        r = cls(d["iteration"], d["time_s"], d["layers"], d["scalars"])
        r.cache = {int(k): v for k, v in d["cache"].items()}
        r.ever = {int(k): v for k, v in d["ever"].items()}
        r.held, r.firing = d["held"], d["firing"]
        return r


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def extract(result: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-layer and scalar signals of a Tune result (``health`` block + top-level numbers)."""
    health = unflatten_health(result)
    layers = {layer: {k: float(v) for k, v in sig.items() if _number(v) is not None}
              for layer, sig in (health.get("layers") or {}).items()}
    scalars = {k: float(v) for k, v in (health.get("model") or {}).items()
               if _number(v) is not None}
    for k, v in result.items():
        if _number(v) is not None and k not in scalars and not k.startswith("health/"):
            scalars[k] = float(v)
    return layers, scalars


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


class RuleEngine:
    """Evaluates ``rules`` on every report of every trial."""

    def __init__(self, rules: list[Rule], experiment: str = "", budget: int | None = None,
                 shadow: bool = False) -> None:
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be a positive number of iterations, got {budget}")
        self.rules = rules
        self.experiment = experiment
        self.budget = budget
        self.shadow = shadow
        self.keep = max([r.window for r in rules] + [1]) + EXTRA_HISTORY
        self.trials: dict[str, TrialState] = {}

    def killed(self, trial: str) -> dict[str, Any] | None:
        state = self.trials.get(trial)
        return state.killed if state else None

    def observe(self, trial: str, result: dict[str, Any],
                wall_time: float | None = None) -> list[Verdict]:
        """Take one result of ``trial``; return the verdicts it triggers (kills first)."""
        state = self.trials.setdefault(trial, TrialState())
        if state.killed is not None:
            return []
        iteration = int(result.get("training_iteration", len(state.reports) + 1))
        time_s = float(result.get("time_total_s", 0.0))
        while state.reports and state.reports[-1].iteration >= iteration:
            state.reports.pop()  # a restored trial replays iterations after its checkpoint
        layers, scalars = extract(result)
        record = Record(iteration, time_s, layers, scalars)
        state.reports.append(record)
        del state.reports[:-self.keep]
        history = state.reports
        budget = self.budget or _number(result.get("max_iterations")) or None
        budget = int(budget) if budget else None
        verdicts = []
        for rule in self.rules:
            held = truth(evaluate(rule.tree, history))
            record.held[rule.name] = held
            streak, first_time = self._streak(rule, history)
            if rule.hold.seconds is not None:
                satisfied = streak >= 1 and time_s - first_time >= rule.hold.seconds
            else:
                satisfied = streak >= rule.hold.reports
            firing = bool(held) and satisfied and iteration >= rule.grace.first_iteration(budget)
            record.firing[rule.name] = firing
            was_firing = len(history) > 1 and history[-2].firing.get(rule.name, False)
            if not firing:
                continue
            shadow = rule.action == "kill" and self.shadow
            if (rule.action == "kill" and not shadow) or not was_firing:
                verdicts.append(self._verdict(rule, trial, history, streak, budget, shadow,
                                              wall_time))
        verdicts.sort(key=lambda v: not v.stops)
        if verdicts and verdicts[0].stops:
            state.killed = verdicts[0].to_dict()
            verdicts = [verdicts[0]] + [v for v in verdicts[1:] if not v.stops]
        return verdicts

    @staticmethod
    def _streak(rule: Rule, history: list[Record]) -> tuple[int, float]:
        count, first_time = 0, history[-1].time_s
        for r in reversed(history):
            held = r.held.get(rule.name)
            if held is None:
                continue
            if not held:
                break
            count += 1
            first_time = r.time_s
        return count, first_time

    def _verdict(self, rule: Rule, trial: str, history: list[Record], streak: int,
                 budget: int | None, shadow: bool, wall_time: float | None) -> Verdict:
        now = history[-1]
        operand = threshold_operand(rule.tree)
        value = evaluate(operand, history) if operand is not None else None
        values: dict[str, Value] = {}
        window: dict[str, list[list[Any]]] = {}
        for sig in signals_of(rule.tree):
            label = sig.label()
            if label in values:
                continue
            values[label] = evaluate(sig, history)
            shown = history[-max(WINDOW_SHOWN, rule.window):]
            start = len(history) - len(shown)
            window[label] = [[r.iteration, evaluate(sig, history[:start + i + 1])]
                             for i, r in enumerate(shown)]
        context = {"$value": fmt(value), "$trial": trial, "$iteration": str(now.iteration),
                   "$rule": rule.name, "$for": rule.hold.describe(),
                   "$budget": str(budget) if budget else "unknown"}
        summary = fill(rule.annotations.get("summary", ""), context, rule.labels, values)
        reason = sentence(rule, trial, now.iteration, budget, shadow, summary, value, streak)
        return Verdict(rule=rule.name, group=rule.group, failure=rule.failure,
                       action=rule.action, shadow=shadow, experiment=self.experiment,
                       trial=trial, iteration=now.iteration, budget=budget,
                       wall_time=wall_time if wall_time is not None else time.time(),
                       trial_time_s=now.time_s, expr=rule.expr, value=value, values=values,
                       window=window, held_reports=streak, summary=summary, reason=reason,
                       labels=dict(rule.labels))

    def state_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "budget": self.budget, "shadow": self.shadow,
                "trials": {t: self.trial_state(t) for t in self.trials}}

    def trial_state(self, trial: str) -> dict[str, Any]:
        s = self.trials[trial]
        return {"reports": [r.to_dict() for r in s.reports], "killed": s.killed}

    def load_trial_state(self, trial: str, data: dict[str, Any]) -> None:
        s = TrialState()
        s.reports = [Record.from_dict(r) for r in data["reports"]]
        s.killed = data.get("killed")
        self.trials[trial] = s

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trials = {}
        for trial, data in state.get("trials", {}).items():
            self.load_trial_state(trial, data)


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
        verb = "warned"
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
