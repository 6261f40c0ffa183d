"""Stopping policies evaluated offline on recorded trial histories, and their scoring.

A *trial* here is a recorded run: every result it reported (one per iteration, as Tune
receives them), its failure by design (``healthy`` or a failure kind), the iteration its
failure began (the *onset*) and the validation metric its experiment ranks on. Any population
fits: the held-out families (``bench.heldout``) or a project population read back from a
no-stopping run.

Policies see the results interleaved round-robin by iteration (every running trial's
iteration 1, then every one's iteration 2, ...), as a Tune run whose trials all run at once
would, and each trial is one of its *group*'s (family or experiment) trials:

* ``none``: no early stopping;
* ``heuristic``: ``heuristics.engine.RuleEngine``, as
  ``monitor.driver.scheduler.HeuristicScheduler`` uses it (one engine per experiment with its
  declared vocabulary; ``observe`` each flattened result; a kill verdict stops the trial);
* ``asha`` / ``median``: Ray Tune's ``ASHAScheduler`` and ``MedianStoppingRule`` (the settings of
  ``trainers.tune``), fed through ``on_trial_add``/``on_trial_result``/``on_trial_complete``
  with stub trials and a mock controller, on the group's metric and mode;
* ``heuristic+asha`` / ``heuristic+median``: the rules wrapping that scheduler, as
  ``TuneMonitor(scheduler=...)`` runs them: the rule engine sees every result first; a kill
  stops the trial (the scheduler is told the trial was removed), otherwise the scheduler
  decides. Stops are attributed to the rule or to the scheduler.

Truth and scoring (``label``, ``score``):

* a broken trial *really fails* when its final metric (the last report's, or the mean of the
  last ``tail`` reports for noisy metrics) is worse than every healthy trial's of its group
  (NaN is worse than anything); only those count for recall;
* a kill is *caught* when it stops a really failing trial at or after its onset; *premature*
  when it stops a broken trial before its onset (the rule fired on something else); a *false
  kill* when it stops a healthy trial;
* delay = stop iteration - onset; the *lead* over the quality metric = (first report from the
  onset on at which the trial's metric is worse than every healthy trial's at that same
  iteration) - stop iteration: positive means the kill came before the metric showed it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("none", "heuristic", "asha", "median", "heuristic+asha", "heuristic+median")


@dataclass
class Trial:
    """One recorded trial (a held-out history or a trial of a project population)."""

    name: str
    group: str  # truth compares within a group (a family, an experiment)
    failure: str  # "healthy" or the failure by design
    onset: int | None
    budget: int
    metric: str
    mode: str  # "min" or "max"
    results: list[dict[str, Any]]
    # The experiment's declaration (``heuristics.vocabulary.Vocabulary`` fields: role -> key,
    # validation, mode, gan_loss).
    vocabulary: dict[str, str] = field(default_factory=dict)


@dataclass
class Decision:
    stop: int | None = None  # the iteration whose result stopped it (None: ran to the end)
    by: str | None = None  # the rule or scheduler that stopped it
    reason: str = ""


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def worse(x: Any, ref: Any, mode: str) -> bool:
    """``x`` is worse than ``ref`` under ``mode``; a non-finite ``x`` is worse than anything."""
    if not finite(x):
        return True
    if not finite(ref):
        return False
    return x < ref if mode == "max" else x > ref


def flatten(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"health": {"layers": {...}}}`` -> ``{"health/layers/...": v}``, as Tune hands results
    to schedulers."""
    out: dict[str, Any] = {}
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


TRAINER_NAMES = {"train_loss": "loss", "generator_loss": "loss_g",
                 "discriminator_loss": "loss_d", "adversarial_loss": "loss_adv"}


