"""What every monitored run shares: its unique directory, rules, vocabulary and budget."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heuristics.results import text_ok
from heuristics.rules import Rule, load_rules
from heuristics.vocabulary import Vocabulary
from monitor.console import CONTROL
from monitor.paths import RUNS_ENV, runs_dir

RuleSources = Sequence[str | Path] | Sequence[Rule]


class StorageError(RuntimeError):
    """Runs cannot be written where they should go (one line: where, why, what to do)."""


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
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or budget < 1):
            raise ValueError(f"budget: expected a positive number of iterations, got {budget!r}")
        vocabulary = as_vocabulary(signals)
        loaded = as_rules(rules, rules_base)
        path = Path(run_dir).resolve() if run_dir else new_run_dir(experiment, storage)
        return cls(experiment, path, loaded, vocabulary, budget, shadow, healthy_threshold)
