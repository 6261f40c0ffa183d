"""Rule files: YAML modelled on Prometheus alerting rules, loaded safely and fully validated.

::

    groups:
      - name: relu_health
        rules:
          - name: dead_relu_collapse
            expr: max(dead_ratio) >= 0.99 or fraction(dead_ratio > 0.9) >= 0.5
            for: 2          # reports in a row (or a duration of trial time: 90s, 10m, 1h)
            grace: 2        # no action before this iteration (or a share of the budget: 10%;
                            # or the later of both: "5 or 20%")
            labels:
              action: kill  # kill | warn
              failure: dead_relu_collapse
            annotations:
              summary: "{{ $value }} of the units of a layer never fire"

``load_rules(sources)`` takes ``builtin`` and any files or directories; every problem in every
file is collected (file, line, rule, what was expected) and raised together as ``RuleErrors``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heuristics.expr import (
    MAX_WINDOW,
    WINDOWS,
    Call,
    ExprError,
    Node,
    max_window,
    parse,
    span,
    walk,
)
from heuristics.yamlfile import ConfigError, line_of, load_yaml, load_yaml_text

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_CUSTOM_DIR = Path(__file__).parent / "custom"


def custom_dir() -> Path:
    """Where the ``custom`` rule source looks: ``$MONITOR_CUSTOM_RULES``, else
    ``heuristics/custom`` under the current directory when it exists (a checkout, or a
    project of one's own), else the package's own (empty) folder."""
    configured = os.environ.get("MONITOR_CUSTOM_RULES", "").strip()
    if configured:
        return Path(configured)
    local = Path.cwd() / "heuristics" / "custom"
    return local if local.is_dir() else DEFAULT_CUSTOM_DIR



ACTIONS = ("kill", "warn")
TOP_KEYS = {"groups", "experiments"}
# ``experiments``: globs of the experiment names a file's rules apply to (``[cnn_*, mlp]``);
# a run of any other experiment leaves them out (every loader: the engine filters them).
MAX_GLOBS = 100
RULE_KEYS = {"name", "expr", "for", "grace", "labels", "annotations", "requires"}
# ``requires``: settings of the experiment's vocabulary a rule is written for, e.g.
# ``requires: {gan_loss: lsgan}``: elsewhere the engine leaves the rule out.
REQUIREMENTS = {"gan_loss": ("lsgan", "hinge", "wasserstein", "bce"), "mode": ("min", "max")}
GROUP_KEYS = {"name", "rules"}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)$")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
PLACEHOLDER = re.compile(r"\{\{\s*(\$[A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
PLACEHOLDERS = {"$value", "$trial", "$iteration", "$rule", "$for", "$budget", "$validation",
                "$best"}
MAX_REPORTS = 1_000_000  # for: and grace: in reports/iterations
MAX_SECONDS = 365 * 24 * 3600.0


@dataclass(frozen=True)
class Hold:
    """How long a condition must hold: ``reports`` in a row, or ``seconds`` of trial time."""

    reports: int = 1
    seconds: float | None = None

    def describe(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds:g} s of training time"
        return f"{self.reports} report{'s' if self.reports != 1 else ''} in a row"


@dataclass(frozen=True)
class Grace:
    """No action before ``iterations``, nor before ``fraction`` of the trial's budget (the
    later of the two; without a known budget, ``iterations`` alone)."""

    iterations: int = 0
    fraction: float | None = None

    def first_iteration(self, budget: int | None) -> int:
        if self.fraction is not None and budget:
            return max(self.iterations, int(round(self.fraction * budget)))
        return self.iterations


@dataclass
class Rule:
    name: str
    group: str
    expr: str
    tree: Node
    hold: Hold
    grace: Grace
    labels: dict[str, str]
    annotations: dict[str, str]
    source: str
    line: int | None
    requires: dict[str, str] = field(default_factory=dict)
    experiments: tuple[str, ...] = ()
    window: int = field(init=False)

    def __post_init__(self) -> None:
        self.window = max_window(self.tree)

    @property
    def action(self) -> str:
        return self.labels["action"]

    @property
    def failure(self) -> str:
        return self.labels["failure"]

    def applies(self, vocabulary: Any) -> bool:
        """Whether an experiment with ``vocabulary`` meets this rule's ``requires``."""
        return all(getattr(vocabulary, key, None) == value
                   for key, value in self.requires.items())

    def for_experiment(self, experiment: str) -> bool:
        """Whether its file's ``experiments`` globs (none: every experiment) match
        ``experiment``; an engine given no experiment name keeps every rule."""
        return not self.experiments or not experiment or any(
            fnmatch.fnmatchcase(experiment, glob) for glob in self.experiments)