def rule_engine(rules: list[Any], trial: Trial, shadow: bool = False
                ) -> tuple[Any, Callable[[dict[str, Any]], dict[str, Any]]]:
    """A ``RuleEngine`` for ``trial``'s group under its declared vocabulary, and the function
    that prepares a result for it (Tune's flattening).

    Engines that take a ``Vocabulary`` get the declaration; an older engine (rules over the
    trainers' own names) gets each declared key renamed to the trainers' name instead.
    """
    import inspect

    from heuristics.engine import RuleEngine

    if "vocabulary" in inspect.signature(RuleEngine).parameters:
        from heuristics.vocabulary import Vocabulary

        engine = RuleEngine(rules, trial.group, trial.budget, shadow,
                            vocabulary=Vocabulary(**trial.vocabulary))
        return engine, flatten
    renames = {key: TRAINER_NAMES[role] for role, key in trial.vocabulary.items()
               if role in TRAINER_NAMES}

    def renamed(result: dict[str, Any]) -> dict[str, Any]:
        return flatten({renames.get(k, k): v for k, v in result.items()})

    return RuleEngine(rules, trial.group, trial.budget, shadow), renamed


# -- truth ---------------------------------------------------------------------------------------
def final(trial: Trial, tail: int = 1) -> Any:
    """The trial's final quality: the mean of its last ``tail`` metric values (NaN if any of
    them is not finite; 1: the last report, as Tune's final result)."""
    values = [r.get(trial.metric) for r in trial.results[-tail:]]
    if not values:
        return None
    if not all(finite(v) for v in values):
        return float("nan")
    return sum(values) / len(values)


def label(trials: list[Trial], tail: int = 1) -> dict[str, dict[str, Any]]:
    """Per trial: final metric (``final(trial, tail)``), whether it really fails, and the first
    report (from its onset on) at which its metric is worse than every healthy trial's of its
    group."""
    healthy: dict[str, list[Trial]] = {}
    for t in trials:
        if t.failure == "healthy":
            healthy.setdefault(t.group, []).append(t)
    truth: dict[str, dict[str, Any]] = {}
    for t in trials:
        refs = [h for h in healthy.get(t.group, []) if h is not t]
        fails = (t.failure != "healthy" and bool(refs)
                 and all(worse(final(t, tail), final(h, tail), t.mode) for h in refs))
        quality = None
        if t.failure != "healthy" and refs:
            by_it = [{r["training_iteration"]: r.get(t.metric) for r in h.results} for h in refs]
            for r in t.results:
                it = r["training_iteration"]
                if t.onset is not None and it < t.onset:
                    continue
                others = [m[it] for m in by_it if it in m]
                if others and all(worse(r.get(t.metric), o, t.mode) for o in others):
                    quality = it
                    break
        truth[t.name] = {"final": final(t, tail), "really_fails": fails,
                         "quality_iteration": quality,
                         "healthy_finals": [final(h, tail) for h in refs]}
    return truth


# -- policies ------------------------------------------------------------------------------------
class Policy:
    """Sees every result of every trial; says whether to stop that trial."""

    name = ""

    def add(self, trial: Trial) -> None:
        pass

    def result(self, trial: Trial, result: dict[str, Any]) -> Decision | None:
        return None

    def complete(self, trial: Trial, result: dict[str, Any]) -> None:
        pass


class NoStopping(Policy):
    name = "none"


class Heuristic(Policy):
    """The rule engine exactly as the scheduler drives it: one engine per group (experiment,
    with its declared vocabulary), every flattened result observed, a kill verdict stops."""

    name = "heuristic"

    def __init__(self, rules: list[Any] | None = None) -> None:
        from heuristics.rules import load_rules

        self.rules = rules if rules is not None else load_rules(["builtin"])
        self.engines: dict[str, tuple[Any, Callable[[dict[str, Any]], dict[str, Any]]]] = {}

    def add(self, trial: Trial) -> None:
        if trial.group not in self.engines:
            self.engines[trial.group] = rule_engine(self.rules, trial)

    def result(self, trial: Trial, result: dict[str, Any]) -> Decision | None:
        engine, prepare = self.engines[trial.group]
        verdicts = engine.observe(trial.name, prepare(result), wall_time=0.0)
        kill = next((v for v in verdicts if v.stops), None)
        return Decision(kill.iteration, kill.rule, kill.reason) if kill else None


