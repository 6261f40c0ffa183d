"""A run's rule set that changes while the run goes on: armed rules act, shadow rules record.

The rules a run starts with are revision 1, evaluated by one ``RuleEngine`` (the *base*). A rule
applied later gets an engine of its own (a *lane*), so that its state can be built by replaying
the recorded history before it joins, and so that two versions of one rule (the armed one and a
candidate with another threshold) are evaluated side by side without sharing a streak. Rules
are isolated in the engine (a rule's verdicts are the same alone as in any set), so a lane
gives exactly the verdicts the rule would give among the others.

Per rule name there is at most one armed version and one shadow candidate. A candidate records
its would-be kills and warnings (``shadow``) and stops nothing; ``arm`` makes it the acting
version (the version it replaces is dropped), ``retire`` drops a version. Every accepted change
is a new revision, and every verdict carries its rule's version (content hash) and the revision.
The whole class does no I/O: the driver (``monitor.driver.rulechanges``) records and persists
changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heuristics.engine import RuleEngine, Verdict
from heuristics.rules import Rule, rule_version

ARMED, SHADOW = "armed", "shadow"


@dataclass
class Lane:
    """One rule applied while the run went on, with its own engine."""

    rule: Rule
    version: str
    engine: RuleEngine
    revision: int  # the revision that applied it
    mode: str = SHADOW


class RuleSet:
    """The base engine plus the lanes of rules applied since; evaluates them all per result."""

    def __init__(self, base: RuleEngine) -> None:
        self.base = base
        self.lanes: list[Lane] = []
        self.revision = 1

    # -- evaluation -------------------------------------------------------------------------
    def engines(self) -> list[RuleEngine]:
        return [self.base, *(lane.engine for lane in self.lanes)]

    def killed(self, trial: str) -> dict[str, Any] | None:
        """The verdict that stopped ``trial``, whichever armed rule gave it."""
        for engine in self.engines():
            kill = engine.killed(trial)
            if kill is not None:
                return kill
        return None

    def kills(self) -> list[dict[str, Any]]:
        return [k for t in self.base.trials if (k := self.killed(t)) is not None]

    def observe(self, trial: str, result: dict[str, Any],
                wall_time: float | None = None) -> list[Verdict]:
        """Every engine's verdicts on one result, the first stopping one first; only one kill
        stands (the others' engines record it as theirs, so that all agree)."""
        if self.killed(trial) is not None:
            return []
        verdicts = [v for engine in self.engines()
                    for v in engine.observe(trial, result, wall_time)]
        kills = [v for v in verdicts if v.stops]
        if len(kills) > 1:
            first = kills[0].to_dict()
            for engine in self.engines():
                state = engine.trials.get(trial)
                if state is not None and state.killed is not None:
                    state.killed = first
            verdicts = [v for v in verdicts if not v.stops or v is kills[0]]
        verdicts.sort(key=lambda v: not v.stops)
        return verdicts

    # -- changes ----------------------------------------------------------------------------
    def new_lane(self, rule: Rule) -> Lane:
        """An engine for ``rule`` as a shadow candidate of the next revision; it joins the set
        only with ``install`` (after its history has been replayed into it)."""
        engine = RuleEngine([rule], self.base.experiment, self.base.budget, self.base.shadow,
                            self.base.vocabulary)
        engine.candidate = True
        engine.revision = self.revision + 1
        return Lane(rule, rule_version(rule), engine, self.revision + 1)

    def versions(self, name: str) -> dict[str, str]:
        """``{mode: version}`` of rule ``name`` now (armed and/or shadow)."""
        out = {}
        if any(r.name == name for r in self.base.rules):
            out[ARMED] = self.base.versions[name]
        for lane in self.lanes:
            if lane.rule.name == name:
                out[lane.mode] = lane.version
        return out

    def install(self, lanes: list[Lane]) -> int:
        """Add candidate lanes (a candidate of the same name is replaced); a new revision."""
        names = {lane.rule.name for lane in lanes}
        self.lanes = [x for x in self.lanes if not (x.mode == SHADOW and x.rule.name in names)]
        self.lanes.extend(lanes)
        return self._bump()

    def arm(self, name: str) -> tuple[str, str | None]:
        """Make the candidate of ``name`` act; return (its version, the version it replaced).
        ``KeyError`` when ``name`` has no candidate."""
        lane = next((x for x in self.lanes if x.rule.name == name and x.mode == SHADOW), None)
        if lane is None:
            raise KeyError(name)
        replaced = self.versions(name).get(ARMED)
        self._drop(name, ARMED)
        lane.mode = ARMED
        lane.engine.candidate = False
        self._bump()
        return lane.version, replaced

    def retire(self, name: str, mode: str) -> str:
        """Drop the ``mode`` version of ``name``; return its version (``KeyError`` if none)."""
        version = self.versions(name).get(mode)
        if version is None:
            raise KeyError(name)
        self._drop(name, mode)
        self._bump()
        return version

    def _drop(self, name: str, mode: str) -> None:
        if mode == ARMED and any(r.name == name for r in self.base.rules):
            self.base.drop(name)
        self.lanes = [x for x in self.lanes if not (x.rule.name == name and x.mode == mode)]

    def _bump(self) -> int:
        self.revision += 1
        for engine in self.engines():
            engine.revision = self.revision
        return self.revision

    def describe(self) -> list[dict[str, Any]]:
        """Every rule evaluated now: name, version, mode, the revision that applied it."""
        out = [{"rule": r.name, "version": self.base.versions[r.name], "mode": ARMED,
                "revision": 1, "action": r.action, "failure": r.failure, "expr": r.expr}
               for r in self.base.rules]
        out += [{"rule": x.rule.name, "version": x.version, "mode": x.mode,
                 "revision": x.revision, "action": x.rule.action, "failure": x.rule.failure,
                 "expr": x.rule.expr} for x in self.lanes]
        return out