class RuleErrors(ValueError):
    """Every problem found in a rule set; ``errors`` are ``ConfigError``s with file and line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _shown(value: Any) -> str:
    """A user's value in a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}... ({len(text)} characters)"


def parse_hold(value: Any) -> Hold:
    expected = "for: expected a number of reports or a duration like 90s, 10m, 1h"
    if value is None:
        return Hold()
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{expected}; got {_shown(value)}")
    if isinstance(value, str) and len(value) > 32:
        raise ValueError(f"{expected} (at most 32 characters); got {_shown(value)}")
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip(), re.ASCII):
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value <= MAX_REPORTS:
            raise ValueError(f"for: expected a number of reports from 0 to {MAX_REPORTS}, got "
                             f"{_shown(value)}")
        return Hold(reports=max(value, 1))
    m = DURATION.match(value.strip())
    if m:
        seconds = float(m.group(1)) * UNITS[m.group(2)]
        if seconds <= MAX_SECONDS:
            return Hold(reports=1, seconds=seconds)
        raise ValueError(f"for: expected a duration of at most {MAX_SECONDS:.0f}s (a year); got "
                         f"{_shown(value)}")
    raise ValueError(f"{expected}; got {_shown(value)}")


def window_reads(tree: Node) -> int:
    """Earlier reports a rule's windows read at each report, all together: a window reads its
    span (``change`` one report), and a window inside another is computed once per report,
    so nested windows add up rather than multiply."""
    return sum(1 if n.fn == "change" else span(n) for n in walk(tree)
               if isinstance(n, Call) and n.fn in WINDOWS)


