"""Issue 25, property-based: whatever a training hands to ``LoopMonitor.report`` (any JSON value,
numpy and torch scalars and 0-d arrays, huge and non-finite numbers, odd keys and names,
garbage health blocks), ``report`` either takes it or refuses it with a clear
``ValueError``/``TypeError`` before recording anything, ``close()`` never raises, no other
trial's data is lost, and a non-finite loss of any numeric type is killed by ``divergence``.
The same conversion (``heuristics.results.clean_result``) serves the Tune scheduler and
callbacks (real Tune runs: ``test_reliability_tune.py``)."""

from __future__ import annotations

import math
import tempfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import monitor
from heuristics.results import clean_result, number
from monitor.store import RunStore

VOCAB = monitor.Vocabulary(train_loss="loss", validation="val_loss", mode="min")

floats = st.floats(allow_nan=True, allow_infinity=True)
numbers_ = st.one_of(
    st.integers(min_value=-10 ** 500, max_value=10 ** 500), floats,
    floats.map(np.float32), floats.map(np.float16), floats.map(np.float64),
    floats.map(np.array), floats.map(torch.tensor),
    floats.map(lambda x: torch.tensor(x, dtype=torch.bfloat16)),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1).map(np.int64))
names = st.one_of(st.text(max_size=12), st.text(st.characters(codec=None), max_size=4),
                  st.sampled_from(["health", "health/layers/x/dead_ratio", "health/model",
                                   "training_iteration", "time_total_s", "loss", "val_loss",
                                   "a/b", "", "\udcff", "x\ny"]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers_, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
keys = st.one_of(names, st.integers(), st.tuples(st.integers()), st.none())
health_blocks = st.one_of(
    st.none(), json_values,
    st.fixed_dictionaries({}, optional={
        "layers": st.one_of(json_values, st.dictionaries(
            names, st.one_of(json_values, st.dictionaries(names, json_values, max_size=3)),
            max_size=3)),
        "model": st.one_of(json_values, st.dictionaries(names, json_values, max_size=3)),
        "sampled_steps": numbers_}))
reports = st.fixed_dictionaries({
    "metrics": st.one_of(st.dictionaries(keys, json_values, max_size=5), json_values),
    "health": health_blocks,
    "trial": st.one_of(st.sampled_from(["t", "x y", "[red]t", "t\udcff", "", "a\nb"]),
                       st.text(max_size=6), st.integers()),
    "iteration": st.one_of(st.none(), st.integers(min_value=-5, max_value=2 ** 64),
                           floats, st.just(True))})
NAN_LOSSES = st.sampled_from([
    float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float16("inf"),
    np.float64("nan"), np.array(float("nan")), torch.tensor(float("nan")),
    torch.tensor(float("inf"), dtype=torch.float16), Decimal("NaN"), Decimal("-Infinity"),
    10 ** 400, -10 ** 400])
REFUSALS = ("LoopMonitor.report: metrics:", "LoopMonitor.report: trial:",
            "LoopMonitor.report: iteration:")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile=st.lists(reports, min_size=1, max_size=3), nan=NAN_LOSSES)
def test_nothing_a_training_reports_breaks_the_loop_monitor(hostile, nan):
    with tempfile.TemporaryDirectory() as storage:
        run = monitor.LoopMonitor("prop", signals=VOCAB, rules=["builtin"], budget=20,
                                  storage=storage)
        anchor = 0

        def steady() -> None:
            nonlocal anchor
            anchor += 1
            assert not run.report({"loss": 1.0 / anchor, "val_loss": 0.5}, trial="anchor").stop

        steady()
        steady()
        for call in hostile:
            try:
                run.report(call["metrics"], health=call["health"], trial=call["trial"],
                           iteration=call["iteration"])
            except (ValueError, TypeError) as exc:  # a refusal, saying what was expected
                assert str(exc).startswith(REFUSALS), exc
            steady()
        for _ in range(2):
            assert not run.report({"loss": 0.5, "val_loss": 0.5}, trial="nan").stop
        decision = run.report({"loss": nan, "val_loss": 0.5}, trial="nan")
        assert decision.stop and decision.rule == "divergence"
        summary = run.close()  # never raises
        trials = {t["trial_id"]: t for t in summary["trials"]}
        assert trials["anchor"]["status"] == "TERMINATED"
        assert trials["nan"]["status"] == "KILLED"
        with RunStore(Path(run.run_dir), create=False) as store:
            stored = {t["trial_id"]: t["iterations"] for t in store.trials()}
            assert len(store.results("anchor")) == anchor
        assert stored["anchor"] == anchor and stored["nan"] == 3


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=300, deadline=None)
@given(result=st.dictionaries(keys, json_values, max_size=8), health=health_blocks)
def test_a_cleaned_result_holds_only_what_every_reader_takes(result, health):
    """``clean_result``: text keys, numbers as floats (ints in range may stay), a health block
    of the shape ``HealthMonitor.collect()`` gives, iteration and time valid; and cleaning
    twice changes nothing."""
    if health is not None:
        result = {**result, "health": health}
    cleaned, _ = clean_result(result)
    for key, value in cleaned.items():
        assert isinstance(key, str) and key.encode("utf-8") is not None
        assert number(value) is None or type(value) in (float, int)
    if "training_iteration" in cleaned:
        assert type(cleaned["training_iteration"]) is int
        assert 0 <= cleaned["training_iteration"] < 2 ** 53
    if "time_total_s" in cleaned:
        assert math.isfinite(cleaned["time_total_s"])
    block = cleaned.get("health")
    if block is not None:
        assert isinstance(block, dict)
        for layer, signals in block.get("layers", {}).items():
            assert isinstance(layer, str) and all(type(v) is float for v in signals.values())
        assert all(type(v) is float for v in block.get("model", {}).values())
    again, problems = clean_result(cleaned)
    assert problems == [] and set(again) == set(cleaned)
