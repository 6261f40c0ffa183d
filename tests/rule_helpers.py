"""Helpers shared by the rule tests: a one-rule file, a population fed to an engine as Tune
would, and the recorded real trainings of a held-out split replayed under a policy."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from heuristics.engine import RuleEngine
from heuristics.rules import load_rules


def rule(expr: str, hold: int = 1, grace: int | str = 0, action: str = "kill") -> list[Any]:
    """One rule ``r`` (group ``g``) loaded from a YAML file, as a user would write it."""
    path = Path(tempfile.mkdtemp()) / "rule.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"name": "r", "expr": expr, "for": hold, "grace": grace,
         "labels": {"action": action, "failure": "test_failure"}}]}]}))
    return load_rules([str(path)])


def feed(engine: RuleEngine, population: dict[str, list[dict[str, Any]]],
         order: str = "round-robin") -> dict[str, tuple[str, int]]:
    """Feed ``population``'s results (round-robin by iteration, or one trial after another);
    return the first stopping verdict of each trial as (rule, iteration)."""
    stops: dict[str, tuple[str, int]] = {}
    if order == "round-robin":
        steps = [(t, r) for i in range(max(map(len, population.values())))
                 for t, rs in population.items() if i < len(rs) for r in [rs[i]]]
    else:
        steps = [(t, r) for t, rs in population.items() for r in rs]
    for trial, result in steps:
        for v in engine.observe(trial, result, wall_time=0.0):
            if v.stops and trial not in stops:
                stops[trial] = (v.rule, v.iteration)
    return stops


def recorded(family: str, split: str) -> list[Any]:
    """The recorded histories of ``family`` in held-out ``split`` (in the repository)."""
    from bench.heldout.__main__ import as_trial
    from bench.heldout.population import History, split_dir

    directory = split_dir(split) / "histories"
    return [as_trial(History.from_dict(json.loads(p.read_text())))
            for p in sorted(directory.glob(f"{family}__*.json"))]


def heuristic_stops(trials: list[Any], rules: list[Any]) -> dict[str, tuple[str, int]]:
    """(rule, iteration) of every trial the heuristic policy stops, replayed round-robin."""
    from bench import policies

    decisions = policies.simulate(policies.make("heuristic", rules), trials)
    return {name: (d.by, d.stop) for name, d in decisions.items() if d.stop is not None}