def parse_grace(value: Any) -> Grace:
    expected = ("grace: expected a whole number of iterations >= 0, a share of the budget "
                "like 10%, or both like \"5 or 20%\" (the later of the two)")
    if value is None:
        return Grace()
    if isinstance(value, str) and len(value) <= 32 and " or " in value:
        parts = [part.strip() for part in value.split(" or ")]
        first, second = parts if len(parts) == 2 else ("", "")
        if first.isdigit() and second.endswith("%") and " or " not in second:
            return Grace(parse_grace(int(first)).iterations, parse_grace(second).fraction)
        raise ValueError(f"{expected}; got {_shown(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if value > MAX_REPORTS:
            raise ValueError(f"grace: expected at most {MAX_REPORTS} iterations, got "
                             f"{_shown(value)}")
        return Grace(iterations=value)
    if isinstance(value, str) and len(value) <= 32 and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            pct = -1.0
        if 0 <= pct <= 100:
            return Grace(fraction=pct / 100)
    raise ValueError(f"{expected}; got {_shown(value)}")


def _load_file(path: Path, errors: list[ConfigError], text: str | None = None) -> list[Rule]:
    try:
        data, lines = load_yaml(path) if text is None else load_yaml_text(text, path)
    except ConfigError as exc:
        errors.append(exc)
        return []

    def err(key_path: tuple, rule: str | None, message: str) -> None:
        prefix = f"rule {rule!r}: " if rule else ""
        errors.append(ConfigError(path, line_of(lines, key_path), prefix + message))

    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        err((), None, "expected a mapping with a 'groups' list (Prometheus rule-file layout)")
        return []
    for key in data:
        if key not in TOP_KEYS:
            err((key,), None, f"unknown top-level key {key!r}; expected 'groups' or "
                "'experiments'")
    experiments: tuple[str, ...] = ()
    if "experiments" in data:
        try:
            experiments = parse_experiments(data["experiments"])
        except ValueError as exc:
            err(("experiments",), None, str(exc))
    rules: list[Rule] = []
    for gi, group in enumerate(data["groups"]):
        gp = ("groups", gi)
        if not isinstance(group, dict):
            err(gp, None, f"groups[{gi}]: expected a mapping with 'name' and 'rules'")
            continue
        for key in group:
            if key not in GROUP_KEYS:
                err((*gp, key), None, f"unknown group key {key!r}; expected one of "
                    f"{sorted(GROUP_KEYS)}")
        gname = group.get("name")
        if not isinstance(gname, str) or not gname:
            err(gp, None, f"groups[{gi}]: expected a 'name'")
            gname = f"groups[{gi}]"
        if not isinstance(group.get("rules"), list):
            err(gp, None, f"group {gname!r}: expected a 'rules' list")
            continue
        for ri, raw in enumerate(group["rules"]):
            rp = (*gp, "rules", ri)
            rule = _parse_rule(raw, gname, path, lines, rp, err)
            if rule is not None:
                rule.experiments = experiments
                rules.append(rule)
    return rules


def parse_experiments(value: Any) -> tuple[str, ...]:
    """A rule file's ``experiments``: a non-empty list of experiment names or globs
    (``fnmatch``: ``*``, ``?``, ``[...]``); ``ValueError`` (one line) otherwise."""
    expected = ("experiments: expected a list of experiment names or globs, e.g. "
                "[cnn_sweep, \"gan_*\"]")
    if isinstance(value, str):
        raise ValueError(f"{expected} (a list, even of one); got {_shown(value)}")
    if not isinstance(value, list) or not value:
        raise ValueError(f"{expected}; got {_shown(value)}")
    if len(value) > MAX_GLOBS:
        raise ValueError(f"{expected}, at most {MAX_GLOBS}; got {len(value)}")
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 200 \
                or any(ch in item for ch in "/\n\r\t"):
            raise ValueError(f"{expected}; got {_shown(item)} (each a non-empty name of at "
                             "most 200 characters, no '/' or line breaks)")
    return tuple(value)


def _parse_rule(raw: Any, group: str, path: Path, lines: dict, rp: tuple, err) -> Rule | None:
    if not isinstance(raw, dict):
        err(rp, None, "expected a rule mapping with name, expr, labels")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        err((*rp, "name") if "name" in raw else rp, None,
            f"expected a rule 'name' made of letters, digits and _; got {name!r}")
        name = None
    ok = True
    for key in raw:
        if key not in RULE_KEYS:
            err((*rp, key), name, f"unknown key {key!r}; expected one of {sorted(RULE_KEYS)}")
            ok = False
    tree = None
    if "expr" not in raw:
        err(rp, name, "missing 'expr'")
        ok = False
    else:
        try:
            tree = parse(raw["expr"])
            reads = window_reads(tree)
            if reads > MAX_WINDOW:
                raise ExprError(f"its windows read {reads} earlier reports per report (nested "
                                f"or side by side); expected at most {MAX_WINDOW}, which bounds "
                                "the cost of every report (use shorter windows, or split the "
                                "rule)")
        except ExprError as exc:
            err((*rp, "expr"), name, f"expr: {exc}")
            ok = False
    hold, grace = Hold(), Grace()
    try:
        hold = parse_hold(raw.get("for"))
    except ValueError as exc:
        err((*rp, "for"), name, str(exc))
        ok = False
    try:
        grace = parse_grace(raw.get("grace"))
    except ValueError as exc:
        err((*rp, "grace"), name, str(exc))
        ok = False
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        err((*rp, "labels"), name, "labels: expected a mapping of strings")
        labels, ok = {}, False
    if labels.get("action") not in ACTIONS:
        err((*rp, "labels", "action") if "action" in labels else (*rp, "labels"), name,
            f"labels.action: expected one of {list(ACTIONS)}, got {labels.get('action')!r}")
        ok = False
    if not re.fullmatch(r"[a-z][a-z0-9_]*", str(labels.get("failure", ""))):
        err((*rp, "labels", "failure") if "failure" in labels else (*rp, "labels"), name,
            "labels.failure: expected the failure this rule predicts, in snake_case "
            f"(e.g. dead_relu_collapse), got {labels.get('failure')!r}")
        ok = False
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str)
                                                    for v in annotations.values()):
        err((*rp, "annotations"), name, "annotations: expected a mapping of strings")
        annotations, ok = {}, False
    for key, text in annotations.items():
        for ph in PLACEHOLDER.findall(text):
            if ph not in PLACEHOLDERS and not ph.startswith("$labels.") \
                    and not ph.startswith("$values."):
                err((*rp, "annotations", key), name, f"annotations.{key}: unknown placeholder "
                    f"{{{{ {ph} }}}}; expected one of {sorted(PLACEHOLDERS)}, $labels.NAME or "
                    "$values.SIGNAL")
                ok = False
    requires = raw.get("requires") or {}
    if not isinstance(requires, dict) or any(
            key not in REQUIREMENTS or value not in REQUIREMENTS[key]
            for key, value in requires.items()):
        err((*rp, "requires"), name, "requires: expected a mapping of vocabulary settings, "
            f"each one of {REQUIREMENTS}, got {requires!r}")
        requires, ok = {}, False
    if not ok or name is None or tree is None:
        return None
    return Rule(name=name, group=group, expr=raw["expr"], tree=tree, hold=hold, grace=grace,
                labels=dict(labels), annotations=dict(annotations), source=str(path),
                line=line_of(lines, rp), requires=dict(requires))


