"""Issue 25, property-based: whatever a training hands to ``LoopMonitor.report`` or
``tune.report`` (any JSON value, numpy and torch scalars and 0-d arrays, huge and non-finite
numbers, odd keys and names, garbage health blocks), ``report`` either takes it or refuses it
with a clear ``ValueError``/``TypeError`` before recording anything; under Tune the driver
(scheduler, callbacks, exporter, store, Grafana annotator) never raises and a bad result is
left out with a one-line notice; ``close()`` and the summary never raise, no other trial's
data is lost, a non-finite loss of any numeric type is killed by ``divergence``, and no
Grafana password or token reaches any file, pickle or line printed. The same conversion
(``heuristics.results.clean_result``) serves the loop, the Tune scheduler and callbacks (real
Tune runs: ``test_reliability_tune.py``)."""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import tempfile
from decimal import Decimal
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.utils import flatten_dict

import monitor
from heuristics.engine import RuleEngine
from heuristics.results import clean_result, number
from heuristics.rules import load_rules
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
lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
odd_text = st.text(st.one_of(st.characters(), lone_surrogates), max_size=4)
names = st.one_of(st.text(max_size=12), st.text(st.characters(codec=None), max_size=4), odd_text,
                  st.sampled_from(["health", "health/layers/x/dead_ratio", "health/model",
                                   "training_iteration", "time_total_s", "loss", "val_loss",
                                   "max_iterations",
                                   "a/b", "", "\udcff", "x\ny"]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers_, st.text(max_size=8), odd_text),
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
    Decimal("sNaN"), np.longdouble("nan"), np.array(np.longdouble("inf")),
    np.array(Decimal("NaN"), dtype=object), 10 ** 400, -10 ** 400])
REFUSALS = ("LoopMonitor.report: metrics:", "LoopMonitor.report: trial:",
            "LoopMonitor.report: iteration:")


@functools.cache
def _builtin_rules() -> list:
    """The built-in rules, read once (0.4 s a time)."""
    return load_rules(["builtin"])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile=st.lists(reports, min_size=1, max_size=3), nan=NAN_LOSSES)
def test_nothing_a_training_reports_breaks_the_loop_monitor(hostile, nan):
    with tempfile.TemporaryDirectory() as storage:
        run = monitor.LoopMonitor("prop", signals=VOCAB, rules=_builtin_rules(), budget=20,
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
        assert all("\n" not in notice for notice in summary["notices"])  # one line each
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
    assert set(again) == set(cleaned)  # only a number as text (kept) is said again
    assert all("is text, not a number" in p for p in problems), problems


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=100, deadline=None)
@given(results=st.lists(st.dictionaries(keys, json_values, max_size=6), max_size=4),
       nan=NAN_LOSSES)
def test_the_rule_engine_reads_any_raw_result(results, nan):
    """``RuleEngine.observe`` (which replay and rule changes call too) reads a result nobody
    cleaned: it never raises, and a later NaN loss is still killed by ``divergence``."""
    engine = RuleEngine(_builtin_rules(), "prop", None, False, VOCAB)
    earlier = [v for result in results for v in engine.observe("t", result) if v.stops]
    verdicts = engine.observe("t", {"loss": nan, "val_loss": 0.5})
    if earlier:  # killed already (a huge loss is inf): once, and not again
        assert len(earlier) == 1 and verdicts == [] and engine.killed("t") is not None
    else:
        assert [v.rule for v in verdicts if v.stops] == ["divergence"]


SECRET, TOKEN = "s3cretPASS", "glsa_T0KENsecret"
GRAFANA_URLS = st.sampled_from([  # every form: with and without // or a scheme, broken IPv6
    f"http://admin:{SECRET}@127.0.0.1:9", f"admin:{SECRET}@127.0.0.1:9",
    f"http:/admin:{SECRET}@127.0.0.1:9", f"http://u:{SECRET}@[::1", f"http://admin:{SECRET}"])
