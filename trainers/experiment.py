"""Experiment files: ``trainers/experiments/<EXP>.yaml`` describes one Ray Tune experiment.

Everything is validated before Ray starts; errors name the file, the line and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from heuristics.vocabulary import Vocabulary
from heuristics.yamlfile import ConfigError, line_of, load_yaml
from monitor.driver.run import check_name
from trainers.config import ConfigKeyError, merge_config
from trainers.master import MASTER_DEFAULTS
from trainers.student import STUDENT_DEFAULTS

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"
DEFAULTS = {"master": MASTER_DEFAULTS, "student": STUDENT_DEFAULTS}
# What each trainer reports (its metrics and validation), for checks before Ray starts.
REPORTED = {
    "master": {"loss_g", "loss_d", "loss_adv", "loss_fm", "loss_power", "loss_spectral",
               "loss_wave", "grad_norm", "val_logmel", "val_power_ratio_db", "step_time_s",
               "steps"},
    "student": {"loss", "loss_wave", "loss_spectral", "grad_norm", "val_teacher_logmel",
                "val_logmel", "master_val_logmel", "n_parameters", "rtf", "master_rtf",
                "step_time_s", "steps"},
}
# The trainers' own metric names, declared as the monitor's roles (an experiment's `signals:`
# section overrides any of them).
VOCABULARIES = {
    "master": {"generator_loss": "loss_g", "discriminator_loss": "loss_d",
               "adversarial_loss": "loss_adv", "validation": "val_logmel", "mode": "min",
               "grad_norm": "grad_norm", "step_time_s": "step_time_s", "gan_loss": "lsgan",
               "role": "master"},
    "student": {"train_loss": "loss", "validation": "val_logmel", "mode": "min",
                "grad_norm": "grad_norm", "step_time_s": "step_time_s", "role": "student"},
}
TOP_KEYS = {"description", "trainer", "metric", "mode", "samples", "max_iterations",
            "resources", "max_concurrent", "heuristics", "config", "variants", "search_space",
            "healthy_threshold", "master_experiment", "signals"}
DISTRIBUTIONS = {"choice", "grid", "uniform", "loguniform", "randint"}


@dataclass
class Experiment:
    name: str
    path: Path
    trainer: str
    metric: str
    mode: str
    samples: int
    max_iterations: int
    resources: dict[str, float]
    max_concurrent: int | None
    heuristics: list[str]
    config: dict[str, Any]
    variants: list[dict[str, Any]]
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    healthy_threshold: float | None = None  # final metric that counts as a healthy outcome
    master_experiment: str | None = None  # students: distil from this experiment's latest run
    vocabulary: Vocabulary = field(default_factory=Vocabulary)


def _distribution_problem(kind: str, args: Any) -> str | None:
    """What is wrong with a distribution's arguments, or ``None``."""
    if kind in ("choice", "grid"):
        return None if isinstance(args, list) and args else "expected a non-empty list of values"
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        return "expected [low, high], two numbers"
    low, high = args
    if not low < high:
        return f"expected low < high, got [{low}, {high}]"
    if kind == "loguniform" and low <= 0:
        return f"expected low > 0 for a log-uniform range, got {low}"
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        return f"expected two integers, got [{low}, {high}]"
    return None


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def find(name_or_path: str) -> Path:
    """Resolve an experiment name (or a path to a YAML file)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(candidate, None,
                      f"unknown experiment {name_or_path!r}; available: {', '.join(available())}")


def load(name_or_path: str) -> Experiment:
    path = find(name_or_path)
    data, lines = load_yaml(path)

    def fail(key_path: tuple, message: str) -> ConfigError:
        return ConfigError(path, line_of(lines, key_path), message)

    if not isinstance(data, dict):
        raise fail((), "expected a mapping of experiment settings at the top level")
    for key in data:
        if key not in TOP_KEYS:
            raise fail((key,), f"unknown key {key!r}; expected one of {sorted(TOP_KEYS)}")
    trainer = data.get("trainer")
    if trainer not in DEFAULTS:
        raise fail(("trainer",), f"trainer: expected one of {sorted(DEFAULTS)}, got {trainer!r}")
    defaults = DEFAULTS[trainer]

    def check_config(overrides: Any, key_path: tuple, what: str) -> dict[str, Any]:
        if not isinstance(overrides, dict):
            raise fail(key_path, f"{what}: expected a mapping, got {overrides!r}")
        try:
            merge_config(defaults, overrides, what)
        except ConfigKeyError as exc:
            raise fail((*key_path, *exc.keys), str(exc)) from None
        return overrides

    def positive_int(key: str, default: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail((key,), f"{key}: expected a positive integer, got {value!r}")
        return value

    config = check_config(data.get("config", {}), ("config",), "config")
    variants_raw = data.get("variants", [{"name": "default"}])
    if not isinstance(variants_raw, list) or not variants_raw:
        raise fail(("variants",), "variants: expected a non-empty list of named configurations")
    variants, names = [], set()
    for i, v in enumerate(variants_raw):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise fail(("variants", i), f"variants[{i}]: expected a mapping with a 'name'")
        try:
            check_name(v["name"], f"variants[{i}].name")
        except ValueError as exc:
            raise fail(("variants", i, "name"), str(exc)) from None
        if v["name"] in names:
            raise fail(("variants", i, "name"), f"duplicate variant name {v['name']!r}")
        names.add(v["name"])
        body = {k: val for k, val in v.items() if k != "name"}
        check_config(body, ("variants", i), f"variants[{i}] ({v['name']})")
        variants.append(v)
    space = data.get("search_space", {}) or {}
    if not isinstance(space, dict):
        raise fail(("search_space",), "search_space: expected a mapping of key: {distribution}")
    for key, dist in space.items():
        if key not in defaults:
            raise fail(("search_space", key),
                       f"search_space: unknown key {key!r}; expected one of {sorted(defaults)}")
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
            raise fail(("search_space", key),
                       f"search_space.{key}: expected one of {sorted(DISTRIBUTIONS)} "
                       f"with its arguments, got {dist!r}")
        kind, args = next(iter(dist.items()))
        message = _distribution_problem(kind, args)
        if message is None and kind in ("choice", "grid"):
            for value in args:
                check_config({key: value}, ("search_space", key, kind), f"search_space.{key}")
        if message:
            raise fail(("search_space", key, kind), f"search_space.{key}.{kind}: {message}")
    resources = data.get("resources", {"cpu": 1})
    if (not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}
            or not all(isinstance(x, (int, float)) and x >= 0 for x in resources.values())):
        raise fail(("resources",), f"resources: expected {{cpu: N, gpu: N}}, got {resources!r}")
    mode = data.get("mode", "min")
    if mode not in ("min", "max"):
        raise fail(("mode",), f"mode: expected 'min' or 'max', got {mode!r}")
    heuristics = data.get("heuristics", ["builtin", "custom"])
    if not isinstance(heuristics, list) or not all(isinstance(h, str) for h in heuristics):
        raise fail(("heuristics",), "heuristics: expected a list of rule sources "
                   "('builtin', files or directories)")
    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = positive_int("max_concurrent", 1)
    threshold = data.get("healthy_threshold")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise fail(("healthy_threshold",), f"healthy_threshold: expected a number, got "
                   f"{threshold!r}")
    master_experiment = data.get("master_experiment")
    if trainer == "student":
        master_experiment = master_experiment or "master_v464"
        if master_experiment not in available():
            raise fail(("master_experiment",), f"master_experiment: expected one of "
                       f"{available()}, got {master_experiment!r}")
    elif master_experiment is not None:
        raise fail(("master_experiment",), "master_experiment: only for trainer: student")
    declared = dict(VOCABULARIES[trainer])
    if "metric" in data:
        declared["validation"] = data["metric"]
    declared["mode"] = mode
    signals = data.get("signals", {}) or {}
    if not isinstance(signals, dict):
        raise fail(("signals",), "signals: expected a mapping of role: reported key "
                   "(train_loss, generator_loss, discriminator_loss, validation, ...)")
    try:
        vocabulary = Vocabulary.from_mapping({**declared, **signals})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ("signals", *first["loc"]) if first["loc"] else ("signals",)
        raise fail(where, f"signals.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    for role, key in vocabulary.keys().items():
        if key not in REPORTED[trainer]:
            where = ("signals", role) if role in signals else (
                ("metric",) if role == "validation" else ("signals",))
            raise fail(where, f"{'metric' if where == ('metric',) else 'signals.' + role}: the "
                       f"{trainer} trainer reports no {key!r}; expected one of "
                       f"{sorted(REPORTED[trainer])}")
    return Experiment(
        name=path.stem, path=path, trainer=trainer, metric=str(vocabulary.validation),
        mode=vocabulary.mode, samples=positive_int("samples", 1),
        max_iterations=positive_int("max_iterations", defaults["max_iterations"]),
        resources={"cpu": 1, **resources}, max_concurrent=max_concurrent, heuristics=heuristics,
        config=config, variants=variants, search_space=space,
        description=str(data.get("description", "")), healthy_threshold=threshold,
        master_experiment=master_experiment, vocabulary=vocabulary,
    )
