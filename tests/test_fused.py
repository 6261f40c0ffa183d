"""The one-pass CPU kernels (monitor/training/signals/fused.py) against a slow reference:
windows that reuse their arrays, outputs that change shape or dtype within a window, NaN after
the first step, float64 and channel layouts, and the fallback where the kernels cannot compile."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from monitor.training.hooks import HealthMonitor
from monitor.training.signals import fused
from tests.test_scale_hooks import reference

pytestmark = pytest.mark.skipif(not fused.available(), reason=fused.unavailable_reason())


def tap() -> tuple[nn.Module, HealthMonitor]:
    model = nn.Sequential()
    model.add_module("act", nn.Identity())
    return model, HealthMonitor(model, every=1, taps=("act",))


def feed(model: nn.Module, monitor: HealthMonitor, xs: list[torch.Tensor]) -> dict:
    for x in xs:
        monitor.step()
        model(x)
    return monitor.collect()["layers"]["act"]


def assert_matches(report: dict, xs: list[torch.Tensor], **tol) -> None:
    for signal, value in reference(torch.cat([x.double() for x in xs], 0), 1).items():
        assert report[signal] == pytest.approx(value, nan_ok=True, **tol), signal


def test_each_window_is_measured_alone_in_reused_arrays():
    torch.manual_seed(0)
    model, monitor = tap()
    first = [torch.randn(8, 32) * 5 + 3 for _ in range(3)]
    second = [torch.randn(8, 32).relu() for _ in range(2)]
    assert_matches(feed(model, monitor, first), first, rel=1e-5, abs=1e-7)
    assert monitor.probes["act"].fused.shape == torch.Size([8, 32])  # the direct path
    assert_matches(feed(model, monitor, second), second, rel=1e-5, abs=1e-7)


def test_outputs_that_change_shape_or_dtype_within_a_window():
    torch.manual_seed(1)
    model, monitor = tap()
    xs = [torch.randn(8, 16), torch.randn(3, 16) + 2, torch.randn(8, 16).double(),
          torch.randn(8, 16).bfloat16().float(), torch.randn(5, 16).bfloat16()]
    assert_matches(feed(model, monitor, xs), xs, rel=1e-3, abs=1e-5)


def test_nan_after_the_first_step_is_counted_and_spreads_to_std():
    model, monitor = tap()
    xs = [torch.rand(4, 6) + 1.0 for _ in range(3)]  # every unit evergreen
    xs[2][1, 2] = math.nan
    xs[2][3, 4] = math.inf
    report = feed(model, monitor, xs)
    assert report["nonfinite_count"] == 2.0
    assert math.isnan(report["activation_std"])
    # the NaN unit is neither positive nor evergreen (NaN extremes, as amin/amax give);
    # the unit that saw +inf is still evergreen
    assert report["evergreen_ratio"] == pytest.approx(5 / 6)
    assert report["dead_ratio"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_layout_matches_reference(dtype):
    torch.manual_seed(2)
    model, monitor = tap()
    xs = [(torch.randn(3, 7, 50) + torch.linspace(-2, 2, 7).view(1, 7, 1)).to(dtype)
          for _ in range(3)]
    xs[0][:, 0] = -1.0  # a dead channel
    report = feed(model, monitor, xs)
    for signal, value in reference(torch.cat(xs, 0).double(), 1).items():
        assert report[signal] == pytest.approx(value, rel=1e-5, abs=1e-7), signal
    assert monitor.probes["act"].fused.rank == 3


def test_long_rows_split_into_spans_and_nan_in_a_span_match_reference():
    torch.manual_seed(5)
    model, monitor = tap()
    xs = [torch.randn(2, 3, 3 * fused.SPAN + 17) * 3 + 100 for _ in range(3)]  # 4 spans
    report = feed(model, monitor, xs)
    for signal, value in reference(torch.cat(xs, 0).double(), 1).items():
        assert report[signal] == pytest.approx(value, rel=1e-5, abs=1e-6), signal
    xs[1][1, 2, fused.SPAN + 5] = math.nan  # inside the second span of unit 2
    report = feed(model, monitor, xs)
    assert report["nonfinite_count"] == 1.0
    assert report["evergreen_ratio"] == pytest.approx(2 / 3)  # the NaN unit is not


@pytest.mark.parametrize("shape", [(3, 6, 5, 4), (4, 9, 1, 1)])
def test_channels_last_and_single_position_outputs_take_the_kernel(shape):
    """A channels-last conv output (units innermost in memory) and [batch, units, 1, 1]
    are read by the one-pass kernel, not copied or sent to the vectorised ops."""
    torch.manual_seed(6)
    model, monitor = tap()
    xs = [(torch.randn(*shape) + torch.linspace(-3, 3, shape[1]).view(1, -1, 1, 1))
          .contiguous(memory_format=torch.channels_last) for _ in range(3)]
    report = feed(model, monitor, xs)
    expected = reference(torch.cat([x.flatten(2) for x in xs], 0).double(), 1)
    for signal, value in expected.items():
        assert report[signal] == pytest.approx(value, rel=1e-5, abs=1e-7), signal
    assert monitor.probes["act"].fused.units == shape[1]  # measured in the kernel's arrays


def test_without_kernels_the_hooks_fall_back_and_say_why(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused, "_KERNELS", {})
    monkeypatch.setattr(fused, "_units_last", broken)
    monkeypatch.setattr(fused, "_REASON", "")  # restored after the test
    torch.manual_seed(3)
    model, monitor = tap()
    xs = [torch.randn(6, 10) for _ in range(2)]
    with caplog.at_level(logging.WARNING):
        report = feed(model, monitor, xs)
    assert "no compiler here" in caplog.text
    assert not fused.available()
    assert_matches(report, xs, rel=1e-5, abs=1e-7)


def test_kernels_work_where_numba_finds_no_writable_cache_directory(monkeypatch):
    """A read-only install with an unwritable home: numba refuses ``cache=True`` at import
    (checked by hand as user nobody); the kernels are then compiled without a disk cache."""
    import importlib

    import numba

    real = numba.njit

    def refusing(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", refusing)
    try:
        importlib.reload(fused)
        assert type(fused._units_last._cache).__name__ == "NullCache"
        torch.manual_seed(4)
        model, monitor = tap()
        xs = [torch.randn(5, 12) for _ in range(2)]
        assert_matches(feed(model, monitor, xs), xs, rel=1e-5, abs=1e-7)
        assert monitor.probes["act"].fused.shape is not None  # measured by the kernels
    finally:
        monkeypatch.undo()
        importlib.reload(fused)
    assert type(fused._units_last._cache).__name__ != "NullCache"