def _expand(source: str, base: Path | None) -> list[Path]:
    """The files of one rule source: ``builtin``, ``custom``, a file, or a directory."""
    if source == "builtin":
        return sorted(BUILTIN_DIR.glob("*.yaml"))
    path = custom_dir() if source == "custom" else Path(source)
    if not path.is_absolute() and base is not None and not path.exists():
        path = base / path
    if source == "custom" and not path.is_dir() and "MONITOR_CUSTOM_RULES" not in os.environ:
        return []  # the default drop-in directory is optional
    if path.is_dir():
        return sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    return [path]


def rule_files(sources: list[str] | tuple[str, ...], base: Path | None = None) -> list[Path]:
    """Expand rule sources: ``builtin``, ``custom``, files, and directories (*.yaml, *.yml)."""
    return [path for source in sources for path in _expand(source, base)]


def load_rules(sources: list[str] | tuple[str, ...] = ("builtin",),
               base: Path | None = None) -> list[Rule]:
    """Load and validate every rule of ``sources``; raise ``RuleErrors`` listing all problems.

    A source that yields no rule (an empty directory, a file without rules, ``builtin`` with
    its files missing) is an error, except the optional ``custom`` drop-in directory. A file
    that two sources name (``custom`` and the file itself) is loaded once.
    """
    errors: list[ConfigError] = []
    rules: list[Rule] = []
    loaded_files: set[Path] = set()  # a file named by two sources (custom and itself): once
    for source in sources:
        found, before = 0, len(errors)
        for path in _expand(source, base):
            if path.exists() and path.resolve() in loaded_files:
                found += 1
                continue
            if path.exists():
                loaded_files.add(path.resolve())
            if not path.exists():
                errors.append(ConfigError(path, None, "rule source not found (expected "
                                          "'builtin', a YAML file or a directory)"))
                continue
            loaded = _load_file(path, errors)
            found += len(loaded)
            rules.extend(loaded)
        if found == 0 and len(errors) == before and source != "custom":
            where = BUILTIN_DIR if source == "builtin" else source
            errors.append(ConfigError(where, None, f"rule source {source!r} holds no rules; "
                                      "expected at least one rule (groups: [{name, rules: "
                                      "[...]}]) in *.yaml files"))
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in seen:
            first = seen[rule.name]
            errors.append(ConfigError(rule.source, rule.line, f"rule {rule.name!r}: duplicate "
                                      f"name (first defined at {first.source}:{first.line})"))
        else:
            seen[rule.name] = rule
    if errors:
        raise RuleErrors(errors)
    return rules