class RayScheduler(Policy):
    """A real Ray Tune scheduler per group, driven with stub trials and a mock controller."""

    def __init__(self, name: str, factory: Callable[[Trial], Any]) -> None:
        self.name = name
        self.factory = factory
        self.schedulers: dict[str, Any] = {}
        self.stubs: dict[str, Any] = {}
        from unittest.mock import MagicMock

        self.controller = MagicMock()
        self.controller.get_live_trials.return_value = []

    def add(self, trial: Trial) -> None:
        from ray.tune.experiment import Trial as TuneTrial

        if trial.group not in self.schedulers:
            self.schedulers[trial.group] = self.factory(trial)
        stub = TuneTrial("__fake", stub=True, trial_id=f"t{len(self.stubs):05d}")
        self.stubs[trial.name] = stub
        self.schedulers[trial.group].on_trial_add(self.controller, stub)

    def result(self, trial: Trial, result: dict[str, Any]) -> Decision | None:
        from ray.tune.schedulers import TrialScheduler

        action = self.schedulers[trial.group].on_trial_result(
            self.controller, self.stubs[trial.name], flatten(result))
        it = result["training_iteration"]
        if action == TrialScheduler.STOP:
            return Decision(it, self.name, f"{self.name} stopped it at iteration {it}")
        return None

    def complete(self, trial: Trial, result: dict[str, Any]) -> None:
        self.schedulers[trial.group].on_trial_complete(self.controller, self.stubs[trial.name],
                                                       flatten(result))


class Wrapped(Policy):
    """The rules first, then a Ray scheduler (``monitor.driver.scheduler.HeuristicScheduler`` with
    ``scheduler=``): a rule's kill removes the trial from the scheduler, as Tune does."""

    def __init__(self, rules: Heuristic, scheduler: RayScheduler) -> None:
        self.rules, self.scheduler = rules, scheduler
        self.name = f"heuristic+{scheduler.name}"

    def add(self, trial: Trial) -> None:
        self.rules.add(trial)
        self.scheduler.add(trial)

    def result(self, trial: Trial, result: dict[str, Any]) -> Decision | None:
        decision = self.rules.result(trial, result)
        if decision is not None and decision.stop is not None \
                and decision.stop < trial.budget:
            self.scheduler.schedulers[trial.group].on_trial_remove(
                self.scheduler.controller, self.scheduler.stubs[trial.name])
            return decision
        return self.scheduler.result(trial, result)

    def complete(self, trial: Trial, result: dict[str, Any]) -> None:
        self.scheduler.complete(trial, result)


def asha() -> RayScheduler:
    """``ASHAScheduler`` as ``trainers.tune`` configures it (grace 3, max_t = budget)."""
    import numpy as np
    from ray.tune.schedulers import ASHAScheduler

    np.random.seed(0)  # bracket choice (one bracket: deterministic anyway)
    return RayScheduler("asha", lambda t: ASHAScheduler(
        time_attr="training_iteration", metric=t.metric, mode=t.mode, max_t=t.budget,
        grace_period=3))


def median() -> RayScheduler:
    """``MedianStoppingRule`` as ``trainers.tune`` configures it (grace 3 iterations)."""
    from ray.tune.schedulers import MedianStoppingRule

    return RayScheduler("median", lambda t: MedianStoppingRule(
        time_attr="training_iteration", metric=t.metric, mode=t.mode, grace_period=3))


def make(name: str, rules: list[Any] | None = None) -> Policy:
    if name == "none":
        return NoStopping()
    if name == "heuristic":
        return Heuristic(rules)
    if name == "asha":
        return asha()
    if name == "median":
        return median()
    if name in ("heuristic+asha", "heuristic+median"):
        return Wrapped(Heuristic(rules), asha() if name.endswith("asha") else median())
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {name!r}")


def round_robin(trials: list[Trial]) -> Iterator[tuple[Trial, int]]:
    """``(trial, index of its result)`` by iteration, every trial's i-th result before any
    (i+1)-th, as Tune delivers results of trials that run side by side."""
    for i in range(max((len(t.results) for t in trials), default=0)):
        for t in trials:
            if i < len(t.results):
                yield t, i


