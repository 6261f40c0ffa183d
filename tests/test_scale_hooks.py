"""Hooks at scale: large activations (chunked paths), long windows (folded partials), the
default sampling, and no activation-sized temporary (peak memory of a real forward pass)."""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from monitor.training.hooks import DEFAULT_EVERY, HealthMonitor, attach
from monitor.training.signals import FOLD_AT, release_scratch
from monitor.training.signals.units import module_dead_band
from tests.test_hooks import Net, check, record

pytestmark = pytest.mark.usefixtures("hook_path")


def test_attach_samples_one_step_in_four_by_default():
    monitor = attach(Net())
    assert monitor.every == DEFAULT_EVERY == 4
    assert [monitor.step() for _ in range(8)] == [True, False, False, False] * 2


def test_long_window_is_folded_and_still_exact():
    torch.manual_seed(1)
    model = Net()
    monitor = attach(model, every=1)
    seen, _ = record(model)
    for i in range(FOLD_AT + 9):
        monitor.step()
        model(torch.randn(3, 2, 8) * (1 + i % 5) + i % 3)
    report = monitor.collect()
    assert report["sampled_steps"] == FOLD_AT + 9
    check(report, seen, rel=1e-4, abs=1e-6)


def reference(x: torch.Tensor, unit_dim: int,
              band: tuple[float, float] = (-math.inf, 0.0)) -> dict[str, float]:
    """The signals by definition; a unit is dead when all its outputs lie in ``band`` (the
    activation's flat region; ReLU: never positive)."""
    units = x.double().movedim(unit_dim, 0).reshape(x.shape[unit_dim], -1)
    positive = units > 0
    in_band = ~((units > band[1]) | (units < band[0]))
    return {"dead_ratio": in_band.all(1).double().mean().item(),
            "evergreen_ratio": positive.all(1).double().mean().item(),
            "activation_std": units.std(1, unbiased=False).mean().item(),
            "activation_mean": units.mean().item(),
            "nonfinite_count": float((~torch.isfinite(units)).sum())}


def tapped(unit_dims: dict[str, int] | None = None) -> tuple[nn.Module, HealthMonitor]:
    model = nn.Sequential()
    model.add_module("act", nn.Identity())
    return model, HealthMonitor(model, every=1, taps=("act",), unit_dims=unit_dims)