def load_rules_text(text: str, path: str | Path) -> list[Rule]:
    """The rules of one rule file's ``text`` (read elsewhere; messages name ``path``),
    validated exactly as ``load_rules`` validates a file; ``RuleErrors`` lists every problem."""
    errors: list[ConfigError] = []
    rules = _load_file(Path(path), errors, text)
    if not rules and not errors:
        errors.append(ConfigError(path, None, "holds no rules; expected at least one rule "
                                  "(groups: [{name, rules: [...]}])"))
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in seen:
            errors.append(ConfigError(rule.source, rule.line, f"rule {rule.name!r}: duplicate "
                                      f"name (first defined at line {seen[rule.name].line})"))
        seen.setdefault(rule.name, rule)
    if errors:
        raise RuleErrors(errors)
    return rules


def rule_mapping(rule: Rule) -> dict[str, Any]:
    """The rule as the mapping of a rule file (plain data: what a run keeps of a rule it was
    given, and what ``rule_from_mapping`` reads back)."""
    out: dict[str, Any] = {"name": rule.name, "expr": rule.expr}
    if rule.hold.seconds is not None:
        out["for"] = f"{rule.hold.seconds:g}s"
    elif rule.hold.reports != 1:
        out["for"] = rule.hold.reports
    share = f"{100 * rule.grace.fraction:g}%" if rule.grace.fraction is not None else None
    if share and rule.grace.iterations:
        out["grace"] = f"{rule.grace.iterations} or {share}"
    elif share:
        out["grace"] = share
    elif rule.grace.iterations:
        out["grace"] = rule.grace.iterations
    out["labels"] = dict(rule.labels)
    if rule.annotations:
        out["annotations"] = dict(rule.annotations)
    if rule.requires:
        out["requires"] = dict(rule.requires)
    if rule.experiments:
        out["experiments"] = list(rule.experiments)
    return out


def rule_version(rule: Rule) -> str:
    """The rule's version: a content hash (12 hex digits of SHA-256) of what it does and says
    (expression, for, grace, labels, annotations, requires), not of how its file spells it
    (comments, quoting, key order, "2" or 2)."""
    content = {"name": rule.name, "expr": " ".join(rule.expr.split()),
               "for": [rule.hold.reports, rule.hold.seconds],
               "grace": [rule.grace.iterations, None if rule.grace.fraction is None
                         else round(rule.grace.fraction, 9)],
               "labels": rule.labels, "annotations": rule.annotations,
               "requires": rule.requires}
    if rule.experiments:  # absent otherwise: versions of rules without it stay as they were
        content["experiments"] = list(rule.experiments)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rule_from_mapping(raw: dict[str, Any], group: str, source: str) -> Rule:
    """A rule from ``rule_mapping``'s form, validated as in a file (``RuleErrors``)."""
    errors: list[ConfigError] = []

    def err(key_path: tuple, rule: str | None, message: str) -> None:
        prefix = f"rule {rule!r}: " if rule else ""
        errors.append(ConfigError(source, None, prefix + message))

    raw = dict(raw)
    experiments: tuple[str, ...] = ()
    if "experiments" in raw:
        try:
            experiments = parse_experiments(raw.pop("experiments"))
        except ValueError as exc:
            err((), raw.get("name"), str(exc))
    rule = _parse_rule(raw, group, Path(source), {}, (), err)
    if rule is None or errors:
        raise RuleErrors(errors or [ConfigError(source, None, "not a rule")])
    rule.source = source
    rule.experiments = experiments
    return rule
