"""Held-out kill benchmark: real tiny trainings (onset, "really fails") and scripted scoring."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import policies
from bench.heldout.__main__ import as_trial
from bench.heldout.families import FAMILIES
from bench.heldout.population import Spec, load_or_run, population, run_trial
from bench.policies import Decision, Policy, Trial, label, score, simulate


# -- real trainings -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two families, each one healthy trial and one broken late (onset at 40 % of 10 or 8)."""
    out = tmp_path_factory.mktemp("histories")
    specs = [
        Spec("mlp", "healthy", {"optimizer": "adam", "lr": 3e-3, "batch_size": 64}, budget=10),
        Spec("mlp", "bias_shift", {"optimizer": "adam", "lr": 3e-3, "batch_size": 64},
             "bias_shift", onset=4, seed=1, budget=10),
        Spec("cnn", "healthy", {"optimizer": "adam", "lr": 2e-3, "batch_size": 32}, budget=8),
        Spec("cnn", "nan_input", {"optimizer": "adam", "lr": 2e-3, "batch_size": 32},
             "nan_input", onset=4, seed=1, budget=8),
    ]
    histories = [load_or_run(s, out)[0] for s in specs]
    return {"dir": out, "specs": specs, "histories": histories,
            "trials": [as_trial(h) for h in histories]}


def test_a_trial_reports_tune_style_results_with_its_own_vocabulary(tiny: dict[str, Any]) -> None:
    mlp, cnn = tiny["histories"][0], tiny["histories"][2]
    assert [r["training_iteration"] for r in mlp.results] == list(range(1, 11))
    first = mlp.results[0]
    assert {"time_total_s", "loss", "val_acc", "health"} <= set(first)
    assert set(first["health"]["layers"]) == {"1", "3"}  # the two ReLU modules
    assert {"dead_ratio", "activation_std"} <= set(first["health"]["layers"]["1"])
    assert "train_loss" in cnn.results[0] and "loss" not in cnn.results[0]
    assert (mlp.metric, mlp.mode, cnn.metric, cnn.mode) == ("val_acc", "max", "val_loss", "min")


def test_failures_start_at_their_onset_and_really_fail(tiny: dict[str, Any]) -> None:
    mlp_ok, mlp_bad, cnn_ok, cnn_bad = tiny["histories"]
    assert (mlp_bad.failure, mlp_bad.onset, cnn_bad.onset) == ("bias_shift", 4, 4)
    # Nothing differs from a healthy run before the onset but the seed; at the onset the
    # shifted layer's units die (bias -4 on N(0, 1)-scale inputs) and NaN reaches every layer.
    dead = [max(v["dead_ratio"] for v in r["health"]["layers"].values()) for r in mlp_bad.results]
    assert max(dead[:3]) < 0.9 and dead[3] >= 0.9
    nonfinite = [max(v["nonfinite_count"] for v in r["health"]["layers"].values())
                 for r in cnn_bad.results]
    assert nonfinite[:3] == [0, 0, 0] and nonfinite[3] > 0
    assert math.isnan(cnn_bad.results[-1]["val_loss"])
    truth = label(tiny["trials"])
    assert truth["mlp/bias_shift"]["really_fails"] and truth["cnn/nan_input"]["really_fails"]
    assert not truth["mlp/healthy"]["really_fails"]
    assert truth["cnn/nan_input"]["quality_iteration"] == 4  # NaN is worse than anything
    assert truth["mlp/bias_shift"]["quality_iteration"] >= 4


def test_a_recorded_history_is_reused_unless_retrained(tiny: dict[str, Any]) -> None:
    spec = tiny["specs"][0]
    again, ran = load_or_run(spec, tiny["dir"])
    assert not ran and again.results == tiny["histories"][0].results


def test_the_rule_engine_policy_stops_at_the_onset(tiny: dict[str, Any], tmp_path) -> None:
    from heuristics.rules import load_rules

    rules_file = tmp_path / "nan.yaml"
    rules_file.write_text("groups:\n  - name: t\n    rules:\n      - name: nan\n"
                          "        expr: max(nonfinite_count) > 0\n        labels:\n"
                          "          action: kill\n          failure: divergence\n")
    result = policies.evaluate(tiny["trials"], ("none", "heuristic"),
                               load_rules([str(rules_file)]))
    heuristic = next(p for p in result["policies"] if p["policy"] == "heuristic")
    rows = {r["trial"]: r for r in heuristic["trials"]}
    assert rows["cnn/nan_input"]["stop"] == 4 and rows["cnn/nan_input"]["delay"] == 0
    assert heuristic["false_kills"] == 0 and not rows["mlp/bias_shift"]["stopped"]


def test_the_population_is_late_and_names_only_known_families() -> None:
    specs = population(40)
    assert {s.family for s in specs} == set(FAMILIES)
    for family in FAMILIES:
        members = [s for s in specs if s.family == family]
        healthy = [s for s in members if s.failure == "healthy"]
        broken = [s for s in members if s.failure != "healthy"]
        assert len(healthy) >= 2 and len(broken) >= 2
        assert all(0.25 * 40 <= s.onset <= 0.4 * 40 for s in broken)
    assert len({s.file for s in specs}) == len(specs)