def simulate(policy: Policy, trials: list[Trial]) -> dict[str, Decision]:
    """Feed every trial's results to ``policy`` round-robin by iteration. A stop at a trial's
    last iteration saves nothing (Tune completes the trial whatever a scheduler says), so it
    is no stop."""
    for t in trials:
        policy.add(t)
    decisions = {t.name: Decision() for t in trials}
    ended: set[str] = set()
    for t, i in round_robin(trials):
        if t.name in ended:
            continue
        result = t.results[i]
        decision = policy.result(t, result)
        if decision is not None and decision.stop is not None and decision.stop < t.budget:
            decisions[t.name] = decision
            ended.add(t.name)
        elif i == len(t.results) - 1:
            policy.complete(t, result)
            ended.add(t.name)
    return decisions


# -- scoring -------------------------------------------------------------------------------------
def _median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def score(policy: str, trials: list[Trial], decisions: dict[str, Decision],
          truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Kill quality of one policy's ``decisions`` (see the module docstring for the terms)."""
    rows = []
    for t in trials:
        d, tr = decisions[t.name], truth[t.name]
        stopped = d.stop is not None
        row = {"trial": t.name, "group": t.group, "failure": t.failure, "onset": t.onset,
               "budget": t.budget, "really_fails": tr["really_fails"], "final": tr["final"],
               "quality_iteration": tr["quality_iteration"], "stopped": stopped,
               "stop": d.stop, "by": d.by, "reason": d.reason,
               "iterations": d.stop if stopped else len(t.results)}
        broken = t.failure != "healthy"
        premature = stopped and broken and t.onset is not None and d.stop < t.onset
        row["outcome"] = ("false_kill" if stopped and not broken
                          else "premature" if premature
                          else "caught" if stopped and tr["really_fails"]
                          else "killed_recovered" if stopped
                          else "missed" if tr["really_fails"] else "ran")
        if row["outcome"] == "caught":
            if t.onset is not None:
                row["delay"] = d.stop - t.onset
                row["delay_pct_budget"] = 100.0 * row["delay"] / t.budget
            if tr["quality_iteration"] is not None:
                row["lead"] = tr["quality_iteration"] - d.stop
        rows.append(row)
    failing = [r for r in rows if r["really_fails"]]
    caught = [r for r in rows if r["outcome"] == "caught"]
    false = [r for r in rows if r["outcome"] == "false_kill"]
    premature = [r for r in rows if r["outcome"] == "premature"]
    used = sum(r["iterations"] for r in rows)
    full = sum(r["budget"] for r in rows)
    kills = len(caught) + len(false) + len(premature)
    leads = [r["lead"] for r in caught if "lead" in r]
    modes = {t.group: t.mode for t in trials}
    best_kept = 0
    for group, mode in modes.items():  # did the group's best trial (by final) run to the end?
        members = [r for r in rows if r["group"] == group and finite(r["final"])]
        if members:
            best = (max if mode == "max" else min)(members, key=lambda r: r["final"])
            best_kept += not best["stopped"]
    return {
        "policy": policy, "trials": rows, "trial_iterations": used, "budget_iterations": full,
        "saved_pct": 100.0 * (full - used) / full if full else 0.0,
        "healthy": sum(r["failure"] == "healthy" for r in rows),
        "broken": sum(r["failure"] != "healthy" for r in rows),
        "really_failing": len(failing), "caught": len(caught),
        "recall": len(caught) / len(failing) if failing else None,
        "false_kills": len(false), "premature_kills": len(premature),
        "killed_recovered": sum(r["outcome"] == "killed_recovered" for r in rows),
        "precision": len(caught) / kills if kills else None,
        "median_delay_iterations": _median(r["delay"] for r in caught if "delay" in r),
        "median_delay_pct_budget": _median(r["delay_pct_budget"] for r in caught
                                           if "delay_pct_budget" in r),
        "median_lead": _median(leads),
        "kills_before_quality": sum(v > 0 for v in leads),
        "groups": len(modes), "best_kept": best_kept,
        "false_kill_trials": [f"{r['trial']} ({r['by']} at {r['stop']})" for r in false],
        "premature_trials": [f"{r['trial']} ({r['by']} at {r['stop']}, onset {r['onset']})"
                             for r in premature],
    }


def evaluate(trials: list[Trial], policies: Iterable[str] = POLICIES,
             rules: list[Any] | None = None, tail: int = 1) -> dict[str, Any]:
    """Truth labels (``label(trials, tail)``) and every policy's score on ``trials``."""
    truth = label(trials, tail)
    return {"truth": truth,
            "policies": [score(p, trials, simulate(make(p, rules), trials), truth)
                         for p in policies]}


def by_group(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One policy's score split by group (family/experiment): recall, false kills, delays."""
    out: dict[str, dict[str, Any]] = {}
    for r in result["trials"]:
        g = out.setdefault(r["group"], {"failing": 0, "caught": 0, "false_kills": 0,
                                        "premature": 0, "delays": [], "leads": []})
        g["failing"] += r["really_fails"]
        g["caught"] += r["outcome"] == "caught"
        g["false_kills"] += r["outcome"] == "false_kill"
        g["premature"] += r["outcome"] == "premature"
        if "delay" in r:
            g["delays"].append(r["delay"])
        if "lead" in r:
            g["leads"].append(r["lead"])
    return out


def rule_firings(trials: list[Trial], rules: list[Any] | None = None
                 ) -> dict[str, list[dict[str, Any]]]:
    """Per trial, every rule that would fire (shadow mode: nothing stops), with the iteration
    it first fires at and its value then - to see which rule catches or false-kills what.
    One engine per group, fed round-robin by iteration as ``simulate`` does, so that rules
    comparing a trial with its siblings (``peer_zscore``) see them."""
    from heuristics.rules import load_rules

    rules = rules if rules is not None else load_rules(["builtin"])
    engines: dict[str, tuple[Any, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
    first: dict[str, dict[str, dict[str, Any]]] = {t.name: {} for t in trials}
    for t in trials:
        if t.group not in engines:
            engines[t.group] = rule_engine(rules, t, shadow=True)
    for t, i in round_robin(trials):
        engine, prepare = engines[t.group]
        for v in engine.observe(t.name, prepare(t.results[i]), wall_time=0.0):
            if v.rule not in first[t.name]:
                values = {k: x for k, x in (v.values or {}).items()
                          if isinstance(x, (int, float))}
                first[t.name][v.rule] = {"rule": v.rule, "action": v.action,
                                         "iteration": v.iteration, "value": v.value,
                                         "values": values, "summary": v.summary}
    return {name: sorted(f.values(), key=lambda f: f["iteration"]) for name, f in first.items()}


def trials_from_store(path: Any, group: str, metric: str, mode: str, budget: int,
                      failure_of: Callable[[dict[str, Any]], str],
                      onset_of: Callable[[str, list[dict[str, Any]]], int | None],
                      vocabulary: dict[str, str] | None = None,
                      name_of: Callable[[dict[str, Any]], str] | None = None) -> list[Trial]:
    """The trials of a recorded no-stopping run (a ``monitor.store.RunStore`` directory), e.g.
    the in-sample master/student populations of ``bench.kill``: ``failure_of(trial row)``
    gives the failure by design (``bench.kill.EXPECTED`` of its variant), ``onset_of(failure,
    results)`` its onset (``bench.kill.onset``)."""
    from monitor.store import RunStore

    out = []
    with RunStore(path, create=False) as store:
        for row in store.trials():
            results = store.results(row["trial_id"])
            failure = failure_of(row)
            onset = onset_of(failure, results) if failure != "healthy" else None
            name = name_of(row) if name_of else str(row["trial_id"])
            out.append(Trial(f"{group}/{name}", group, failure, onset, budget, metric, mode,
                             results, dict(vocabulary or {})))
    return out
