"""Hook statistics against a slow reference computed directly from the activations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monitor.training.hooks import HealthMonitor, attach
from monitor.training.signals.power import power_db, power_loss, power_spectrum

pytestmark = pytest.mark.usefixtures("hook_path")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv1d(6, 4, 3, padding=1)
        self.act2 = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(4, 5)
        self.act3 = nn.PReLU()
        with torch.no_grad():
            self.conv.bias[:2] = -50.0  # two dead units
            self.conv.bias[2] = 50.0  # one evergreen unit

    def forward(self, x):
        h = self.act2(self.conv2(self.act(self.conv(x))))
        return self.act3(self.fc(h.mean(-1)))


def reference(outputs: list[torch.Tensor], unit_dim: int = 1) -> dict[str, float]:
    x = torch.cat([o.movedim(unit_dim, 0).reshape(o.shape[unit_dim], -1) for o in outputs], 1)
    x = x.double()
    pos = x > 0
    dead = (~pos.any(1)).double().mean().item()
    ever = pos.all(1).double().mean().item()
    return {"dead_ratio": dead, "evergreen_ratio": ever, "healthy_ratio": 1 - dead - ever,
            "activation_std": x.std(1, unbiased=False).mean().item(),
            "activation_mean": x.mean().item(),
            "nonfinite_count": float((~torch.isfinite(x)).sum())}


def record(model: nn.Module) -> tuple[dict[str, list[torch.Tensor]], list]:
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(
        o.detach().clone())) for n, m in model.named_modules() if n.startswith("act")]
    return seen, handles


def check(report: dict, seen: dict, **tol) -> None:
    for layer, outputs in seen.items():
        ref = reference(outputs)
        for signal, value in ref.items():
            assert report["layers"][layer][signal] == pytest.approx(value, **tol), (layer, signal)


def test_statistics_match_slow_reference():
    torch.manual_seed(0)
    model = Net()
    monitor = attach(model, every=1)
    seen, handles = record(model)
    for _ in range(3):
        monitor.step()
        model(torch.randn(4, 2, 16))
    report = monitor.collect()
    check(report, seen, rel=1e-4, abs=1e-6)
    assert set(report["layers"]) == {"act", "act2", "act3"}
    assert report["layers"]["act"]["dead_ratio"] == pytest.approx(2 / 6)
    assert report["layers"]["act"]["evergreen_ratio"] == pytest.approx(1 / 6)
    assert report["sampled_steps"] == 3
    for h in handles:
        h.remove()


def test_window_resets_after_collect():
    model = Net()
    monitor = attach(model, every=1)
    monitor.step()
    model(torch.randn(2, 2, 8))
    monitor.collect()
    seen, _ = record(model)
    monitor.step()
    model(torch.randn(2, 2, 8))
    check(monitor.collect(), seen, rel=1e-4, abs=1e-6)


def test_sampling_schedule_measures_every_nth_step_only():
    model = Net()
    monitor = HealthMonitor(model, every=3)
    seen, _ = record(model)
    sampled_steps = []
    for step in range(7):
        sampled = monitor.step()
        assert sampled == (step % 3 == 0)
        model(torch.randn(2, 2, 8) * (step + 1))
        if sampled:
            sampled_steps.append(step)
    report = monitor.collect()
    assert report["sampled_steps"] == 3
    check(report, {k: [v[i] for i in sampled_steps] for k, v in seen.items()}, rel=1e-4,
          abs=1e-6)


def test_no_grad_eval_and_paused():
    model = Net().eval()
    monitor = attach(model, every=1)
    seen, _ = record(model)
    with torch.no_grad():
        monitor.step()
        model(torch.randn(3, 2, 8))
        with monitor.paused():
            model(torch.randn(3, 2, 8) * 100)  # not measured
    seen = {k: v[:1] for k, v in seen.items()}
    check(monitor.collect(), seen, rel=1e-4, abs=1e-6)


def test_autocast_bfloat16():
    model = Net()
    monitor = attach(model, every=1)
    seen, _ = record(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monitor.step()
        model(torch.randn(4, 2, 16))
    report = monitor.collect()
    assert seen["act"][0].dtype == torch.bfloat16
    check(report, seen, rel=2e-2, abs=1e-2)


def test_nan_inputs_are_counted_not_hidden():
    model = Net()
    monitor = attach(model, every=1)
    x = torch.randn(2, 2, 8)
    x[0, 0, 3] = float("nan")
    monitor.step()
    model(x)
    report = monitor.collect()
    assert report["layers"]["act"]["nonfinite_count"] > 0
    assert math.isnan(report["layers"]["act"]["activation_std"])


def test_no_host_sync_in_hooks(monkeypatch):
    """Hooks must not call .item()/.cpu()/.tolist() (on an accelerator they would wait for
    the device); only collect() reads values."""
    model = Net()
    monitor = attach(model, every=1)
    calls = []
    for name in ("item", "cpu", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (
            calls.append(_n), _o(self, *a, **k))[1])
    for _ in range(2):
        monitor.step()
        model(torch.randn(2, 2, 8))
    assert calls == []
    monitor.collect()
    assert calls == ["cpu", "tolist"]


def test_hooks_are_registered_only_on_sampled_steps_and_close_removes_them():
    model = Net()
    monitor = attach(model, taps=("fc",), every=2)
    assert set(monitor.probes) == {"act", "act2", "act3", "fc"}
    # below the root, which keeps one pre- and one post-hook (they notice torch.compile)
    hooked = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks)  # noqa: E731
                         for m in model.modules() if m is not model)
    measured = lambda: {n for n, m in model.named_modules()  # noqa: E731
                        if m is not model and m._forward_hooks}
    assert hooked() == 0  # before the first step nothing is sampled
    assert len(model._forward_hooks) == len(model._forward_pre_hooks) == 1
    assert monitor.step() and measured() >= {"act", "act2", "act3", "fc"}
    model(torch.randn(2, 2, 8))  # the first sampled forward looks for activation calls
    assert not monitor.step() and hooked() == 0  # unsampled: PyTorch's hook-free path
    assert monitor.step() and hooked() == 4  # no activation call found: the layers only
    assert len(monitor.handles) == 6  # and the root's two
    with monitor.paused():
        assert hooked() == 0
    assert hooked() == 4
    monitor.remove_hooks()
    assert hooked() == 0 and not model._forward_hooks and not model._forward_pre_hooks
    monitor.step()
    monitor.step()
    assert hooked() == 0  # removed stays removed across steps
    monitor.reopen()
    assert hooked() == 4
    monitor.close()
    assert hooked() == 0 and not model._forward_hooks and not model._forward_pre_hooks


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        HealthMonitor(Net(), every=0)
    with pytest.raises(ValueError, match="taps not found"):
        HealthMonitor(Net(), taps=("nope",))


def test_power_signals_match_definition():
    model = Net()
    monitor = attach(model, every=1)
    out, tgt = torch.randn(3, 2048) * 0.1, torch.randn(3, 2048)
    monitor.step()
    monitor.observe_output(out, tgt)
    m = monitor.collect()["model"]
    phi_o, phi_t = power_spectrum(out), power_spectrum(tgt)
    assert m["power_loss"] == pytest.approx(power_loss(phi_o, phi_t).item(), rel=1e-4)
    assert m["output_power_db"] == pytest.approx(power_db(phi_o.mean(0)).item(), abs=1e-3)
    assert m["power_ratio_db"] == pytest.approx(-20.0, abs=0.5)  # 0.1 amplitude = -20 dB