def test_the_fresh_splits_repeat_the_designs_under_new_seeds() -> None:
    from bench.heldout.population import SPLITS

    dev, *others = [population(40, split) for split in SPLITS]
    assert len(others) == 7
    for other in others:
        assert [(s.name, s.setting, s.failure, s.onset) for s in dev] == \
            [(s.name, s.setting, s.failure, s.onset) for s in other]
    seeds = [{s.seed for s in split} for split in (dev, *others)]
    assert all(not (a & b) for i, a in enumerate(seeds) for b in seeds[i + 1:])
    with pytest.raises(ValueError, match="split must be one of"):
        population(40, "test")


def test_splits_markdown_puts_the_splits_side_by_side() -> None:
    from bench.heldout.splits import splits_markdown

    def policy(name: str, caught: int, false: int) -> dict[str, Any]:
        return {"policy": name, "trial_iterations": 10, "saved_pct": 10.0, "recall": caught / 2,
                "caught": caught, "really_failing": 2, "false_kills": false,
                "premature_kills": 0, "precision": None, "median_delay_iterations": 1.0,
                "median_delay_pct_budget": 2.5, "median_lead": 0.0,
                "kills_before_quality": 0}

    report = {"trials": [{}, {}], "policies": [policy(p, 1, 0) for p in policies.POLICIES],
              "firings": {"a/x": [{"rule": "divergence", "iteration": 3, "action": "kill"}]}}
    md = splits_markdown({"in-sample": report, "fresh": report}, ["builtin"])
    assert "| in-sample | heuristic | 2 | 0.50 (1/2) | 0 | 0 | 2.5 | 10% | 0.0 |" in md
    assert "| fresh | asha |" in md and "development" not in md.split("## ")[0].split("|")[-1]
    assert "* a/x: divergence@3" in md


def test_a_trial_is_deterministic() -> None:
    spec = Spec("mlp", "x", {"optimizer": "sgd", "lr": 0.05, "batch_size": 32}, budget=2)
    a, b = run_trial(spec), run_trial(spec)
    assert [r["loss"] for r in a.results] == [r["loss"] for r in b.results]


# -- scripted scoring -----------------------------------------------------------------------------
def scripted(name: str, vals: list[float], failure: str = "healthy", onset: int | None = None,
             loss: list[float] | None = None) -> Trial:
    results = [{"training_iteration": i + 1, "time_total_s": float(i + 1), "val": v,
                "my_loss": (loss or vals)[i]} for i, v in enumerate(vals)]
    return Trial(name, "g", failure, onset, len(vals), "val", "min", results,
                 {"train_loss": "my_loss", "validation": "val", "mode": "min"})


class Scripted(Policy):
    name = "scripted"

    def __init__(self, kills: dict[str, int]) -> None:
        self.kills = kills
        self.seen: list[tuple[str, int]] = []

    def result(self, trial: Trial, result: dict[str, Any]) -> Decision | None:
        it = result["training_iteration"]
        self.seen.append((trial.name, it))
        return Decision(it, "scripted") if self.kills.get(trial.name) == it else None


def population_of_five() -> list[Trial]:
    down = [1.0, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.42, 0.4]
    return [
        scripted("a", down),
        scripted("b", [v + 0.05 for v in down]),
        # fails from its onset (4); its metric is worse than both healthy ones from 6 on
        scripted("c", [1.0, 0.9, 0.8, 0.7, 0.6, 1.2, 1.5, 2.0, 2.0, 2.0], "lr_spike", 4),
        # broken at 5 but recovers: ends better than b, so it does not really fail
        scripted("d", [1.0, 0.9, 0.8, 0.7, 0.9, 0.8, 0.6, 0.5, 0.44, 0.41], "gain_collapse", 5),
        scripted("e", [v + 0.02 for v in down]),
        # really fails (NaN) but is stopped before its onset: premature
        scripted("f", down[:7] + [math.nan] * 3, "nan_input", 8),
    ]


def test_scripted_scores_recall_false_kills_delay_and_lead() -> None:
    trials = population_of_five()
    truth = label(trials)
    assert [truth[t]["really_fails"] for t in "abcdef"] == [False, False, True, False, False,
                                                           True]
    assert truth["c"]["quality_iteration"] == 6 and truth["f"]["quality_iteration"] == 8
    policy = Scripted({"c": 5, "e": 3, "f": 2})
    decisions = simulate(policy, trials)
    # round-robin: every running trial's iteration 1, then iteration 2 ...
    assert policy.seen[:6] == [(t, 1) for t in "abcdef"]
    assert ("e", 4) not in policy.seen and ("c", 6) not in policy.seen
    s = score("scripted", trials, decisions, truth)
    assert (s["really_failing"], s["caught"], s["recall"]) == (2, 1, 0.5)
    assert (s["false_kills"], s["premature_kills"]) == (1, 1)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["median_delay_iterations"] == 1 and s["median_delay_pct_budget"] == 10.0
    assert s["median_lead"] == 1 and s["kills_before_quality"] == 1
    assert s["trial_iterations"] == 10 * 3 + 5 + 3 + 2 and s["budget_iterations"] == 60
    assert s["saved_pct"] == pytest.approx(100 * 20 / 60)
    rows = {r["trial"]: r for r in s["trials"]}
    assert rows["d"]["outcome"] == "ran" and rows["c"]["outcome"] == "caught"


