"""Rules over signals that never come: said out loud, never a silent no-op.

Three checks. ``undeclared(rules, vocabulary)`` at run start: a rule naming a role
(``discriminator_loss``...) that the experiment's vocabulary does not map to a reported key.
``SignalCoverage`` while trials run: once a trial has made ``after`` reports, every signal a
rule names that the trial never reported (a misspelled key, another team's loss name, power
without ``observe_output``) is reported once per run, and so is every key the vocabulary
declares that the trial never reported (with the closest keys it did report); and a
population rule (``peer_zscore``) that cannot compare a trial with its siblings after its
grace (fewer than ``MIN_PEERS`` other trials have reported that iteration: a small sweep, the
first trials of a sweep run a few at a time, the survivors once siblings were stopped) is
reported once per run, at the first report where it happens.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from heuristics.expr import (
    DERIVED_SIGNALS,
    LAYER_SIGNALS,
    MIN_PEERS,
    MODEL_SIGNALS,
    PEER_LAG,
    PEERS,
    Call,
    Signal,
    walk,
)
from heuristics.rules import BUILTIN_DIR, Rule
from heuristics.vocabulary import ROLES, Vocabulary

HINTS = {
    **{s: "measured by monitor.attach(model) on activation layers" for s in LAYER_SIGNALS},
    **{s: "measured only when the training calls observe_output(output, target) or "
          "observe_power(...)" for s in MODEL_SIGNALS},
}


def rule_signals(rule: Rule) -> list[str]:
    """The names a rule reads: signals, roles, reported keys and ``result("key")`` keys."""
    names: list[str] = []
    for node in walk(rule.tree):
        name = node.name if isinstance(node, Signal) else (
            node.args[0] if isinstance(node, Call) and node.fn == "result" else None)
        if name is not None and name not in names:
            names.append(name)
    return names


@dataclass(frozen=True)
class Notice:
    """A rule that cannot see one of its signals."""

    rule: str
    signal: str
    message: str


def _missing(rule: Rule, vocabulary: Vocabulary) -> tuple[list[str], bool]:
    """The roles ``rule`` names that ``vocabulary`` leaves undeclared, and whether that leaves
    it nothing to fire on (it reads no declared role, reported key or health signal)."""
    names = rule_signals(rule)
    missing = [s for s in names if s in ROLES and not vocabulary.declares(s)]
    if "quality" in names and not vocabulary.declares("validation"):  # derived from it
        missing.append("validation")
        names = [n for n in names if n != "quality"] + ["validation"]
    never = bool(missing) and len(missing) == len(
        [s for s in names if s not in LAYER_SIGNALS and s not in MODEL_SIGNALS]) \
        and not _reads_health(rule)
    return missing, never


def undeclared(rules: Iterable[Rule], vocabulary: Vocabulary, experiment: str) -> list[Notice]:
    """Rules naming a role that ``vocabulary`` leaves undeclared.

    A user's rule gets a notice for every such role (likely a mistake). A built-in rule gets
    one only when it can never fire (a GAN rule on a training without a discriminator is
    expected; its other arms still work).
    """
    out = []
    experiment = experiment or "(this experiment)"
    for rule in rules:
        missing, never = _missing(rule, vocabulary)
        if not missing:
            continue
        if _builtin(rule):
            if never:
                out.append(Notice(rule.name, ",".join(missing), (
                    f"built-in rule {rule.name} cannot fire: experiment {experiment} declares "
                    f"none of {', '.join(missing)}.")))
            continue
        effect = "it can never fire" if never else \
            "the parts of it that read this signal never hold"
        for signal in missing:
            out.append(Notice(rule.name, signal, (
                f"rule {rule.name} refers to signal {signal!r} ({ROLES[signal]}), which "
                f"experiment {experiment} does not declare: {effect}. Declare it (e.g. "
                f"Vocabulary({signal}=\"<your metric key>\")) or leave the rule out.")))
    return out


GAN_ROLES = ("generator_loss", "discriminator_loss", "adversarial_loss")


@dataclass(frozen=True)
class Applicability:
    """Which rules of a run can act on its vocabulary and experiment: ``apply`` (names);
    ``cannot``: built-in rules that can never fire here, grouped by why (``{why: names}``);
    ``yours``: rules a user wrote that can never fire, each named by ``notices``;
    ``elsewhere``: rules whose file names other experiments; ``notices``: one per user rule
    (and role) that cannot see a declared role, as ``undeclared`` gives them."""

    total: int
    apply: tuple[str, ...]
    cannot: dict[tuple[str, str], tuple[str, ...]]
    yours: tuple[str, ...]
    elsewhere: tuple[str, ...]
    notices: tuple[Notice, ...]

    def line(self) -> str:
        """One line: "14 rules, 6 apply: ...; 8 cannot fire here: GAN rules (...) ..."."""
        parts = [f"{self.total} rule{'s' if self.total != 1 else ''}, {len(self.apply)} "
                 f"appl{'ies' if len(self.apply) == 1 else 'y'}"
                 + (f": {', '.join(self.apply)}" if self.apply else "")]
        n = sum(len(v) for v in self.cannot.values()) + len(self.yours)
        if n:
            why = [f"{kind}{', '.join(names)} ({reason})"
                   for (kind, reason), names in self.cannot.items()]
            if self.yours:
                why.append(f"yours: {', '.join(self.yours)} (see the warnings)")
            parts.append(f"{n} cannot fire here: {'; '.join(why)}")
        if self.elsewhere:
            parts.append(f"{len(self.elsewhere)} for other experiments (their file's "
                         f"experiments: list): {', '.join(self.elsewhere)}")
        return "; ".join(parts)


def applicability(rules: Iterable[Rule], vocabulary: Vocabulary,
                  experiment: str = "") -> Applicability:
    """Sort ``rules`` into those that can act for ``experiment`` with ``vocabulary`` and those
    that cannot, and say why (``Applicability.line()`` for the start of a run)."""
    rules = list(rules)
    apply: list[str] = []
    cannot: dict[tuple[str, str], list[str]] = {}
    yours: list[str] = []
    elsewhere: list[str] = []
    for rule in rules:
        if not rule.for_experiment(experiment):
            elsewhere.append(rule.name)
            continue
        if not rule.applies(vocabulary):
            want = ", ".join(f"{k}: {v}" for k, v in rule.requires.items())
            cannot.setdefault(("", f"written for {want}"), []).append(rule.name)
            continue
        missing, never = _missing(rule, vocabulary)
        if not never:
            apply.append(rule.name)
        elif not _builtin(rule):
            yours.append(rule.name)
        else:
            gan = all(role in GAN_ROLES for role in missing)
            roles = [r for r in GAN_ROLES if not vocabulary.declares(r)] if gan else missing
            why = f"no {', '.join(roles[:-1])}{' or ' if len(roles) > 1 else ''}{roles[-1]} " \
                  "declared"
            cannot.setdefault(("GAN rules " if gan else "", why), []).append(rule.name)
    notices = tuple(n for n in undeclared([r for r in rules if r.for_experiment(experiment)
                                           and r.applies(vocabulary)], vocabulary, experiment)
                    if not _builtin_name(rules, n.rule))
    return Applicability(len(rules), tuple(apply), {k: tuple(v) for k, v in cannot.items()},
                         tuple(yours), tuple(elsewhere), notices)


def _builtin_name(rules: list[Rule], name: str) -> bool:
    return any(r.name == name and _builtin(r) for r in rules)


def _builtin(rule: Rule) -> bool:
    return rule.source.startswith(str(BUILTIN_DIR))


def _reads_health(rule: Rule) -> bool:
    return any(s in LAYER_SIGNALS or s in MODEL_SIGNALS for s in rule_signals(rule))


def population_rules(rules: Iterable[Rule], vocabulary: Vocabulary) -> list[Rule]:
    """Rules with a ``peer_zscore`` whose input the vocabulary declares (one it does not
    declare gets the ``undeclared`` notice instead), except rules that say what to do
    without siblings (``absent(peer_zscore(x)) or ...``: they act either way)."""
    out = []
    for rule in rules:
        peers = [n for n in walk(rule.tree) if isinstance(n, Call) and n.fn in PEERS]
        fallback = any(isinstance(n, Call) and n.fn == "absent"
                       and any(isinstance(m, Call) and m.fn in PEERS for m in walk(n))
                       for n in walk(rule.tree))
        if peers and not fallback and all(
                vocabulary.declares("validation" if n.name == "quality" else n.name)
                or n.name not in (*ROLES, "quality")
                for p in peers for n in walk(p) if isinstance(n, Signal)):
            out.append(rule)
    return out


class SignalCoverage:
    """Tracks which signals each trial has reported; names the ones rules wait for in vain,
    and the population rules that find too few siblings to act."""

    def __init__(self, rules: Iterable[Rule], vocabulary: Vocabulary, after: int = 5,
                 budget: int | None = None) -> None:
        if after < 1:
            raise ValueError(f"after must be a positive number of reports, got {after}")
        rules = list(rules)
        self.after = after
        self.vocabulary = vocabulary
        # population rules not yet reported, with the first iteration they may fire at
        self.population = {r.name: r.grace.first_iteration(budget)
                           for r in population_rules(rules, vocabulary)}
        self._reached: list[int] = [0]  # [k]: trials that have made at least k reports
        # Built-in rules over audio power are opt-in (observe_output): no notice for those.
        self.wanted = {r.name: [s for s in rule_signals(r)
                                if (s not in ROLES or vocabulary.declares(s))
                                and not (_builtin(r) and (s in MODEL_SIGNALS
                                                          or s in DERIVED_SIGNALS))]
                       for r in rules}
        self._seen: dict[str, set[str]] = {}
        self._reports: dict[str, int] = {}
        self._said: set[tuple[str, str]] = set()

    def observe(self, trial: str, layers: dict[str, dict[str, float]],
                scalars: Iterable[str]) -> list[Notice]:
        """Take one report's signals (``Observation.layers`` and ``.scalars()``); after the
        ``after``-th report of a trial, the new notices."""
        n = self._reports[trial] = self._reports.get(trial, 0) + 1
        if n >= len(self._reached):
            self._reached.append(0)
        self._reached[n] += 1
        out = self._population(trial, n) if self.population else []
        if n > self.after:
            return out  # signals: decided at the ``after``-th report
        seen = self._seen.setdefault(trial, set())
        for signals in layers.values():
            seen.update(signals)
        seen.update(scalars)
        if n != self.after:
            return out
        out += self._undelivered(trial, seen, n)
        for rule, signals in self.wanted.items():
            for signal in signals:
                if signal in seen or (rule, signal) in self._said:
                    continue
                self._said.add((rule, signal))
                key = self.vocabulary.keys().get(signal)
                what = f"signal {signal!r}" + (f" (reported key {key!r})" if key else "")
                hint = HINTS.get(signal, "check the spelling against the keys the training "
                                 "reports")
                out.append(Notice(rule, signal, (
                    f"rule {rule} refers to {what}, which trial {trial} has not reported in "
                    f"its first {n} reports ({hint}); the rule cannot fire on it.")))
        return out

    def _undelivered(self, trial: str, seen: set[str], n: int) -> list[Notice]:
        """Declared roles whose key ``trial`` has not reported in its first ``n`` reports (a
        misspelled key), each with the closest keys it did report; once per run."""
        out = []
        for role, key in self.vocabulary.keys().items():
            if role in seen or ("vocabulary", role) in self._said:
                continue
            self._said.add(("vocabulary", role))
            reported = sorted(k for k in seen if k not in ROLES and k not in LAYER_SIGNALS
                              and k not in MODEL_SIGNALS)
            close = difflib.get_close_matches(key, reported, n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close else
                    f"it reported {', '.join(repr(k) for k in reported[:12])}"
                    + (f" and {len(reported) - 12} more" if len(reported) > 12 else ""))
            out.append(Notice("vocabulary", role, (
                f"{role}={key!r} is declared, but trial {trial} has not reported {key!r} in "
                f"its first {n} reports; {hint} Rules reading {role} cannot fire on it.")))
        return out

    def _population(self, trial: str, n: int) -> list[Notice]:
        """Population rules past their grace at ``trial``'s ``n``-th report that find fewer
        than MIN_PEERS other trials with a report at ``n - PEER_LAG`` or later."""
        first = max(1, n - PEER_LAG)
        others = self._reached[first] - 1  # this trial has reached it too
        if others >= MIN_PEERS:
            return []
        out = []
        for rule, grace in list(self.population.items()):
            if n < grace:
                continue
            del self.population[rule]
            self._said.add((rule, "siblings"))
            out.append(Notice(rule, "siblings", (
                f"population rule {rule} cannot compare trial {trial} with its siblings at "
                f"iteration {n}: {others} other trial{'s' if others != 1 else ''} reported "
                f"iteration {first} or later, it needs {MIN_PEERS}; its evidence is absent "
                f"there. It acts on a trial only where at least {MIN_PEERS} other trials of "
                f"the experiment have reported the same iteration: trials that ran earlier "
                f"count (in a sweep run a few at a time only its first trials lack them), "
                f"stopped ones only up to where they stopped; a sweep of fewer than "
                f"{MIN_PEERS + 1} trials never has them.")))
        return out