LAYOUTS = {  # name -> (activation, unit dim): above the one-pass and chunk thresholds
    "conv": (lambda: torch.randn(4, 16, 40000), 1),
    "linear_last": (lambda: torch.randn(2, 5000, 128), -1),
    "strided": (lambda: torch.randn(16, 20000, 8).transpose(1, 2), 1),  # not contiguous
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_large_activations_match_reference(layout):
    torch.manual_seed(0)
    make, unit_dim = LAYOUTS[layout]
    x = make()
    units = x.movedim(unit_dim, 1)
    units[:, 5] = units[:, 5].abs() + 2.0  # an evergreen unit
    units[:, 6] = -units[:, 6].abs() - 1.0  # a dead unit
    model, monitor = tapped({"act": unit_dim})
    for scale in (1.0, 0.5):
        monitor.step()
        model(x * scale)
    report = monitor.collect()["layers"]["act"]
    expected = reference(torch.cat([x, x * 0.5], 0), unit_dim)
    for signal, value in expected.items():
        assert report[signal] == pytest.approx(value, rel=1e-4, abs=1e-6), signal


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_large_activations_count_every_nonfinite_value(layout):
    make, unit_dim = LAYOUTS[layout]
    x = make()
    x[0, 3, 7] = math.nan
    x[1, 2, 9] = math.inf
    x[-1, -1, -1] = -math.inf
    model, monitor = tapped({"act": unit_dim})
    monitor.step()
    model(x)
    report = monitor.collect()["layers"]["act"]
    assert report["nonfinite_count"] == 3.0
    assert math.isnan(report["activation_std"])


def test_large_bfloat16_activation_matches_reference():
    torch.manual_seed(0)
    x = (torch.randn(4, 16, 40000) + torch.linspace(-3, 3, 16).view(1, 16, 1)).bfloat16()
    model, monitor = tapped()
    monitor.step()
    model(x)
    report = monitor.collect()["layers"]["act"]
    expected = reference(x, 1)
    for signal, value in expected.items():
        assert report[signal] == pytest.approx(value, rel=1e-2, abs=1e-3), signal


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc peak RSS")
def test_hooks_add_no_activation_sized_memory():
    """The peak resident memory of a forward pass over a 128 MiB ReLU output grows by less
    than 5% of it when the pass is sampled (the old hooks' scratch doubled it)."""
    model = nn.Sequential(nn.ReLU())
    monitor = HealthMonitor(model, every=1)
    monitor.step()
    model(torch.randn(2, 8, 1 << 17))  # loads every kernel's code once
    monitor.collect()
    release_scratch()  # its shared chunk buffer counts in the sampled pass below
    x = torch.randn(8, 64, 1 << 16)  # 128 MiB
    mib = x.numel() * 4 / 2**20

    def peak(sampled: bool) -> float:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak to the current RSS
        monitor.step()
        if sampled:
            y = model(x)
        else:
            with monitor.paused():
                y = model(x)
        del y
        return _peak_rss_mib()

    baseline = min(peak(False) for _ in range(2))
    sampled = max(peak(True) for _ in range(2))
    monitor.close()
    assert sampled - baseline < 0.05 * mib, (baseline, sampled)


class InPlaceAfterReLU(nn.Module):
    """A ReLU whose output the model changes in place right after the hook ran."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(x)
        h.mul_(-1.0)  # everything the hook saw as positive is now negative
        return h


def test_output_modified_in_place_is_never_measured_wrong(caplog, hook_path):
    torch.manual_seed(0)
    model = InPlaceAfterReLU()
    monitor = HealthMonitor(model, every=1)
    seen: list[torch.Tensor] = []
    model.act.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        for _ in range(3):
            monitor.step()
            model(torch.randn(4, 3, 8))
    report = monitor.collect()
    assert report["sampled_steps"] == 3
    if hook_path == "one_pass":  # measured in the hook, before the change
        assert "modified in place" not in caplog.text
        expected = reference(torch.cat(seen, 0), 1)
    else:  # measured later in a batch: the changed sample is lost, not faked
        assert "modified in place" in caplog.text
        expected = reference(torch.cat(seen[1:], 0), 1)
    for signal, value in expected.items():
        assert report["layers"]["act"][signal] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_many_small_layers_batched_match_reference():
    torch.manual_seed(0)
    widths = [16, 16, 32] * 7  # groups of several shapes, more layers than one batch holds
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers += [nn.Linear(widths[i - 1] if i else 8, w), nn.ReLU()]
    model = nn.Sequential(*layers)
    monitor = HealthMonitor(model, every=1)
    seen: dict[str, list[torch.Tensor]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, []).append(
                o.detach().clone()))
    for _ in range(3):
        monitor.step()
        model(torch.randn(5, 8)).sum().backward()
    report = monitor.collect()
    assert set(report["layers"]) == set(seen)
    for name, outputs in seen.items():
        expected = reference(torch.cat(outputs, 0), 1)
        for signal, value in expected.items():
            assert report["layers"][name][signal] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_small_bfloat16_layers_batched_match_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    monitor = HealthMonitor(model, every=1)
    seen: list[torch.Tensor] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monitor.step()
        model(torch.randn(32, 8) + 1.0)
    assert seen[0].dtype == torch.bfloat16
    report = monitor.collect()["layers"]["1"]
    for signal, value in reference(seen[0], 1).items():
        assert report[signal] == pytest.approx(value, rel=1e-3, abs=1e-4), signal


class MixedSmallLayers(nn.Module):
    """Small layers of several activation families (some outputs negative), and a tapped
    near-constant output (mean 100, spread ~1e-3) whose spread only a shift keeps."""

    def __init__(self) -> None:
        super().__init__()
        acts = [kind() for kind in (nn.ReLU, nn.GELU, nn.LeakyReLU, nn.SiLU, nn.ReLU6) * 2]
        self.fcs = nn.ModuleList(nn.Linear(16, 16) for _ in acts)
        self.acts = nn.ModuleList(acts)
        self.level = nn.Identity()

    def forward(self, x):
        level = self.level(100.0 + 1e-2 * x)
        for fc, act in zip(self.fcs, self.acts):
            x = act(fc(x))
        return x + level.mean()


def test_batches_split_at_the_limit_and_mixed_signs_match_reference(monkeypatch):
    from monitor.training import hooks

    monkeypatch.setattr(hooks, "CHUNK", 256)  # three 5 x 16 layers per batch
    monkeypatch.setattr(hooks.SmallLayerBatch, "LIMIT", 256)
    torch.manual_seed(0)
    model = MixedSmallLayers()
    monitor = HealthMonitor(model, every=1, taps=("level",))
    seen: dict[str, list[torch.Tensor]] = {}
    for name in monitor.probes:
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, n=name: seen.setdefault(n, []).append(o.detach().double()))
    for i in range(4):
        monitor.step()
        model(torch.randn(5, 16) * (1 + i)).sum().backward()
    report = monitor.collect()["layers"]
    assert set(report) == set(seen) and len(seen) == 11
    for name, outputs in seen.items():
        band = (module_dead_band(model.get_submodule(name))
                if monitor.probes[name].kind == "activation" else (-math.inf, 0.0))
        for signal, value in reference(torch.cat(outputs, 0), 1, band).items():
            assert report[name][signal] == pytest.approx(value, rel=1e-3, abs=1e-6), (
                name, signal)
    assert report["level"]["activation_std"] > 1e-4  # not lost to float32 cancellation


def test_batched_small_layers_count_nonfinite_values():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU())
    monitor = HealthMonitor(model, every=1)
    x = torch.randn(6, 4)
    monitor.step()
    model(x)
    x[2, 1] = math.nan  # one sample's row becomes NaN in every layer after it
    monitor.step()
    model(x)
    report = monitor.collect()["layers"]
    assert report["1"]["nonfinite_count"] == 8.0
    assert report["3"]["nonfinite_count"] == 8.0
    assert math.isnan(report["1"]["activation_std"])