def test_a_kill_after_the_quality_metric_has_a_negative_lead() -> None:
    trials = population_of_five()
    s = score("late", trials, simulate(Scripted({"c": 9}), trials), label(trials))
    row = next(r for r in s["trials"] if r["trial"] == "c")
    assert (row["delay"], row["lead"]) == (5, -3)


def test_the_heuristic_policy_reads_the_declared_training_loss(tmp_path) -> None:
    from heuristics.rules import load_rules

    rules_file = tmp_path / "r.yaml"
    name = "train_loss" if _engine_takes_vocabulary() else "loss"
    rules_file.write_text(f"groups:\n  - name: t\n    rules:\n      - name: big\n"
                          f"        expr: {name} > 1.1\n        for: 2\n        labels:\n"
                          f"          action: kill\n          failure: divergence\n")
    trials = population_of_five()
    result = policies.evaluate(trials, ("heuristic",), load_rules([str(rules_file)]))
    rows = {r["trial"]: r for r in result["policies"][0]["trials"]}
    assert rows["c"]["stop"] == 7 and rows["c"]["by"] == "big"  # 1.2 at 6, 1.5 at 7
    assert not any(rows[t]["stopped"] for t in "abdef")


def test_a_rule_that_fires_only_at_the_last_iteration_stops_nothing(tmp_path) -> None:
    """Tune completes a trial at its last iteration whatever a scheduler says, so such a kill
    saves nothing and is not scored as a catch (the Ray policies are scored the same way)."""
    from heuristics.rules import load_rules

    rules_file = tmp_path / "r.yaml"
    name = "train_loss" if _engine_takes_vocabulary() else "loss"
    rules_file.write_text(f"groups:\n  - name: t\n    rules:\n      - name: late\n"
                          f"        expr: {name} > 1.9\n        for: 2\n        labels:\n"
                          f"          action: kill\n          failure: divergence\n")
    trials = population_of_five()  # c: 2.0 from iteration 8: held for 2 at 9, the last is 10
    for budget, stop in ((10, 9), (9, None)):
        cut = [Trial(t.name, t.group, t.failure, t.onset, budget, t.metric, t.mode,
                     t.results[:budget], t.vocabulary) for t in trials]
        result = policies.evaluate(cut, ("heuristic",), load_rules([str(rules_file)]))
        rows = {r["trial"]: r for r in result["policies"][0]["trials"]}
        assert rows["c"]["stop"] == stop, budget


def _engine_takes_vocabulary() -> bool:
    import inspect

    from heuristics.engine import RuleEngine

    return "vocabulary" in inspect.signature(RuleEngine).parameters


def test_ray_schedulers_run_on_stub_trials() -> None:
    down = [1.0, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.42, 0.4]
    trials = [scripted("a", down), scripted("b", [v + 0.05 for v in down]),
              scripted("e", [v + 0.02 for v in down]), scripted("bad", [2.0] * 10, "x", 1)]
    result = policies.evaluate(trials, ("asha", "median"))
    median = {r["trial"]: r for r in result["policies"][1]["trials"]}
    # from its grace period on, the median of the others' running means (0.82) beats 2.0
    assert median["bad"]["stop"] == 3 and median["bad"]["by"] == "median"
    assert not median["a"]["stopped"]
    asha = result["policies"][0]
    assert asha["trial_iterations"] <= asha["budget_iterations"]
    assert not next(r for r in asha["trials"] if r["trial"] == "a")["stopped"]


def test_rules_wrapping_a_ray_scheduler_stop_first_and_leave_the_rest_to_it(tmp_path) -> None:
    from heuristics.rules import load_rules

    rules_file = tmp_path / "loss.yaml"
    rules_file.write_text("groups:\n  - name: t\n    rules:\n      - name: loss_high\n"
                          "        expr: train_loss > 5\n        labels:\n"
                          "          action: kill\n          failure: divergence\n")
    down = [1.0, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.42, 0.4]
    trials = [scripted("a", down), scripted("b", [v + 0.05 for v in down]),
              scripted("e", [v + 0.02 for v in down]),
              scripted("bad", [2.0] * 10, "x", 1),  # the median rule's, at its grace (3)
              scripted("spike", down[:1] + [9.0] * 9, "y", 2)]  # the rule's, at 2
    result = policies.evaluate(trials, ("heuristic+median",), load_rules([str(rules_file)]))
    rows = {r["trial"]: r for r in result["policies"][0]["trials"]}
    assert result["policies"][0]["policy"] == "heuristic+median"
    assert (rows["spike"]["stop"], rows["spike"]["by"]) == (2, "loss_high")
    assert (rows["bad"]["stop"], rows["bad"]["by"]) == (3, "median")
    assert not rows["a"]["stopped"]
    with pytest.raises(ValueError, match="heuristic\\+asha"):
        policies.make("heuristic+hyperband")