tune_results = st.fixed_dictionaries({
    "metrics": st.dictionaries(names, json_values, max_size=5),
    "health": health_blocks,
    "variant": st.one_of(st.none(), names, st.integers(), st.lists(names, max_size=2))})


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class _Driver:
    """Tune's driver around one ``TuneMonitor``, as Ray 2.60 calls it: the scheduler gets the
    flattened result, then every callback the nested one (the same dict for all)."""

    def __init__(self, mon: monitor.TuneMonitor) -> None:
        self.mon, self.controller = mon, mock.MagicMock()
        mon.scheduler.set_search_properties("val_loss", "min")
        for callback in mon.callbacks:
            callback.setup()
        self.trials: list[Trial] = []

    def add(self, variant: object = None) -> Trial:
        config = {} if variant is None else {"variant": {"name": variant}}
        trial = Trial("__fake", config=config, stub=True)
        self.trials.append(trial)
        self.mon.scheduler.on_trial_add(self.controller, trial)
        self.mon.store_callback.on_trial_start(0, self.trials, trial)
        return trial

    def result(self, trial: Trial, result: dict) -> str | None:
        try:
            flat = flatten_dict(dict(result))
        except Exception:  # noqa: BLE001 - Tune itself refuses it before any monitor code
            return None
        decision = self.mon.scheduler.on_trial_result(self.controller, trial, flat)
        assert decision in (TrialScheduler.CONTINUE, TrialScheduler.STOP)
        for callback in self.mon.callbacks:
            callback.on_trial_result(0, self.trials, trial, result)
        # Tune's own loggers come next, with the same dict: they index training_iteration and
        # take numbers as floats (Ray's TensorBoard logger raised on both).
        assert type(result.get("training_iteration")) is int
        assert all(number(v) is None or type(v) in (float, int) for v in result.values())
        trial.run_metadata.last_result = result  # as Tune keeps it
        return decision

    def end(self) -> dict:
        for trial in self.trials:
            for callback in self.mon.callbacks:
                callback.on_trial_complete(0, self.trials, trial)
        for callback in self.mon.callbacks:
            callback.on_experiment_end(self.trials)
        return self.mon.summary()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(hostile=st.lists(tune_results, min_size=1, max_size=3), nan=NAN_LOSSES, url=GRAFANA_URLS)
def test_nothing_a_trial_reports_breaks_the_tune_driver_or_leaks_a_secret(hostile, nan, url,
                                                                           capfd):
    """The scheduler, the store and exporter callbacks and the summary as Tune drives them
    (stub trials, no cluster: the real Tune runs are in ``test_reliability_tune.py``)."""
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    env = {"GRAFANA_URL": url, "GRAFANA_TOKEN": TOKEN}
    try:
        with tempfile.TemporaryDirectory() as storage, mock.patch.dict(os.environ, env):
            mon = monitor.TuneMonitor("prop", signals=VOCAB, rules=_builtin_rules(), budget=20,
                                      storage=storage)
            driver = _Driver(mon)
            anchor, steady = driver.add("anchor"), 0

            def step() -> None:
                nonlocal steady
                steady += 1
                assert driver.result(anchor, {"loss": 1.0 / steady, "val_loss": 0.5,
                                              "training_iteration": steady,
                                              "time_total_s": float(steady)}) == "CONTINUE"

            step()
            for n, call in enumerate(hostile, 1):
                trial = driver.add(call["variant"])
                result = {"training_iteration": n, "time_total_s": float(n), **call["metrics"]}
                if call["health"] is not None:
                    result["health"] = call["health"]
                driver.result(trial, result)
                step()
            nan_trial = driver.add("nan")
            for i in (1, 2):
                assert driver.result(nan_trial, {"loss": 0.5, "val_loss": 0.5,
                                                 "training_iteration": i}) == "CONTINUE"
            assert driver.result(nan_trial, {"loss": nan, "val_loss": 0.5,
                                             "training_iteration": 3}) == "STOP"
            blob = pickle.dumps((mon.scheduler, mon.callbacks))  # what tuner.pkl holds
            summary = driver.end()
            assert all("\n" not in notice for notice in summary["notices"])  # one line each
            trials = {t["trial_id"]: t for t in summary["trials"]}
            assert trials[anchor.trial_id]["iterations"] == steady
            assert trials[nan_trial.trial_id]["killed"]["rule"] == "divergence"
            with RunStore(mon.run_dir, create=False) as store:
                assert len(store.results(anchor.trial_id)) == steady
            files = [p for p in Path(storage).rglob("*") if p.is_file()]
            assert any(p.name == "summary.json" for p in files)
            for data in [blob, *(p.read_bytes() for p in files)]:
                assert SECRET.encode() not in data and TOKEN.encode() not in data
    finally:
        logging.getLogger().removeHandler(lines)
    captured = capfd.readouterr()
    printed = "\n".join([captured.out, captured.err, *lines.lines])
    assert "could not post the kill" in printed
    assert SECRET not in printed and TOKEN not in printed
