"""What every monitored run shares: its unique directory, rules, vocabulary and budget."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heuristics.coverage import Applicability, Notice, applicability
from heuristics.results import number, shown, text_ok, whole_number
from heuristics.rules import BUILTIN_DIR, Rule, load_rules
from heuristics.vocabulary import Vocabulary
from monitor.console import CONTROL, one_line
from monitor.paths import RUNS_ENV, runs_dir

RuleSources = Sequence[str | Path] | Sequence[Rule]


class StorageError(RuntimeError):
    """Runs cannot be written where they should go (one line: where, why, what to do)."""


# What a monitor's arguments can get wrong, each said in lines that name what was expected
# (rule files: ``RuleErrors``/``ConfigError`` with file and line; names, budget, vocabulary;
# the runs directory): uncaught, one line each and no traceback (``console.one_line``).
USER_ERRORS = (ValueError, TypeError, StorageError)


def check_name(name: object, what: str = "experiment") -> str:
    """``name`` if it can name a run directory and show on one line of a table: non-empty
    text without '/', a leading '.', control characters or invalid Unicode; else
    ``ValueError``."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") \
            or CONTROL.search(name) or not text_ok(name):
        raise ValueError(f"{what}: expected a plain name (no '/', no leading '.', no control "
                         f"characters such as line breaks), got {name!r}")
    return name


def new_run_dir(experiment: str, storage: str | Path | None = None) -> Path:
    """A fresh directory ``<storage>/<experiment>_<YYYYmmdd-HHMMSS>_<hex>``, created here (two
    runs started in the same second never share one). ``StorageError`` when it cannot be
    (``MONITOR_RUNS_DIR`` a file or a device, a read-only file system, no permission)."""
    check_name(experiment)
    root = Path(storage) if storage is not None else runs_dir()
    try:
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(20, "not a directory", str(root))
        root.mkdir(parents=True, exist_ok=True)
        while True:
            path = root / f"{experiment}_{time.strftime('%Y%m%d-%H%M%S')}_{secrets.token_hex(2)}"
            try:
                path.mkdir()
                return path.resolve()
            except FileExistsError:
                continue
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise StorageError(f"{root}: runs cannot be written there ({why}); set "
                           f"{RUNS_ENV} (or --storage) to a writable directory") from None


def as_vocabulary(signals: Vocabulary | dict[str, Any] | None) -> Vocabulary:
    if signals is None:
        return Vocabulary()
    if isinstance(signals, Vocabulary):
        return signals
    if isinstance(signals, dict):
        return Vocabulary.from_mapping(signals)
    raise TypeError(f"signals: expected a monitor.Vocabulary or a mapping, got "
                    f"{type(signals).__name__}")


def as_rules(rules: RuleSources, base: Path | None = None) -> list[Rule]:
    """Rule objects as they are, or rule sources (``builtin``, ``custom``, files, directories)
    loaded and validated now (``RuleErrors`` lists every problem)."""
    items = list(rules)
    if all(isinstance(r, Rule) for r in items):
        return items  # type: ignore[return-value]
    return load_rules([str(r) for r in items], base=base)


@dataclass
class RunSpec:
    """A run's identity and settings, shared by its scheduler, callbacks or loop monitor."""

    experiment: str
    run_dir: Path
    rules: list[Rule]
    vocabulary: Vocabulary
    budget: int | None = None
    shadow: bool = False
    healthy_threshold: float | None = None
    started: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @classmethod
    def create(cls, experiment: str, *, rules: RuleSources = ("builtin", "custom"),
               signals: Vocabulary | dict[str, Any] | None = None, budget: int | None = None,
               storage: str | Path | None = None, shadow: bool = False,
               healthy_threshold: float | None = None, run_dir: str | Path | None = None,
               rules_base: Path | None = None) -> RunSpec:
        """Validate everything first (rules, vocabulary, budget), then create the directory."""
        if budget is not None:
            iterations = whole_number(budget)
            if not iterations:
                raise ValueError(f"budget: expected a positive number of iterations (a whole "
                                 f"number below 2**53), got {shown(budget)}")
            budget = iterations
        if healthy_threshold is not None:
            threshold = number(healthy_threshold)
            if threshold is None or not math.isfinite(threshold):
                raise ValueError(f"healthy_threshold: expected a finite number, got "
                                 f"{shown(healthy_threshold)}")
            healthy_threshold = threshold
        vocabulary = as_vocabulary(signals)
        loaded = as_rules(rules, rules_base)
        path = Path(run_dir).resolve() if run_dir else new_run_dir(experiment, storage)
        return cls(experiment, path, loaded, vocabulary, budget, shadow, healthy_threshold)


