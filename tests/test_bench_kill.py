"""The kill benchmark's truth and scoring, on scripted histories (the benchmark itself runs
real trainings: ``make bench-kill``)."""

from __future__ import annotations

import math

import pytest

from bench.kill import evaluate, markdown, onset


def report(it: int, **values) -> dict:
    return {"training_iteration": it, **values}


def test_onset_definitions():
    dead = [report(1, **{"health/layers/a/dead_ratio": 0.3}),
            report(2, **{"health/layers/a/dead_ratio": 0.95})]
    assert onset("dead_relu_collapse", dead) == 2
    assert onset("linearised_layer", dead) is None
    quiet = [report(i, **{"health/model/power_ratio_db": db})
             for i, db in enumerate([-3.0, -11.0, -12.5], 1)]
    assert onset("silence_collapse", quiet) == 3
    blowup = [report(i, loss=x) for i, x in enumerate([1.0, 0.8, 2.0, 2.5], 1)]
    assert onset("divergence", blowup) == 4  # 2.5 >= 3 x 0.8
    assert onset("divergence", [report(1, loss_g=2.0, loss_d=math.nan)]) == 1
    falling_d = [report(i, loss_d=x) for i, x in enumerate([0.1, 0.03, 0.01], 1)]
    assert onset("divergence", falling_d) is None  # the D loss is not a training loss
    assert onset("discriminator_overpowering", falling_d) == 3


def summary(experiment: str, budget: int, trials: list[tuple[str, int, float]]) -> dict:
    return {"experiment": experiment, "budget": budget,
            "trials": [{"variant": v, "seed": None, "iterations": n, "metric": m}
                       for v, n, m in trials]}


def test_evaluate_scores_per_trial_budgets():
    truth = {"m/healthy/None": {"failure": "healthy", "onset": None},
             "m/dead/None": {"failure": "dead_relu_collapse", "onset": 4},
             "s/healthy_low/None": {"failure": "healthy", "onset": None},
             "s/div/None": {"failure": "divergence", "onset": 3}}
    runs = [summary("m", 30, [("healthy", 30, 1.9), ("dead", 5, 2.4)]),
            summary("s", 20, [("healthy_low", 12, 0.6), ("div", 4, 8.9)])]
    p = evaluate("heuristic", runs, truth)
    assert p["trial_iterations"] == 51 and p["budget_iterations"] == 100
    assert p["saved_pct"] == pytest.approx(49.0)
    assert p["recall"] == 1.0 and p["false_kills"] == 1 and p["precision"] == pytest.approx(2 / 3)
    assert p["median_delay_iterations"] == 1.0
    assert p["median_delay_pct_budget"] == pytest.approx((100 / 30 + 100 / 20) / 2)
    assert p["best_final_quality"] == {"m": 1.9, "s": None}  # stopped trials do not count
    result = {"populations": [{"experiment": "m", "trials": 2, "budget": 30, "metric": "q"},
                              {"experiment": "s", "trials": 2, "budget": 20, "metric": "r"}],
              "device": "cpu", "date": "today", "seconds": 60.0, "policies": [p]}
    table = markdown(result)
    assert "| heuristic | 51 | 49% | 1.00 | 1 | 0.67 | 1.0 | 4.2 | 1.900 | - |" in table
    assert "| s | div | divergence | 3 | 4 | heuristic | 1 |" in table
