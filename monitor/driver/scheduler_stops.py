"""The wrapped Tune scheduler's stops, as verdicts of that scheduler.

``HeuristicScheduler`` defers to a wrapped scheduler (ASHA, MedianStoppingRule, HyperBand...)
when no rule kills. A STOP it returns is recorded like a rule's kill (store, verdict log), named
after the scheduler (``ASHAScheduler``) with ``policy: "scheduler"``, so that the summary and
``monitor kill-report`` show who stopped the trial and the compute it saved; so is a trial it
stops directly through the controller (HyperBand stops the paused trials of a cut bracket),
from that trial's last result. PAUSE is not a stop; a stop at the trial's budget (ASHA's
``max_t``) is the trial finishing, not a decision; a Tune stopper's stop never reaches here.

The reason gives what can be read honestly: the iteration, the metric and its value in that
report, and what the scheduler compared it with where it exposes it (ASHA: the rung's cutoff,
read before the trial's own value enters the rung; MedianStoppingRule: the median of the other
trials' running means). Reading a scheduler's internals never fails a result: a scheduler of
another version gives the plain sentence.
"""

from __future__ import annotations

import math
import time
from typing import Any

from heuristics.engine import fmt
from heuristics.results import number

POLICY = "scheduler"  # ``policy`` of a scheduler's verdict; a rule's verdict has none


def is_scheduler_verdict(verdict: dict[str, Any]) -> bool:
    """Whether ``verdict`` is a wrapped scheduler's stop (not a rule's)."""
    return verdict.get("policy") == POLICY


def scheduler_name(scheduler: Any) -> str:
    """The name a scheduler's verdicts carry: its class name (``ASHAScheduler`` for ASHA)."""
    name = type(scheduler).__name__
    return "ASHAScheduler" if name == "AsyncHyperBandScheduler" else name


def _asha(scheduler: Any) -> bool:
    return type(scheduler).__name__ == "AsyncHyperBandScheduler" and hasattr(
        scheduler, "_trial_info")


def before(scheduler: Any, trial: str, result: dict[str, Any]) -> dict[str, Any]:
    """What the scheduler will compare this result with, read before it decides (ASHA records
    the trial's value in the rung as it decides). Empty where nothing can be read."""
    try:
        if not _asha(scheduler):
            return {}
        it = result.get(scheduler._time_attr)
        if it is None:
            return {}
        if it >= scheduler._max_t and scheduler._stop_last_trials:
            return {"max_t": scheduler._max_t}
        bracket = scheduler._trial_info.get(trial)
        if bracket is None:
            return {}
        for milestone, recorded in bracket._rungs:
            if it < milestone or trial in recorded:
                continue
            cutoff = bracket.cutoff(recorded)
            return {"rung": milestone, "recorded": len(recorded), "reduction_factor": bracket.rf,
                    "cutoff": None if cutoff is None else
                    float(cutoff) * float(scheduler._metric_op)}
    except Exception:  # noqa: BLE001 - another Ray version's internals: the plain sentence
        return {}
    return {}


def _median(scheduler: Any, trial: Any, at: float) -> dict[str, Any]:
    """MedianStoppingRule's comparison, recomputed as it made it (after its decision)."""
    try:
        others = [t for t in scheduler._trials_beyond_time(at) if t is not trial]
        means = [m for m in (float(scheduler._running_mean(t, at)) for t in others)
                 if math.isfinite(m)]
        if not means:
            return {}
        means.sort()
        mid = len(means) // 2
        median = means[mid] if len(means) % 2 else (means[mid - 1] + means[mid]) / 2
        return {"median": median, "compared": len(means),
                "best": float(scheduler._best_result(trial))}
    except Exception:  # noqa: BLE001
        return {}


def _iteration(value: Any) -> int:
    n = number(value)
    return int(n) if n is not None and math.isfinite(n) else 0


def stop_verdict(scheduler: Any, trial: Any, result: dict[str, Any], context: dict[str, Any],
                 *, metric: str | None, mode: str | None, experiment: str,
                 budget: int | None) -> dict[str, Any] | None:
    """The verdict of the wrapped ``scheduler`` that returned STOP for ``trial`` on
    ``result``; None when the trial merely reached its budget (or ASHA's ``max_t`` with no
    budget known)."""
    name = scheduler_name(scheduler)
    iteration = _iteration(result.get("training_iteration"))
    if budget and iteration >= budget:
        return None
    if "max_t" in context and not budget:
        return None
    own = getattr(scheduler, "_metric", None), getattr(scheduler, "_mode", None)
    metric = own[0] if isinstance(own[0], str) else metric  # the metric it ranks by
    mode = own[1] if own[1] in ("min", "max") else mode or "min"
    value = number(result.get(metric)) if metric else None
    trial_id = getattr(trial, "trial_id", str(trial))
    share = f" ({100 * iteration / budget:.0f}% of its {budget}-iteration budget)" if budget \
        else ""
    said = f"{metric} was {fmt(value)} at iteration {iteration}" if metric else \
        f"no metric was given to {name}"
    worse = "higher" if mode == "min" else "lower"
    details: dict[str, Any] = dict(context)
    failure = "scheduler_stop"
    if "max_t" in context:
        failure = "reached_max_t"
        why = (f"it reached {name}'s max_t of {context['max_t']} iterations, before its "
               f"budget; {said}")
    elif context.get("cutoff") is not None:
        failure = "below_rung_cutoff"
        rf = context["reduction_factor"]
        why = (f"{said}, {worse} than {fmt(context['cutoff'])}, the cutoff of its rung at "
               f"iteration {fmt(context['rung'])} (only the best 1/{fmt(rf)} of the "
               f"{context['recorded']} trial(s) recorded there go on; {metric}, {mode})")
    elif type(scheduler).__name__ == "MedianStoppingRule" and \
            (median := _median(scheduler, trial, result.get(scheduler._time_attr, 0))):
        failure = "below_median"
        details.update(median)
        why = (f"{said}; its best so far, {fmt(median['best'])}, was {worse} than "
               f"{fmt(median['median'])}, the median of the running means of "
               f"{median['compared']} other trial(s) at that time ({metric}, {mode})")
    else:
        why = f"{said} ({name} gives no further reason)"
    reason = (f"Trial {trial_id} stopped at iteration {iteration}{share} by the wrapped "
              f"scheduler {name}: {why}.")
    time_s = number(result.get("time_total_s"))
    return {
        "rule": name, "group": POLICY, "failure": failure, "action": "kill", "shadow": False,
        "experiment": experiment, "trial": trial_id, "iteration": iteration, "budget": budget,
        "wall_time": time.time(),
        "trial_time_s": time_s if time_s is not None and math.isfinite(time_s) else 0.0,
        "expr": "", "value": value, "values": {metric: value} if metric else {},
        "window": {}, "held_reports": 1, "summary": why, "reason": reason, "labels": {},
        "rule_version": "", "ruleset_revision": 0, "retroactive": False,
        "policy": POLICY, "scheduler": name, "details": details}