def check_rules(rules: RuleSources = ("builtin", "custom"),
                signals: Vocabulary | dict[str, Any] | None = None,
                experiment: str = "") -> list[Notice]:
    """Before a run: every rule of ``rules`` (sources as ``TuneMonitor`` takes them, or
    ``Rule``s) that cannot act with ``signals`` for ``experiment``, one ``Notice`` each
    (``rule``, ``signal``, ``message``); an empty list when every rule can. A rule file that
    does not load raises ``RuleErrors`` (every problem, one line each, with file and line).

    The notices: a rule of yours naming a role ``signals`` does not declare (one per role); a
    built-in rule with nothing to fire on (a GAN rule without GAN losses); a rule whose
    ``requires`` the vocabulary does not meet; a rule whose file's ``experiments:`` does not
    name ``experiment`` (given a name)."""
    try:
        loaded = as_rules(rules)
        vocabulary = as_vocabulary(signals)
    except USER_ERRORS as exc:  # uncaught: one line, no traceback
        raise one_line(exc) from None
    app = applicability(loaded, vocabulary, experiment)
    out = list(app.notices)
    named = {n.rule for n in out}
    why = {name: f"{kind}{reason}" for (kind, reason), names in app.cannot.items()
           for name in names}
    for rule in loaded:
        if rule.name in named:
            continue
        if rule.name in app.elsewhere:
            out.append(Notice(rule.name, "experiments", (
                f"rule {rule.name} ({rule.source}) is for experiments "
                f"{', '.join(rule.experiments)}, not {experiment}: it is left out.")))
        elif rule.name in why:
            signal = "requires" if rule.requires and not rule.applies(vocabulary) else "roles"
            kind = "built-in rule" if rule.source.startswith(str(BUILTIN_DIR)) else "rule"
            out.append(Notice(rule.name, signal, f"{kind} {rule.name} cannot fire here: "
                              f"{why[rule.name].removeprefix('GAN rules ')}."))
    return out


def record_rules(recorder: Any, rules: list[Rule], vocabulary: Vocabulary,
                 experiment: str) -> Applicability:
    """Record (``VerdictRecorder.note``, once per run) the one-line summary of which rules
    apply and which cannot fire, and a notice for each rule of the user's that cannot."""
    from monitor.driver.verdicts import RULES_NOTICE

    app = applicability(rules, vocabulary, experiment)
    recorder.note(*RULES_NOTICE, app.line())
    for n in app.notices:
        recorder.note(n.rule, n.signal, n.message)
    return app


def start_lines(name: str, url: str | None, sd_file: Path | None, app: Applicability,
                shadow: bool, run_dir: Path) -> list[str]:
    """What a run says when it starts: where its metrics are served, which rules run and what
    they cannot see, where its files go (plain text, one item a line)."""
    if url:
        where = f" (Prometheus file_sd: {sd_file})" if sd_file else ""
        lines = [f"Health metrics of {name}: {url}{where}"]
    else:
        lines = [f"Health metrics of {name}: not served (exporter=False)"]
    mode = " (shadow mode: nothing is stopped)" if shadow else ""
    lines.append(f"Rules{mode}: {app.line()}")
    lines += [f"Warning: {n.message}" for n in app.notices]
    lines.append(f"Run directory: {run_dir}")
    return lines
