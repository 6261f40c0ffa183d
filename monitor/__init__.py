"""Training-health monitor and early kill for PyTorch trainings, under Ray Tune or in a plain loop.

The public API:

* in the training: ``attach(model)`` -> ``HealthMonitor`` (``step()`` after each optimiser
  step, ``paused()`` around validation, ``observe_output(output, target)`` for audio power,
  ``collect()`` for the health block to report as ``"health"``);
* under Ray Tune: ``TuneMonitor`` (scheduler and callbacks for ``tune.Tuner``);
* in a plain loop: ``LoopMonitor`` (``report(...)`` returns a ``Decision``);
* ``Vocabulary``: which reported keys are the training loss, GAN losses and validation metric;
* ``check_rules(rules=..., signals=Vocabulary(...))``: before a run, the rules that cannot act.

Layers (enforced by import-linter): ``trainers`` and ``bench`` use ``monitor``, which uses
``heuristics`` (rules, engine, vocabulary) and ``dashboards``; never the other way. Inside,
grouped by where the code runs: ``monitor.cli`` -> ``after`` (reads a finished run) ->
``driver`` (decides, records) -> ``serving`` (Prometheus, Grafana, Alertmanager, webhook) |
``store`` (the run store) | ``training`` (hooks, signals) -> the shared modules (``console``,
``durability``, ``faults``, ``paths``, ``redaction``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from heuristics.vocabulary import Vocabulary

if TYPE_CHECKING:
    from monitor.driver.loop import Decision, LoopMonitor
    from monitor.driver.run import check_rules
    from monitor.driver.tuning import TuneMonitor
    from monitor.training.hooks import HealthMonitor, attach

__all__ = ["Decision", "HealthMonitor", "LoopMonitor", "TuneMonitor", "Vocabulary", "attach",
           "check_rules"]

_LAZY = {"HealthMonitor": "monitor.training.hooks", "attach": "monitor.training.hooks",
         "LoopMonitor": "monitor.driver.loop", "Decision": "monitor.driver.loop",
         "TuneMonitor": "monitor.driver.tuning", "check_rules": "monitor.driver.run"}


def __getattr__(name: str) -> Any:
    """Import torch and Ray only when their part of the API is used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")
