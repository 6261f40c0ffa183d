"""Dead units per activation kind: a smooth activation's unit is dead only when pinned in its
flat region (no gradient), not merely when its output is never positive."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from monitor.training.hooks import attach
from monitor.training.signals.units import dead_band


class Biased(nn.Module):
    """Four units whose pre-activations sit at fixed offsets: -0.5 (negative, but SiLU/GELU
    still pass gradient there), -10 (flat region), +3 (always positive), around 0."""

    def __init__(self, activation: nn.Module | None = None, function=None) -> None:
        super().__init__()
        self.act, self.function = activation, function

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        x = torch.stack([-0.5 + 0.1 * noise[:, 0].tanh(), -10 + noise[:, 1],
                         3 + 0.1 * noise[:, 2].tanh(), noise[:, 3]], dim=1)
        return self.act(x) if self.act is not None else self.function(x)


def classes(model: nn.Module) -> dict[str, float]:
    health = attach(model, every=1)
    health.step()
    model(torch.randn(256, 4))
    (layer,) = health.collect()["layers"].values()
    health.close()
    return layer


@pytest.mark.parametrize("activation", [nn.SiLU(), nn.GELU(), nn.Mish(),
                                        nn.GELU(approximate="tanh")])
def test_smooth_units_that_pass_gradient_are_not_dead(activation):
    layer = classes(Biased(activation))
    assert layer["dead_ratio"] == 0.25  # only the unit at -10
    assert layer["evergreen_ratio"] == 0.25


def test_relu_units_that_are_never_positive_are_dead():
    assert classes(Biased(nn.ReLU()))["dead_ratio"] == 0.5  # -0.5 and -10


@pytest.mark.parametrize("function", [F.silu, F.gelu, torch.nn.functional.mish])
def test_activation_calls_use_the_band_of_their_function(function):
    assert classes(Biased(function=function))["dead_ratio"] == 0.25


def test_elu_units_are_dead_at_their_negative_saturation():
    layer = classes(Biased(nn.ELU(alpha=2.0)))
    assert layer["dead_ratio"] == 0.25  # elu(-0.5) = -0.79: not saturated at -2
    assert dead_band("ELU", 2.0)[1] == pytest.approx(2.0 * (torch.tensor(-4.5).exp() - 1))


def test_hardswish_units_are_dead_only_at_exactly_zero():
    layer = classes(Biased(nn.Hardswish()))
    assert layer["dead_ratio"] == 0.25


def test_library_activation_modules_by_class_name():
    class NewGELUActivation(nn.Module):  # GPT-2's: the tanh formula, no activation call
        def forward(self, x):
            return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * x.pow(3))))

    assert classes(Biased(NewGELUActivation()))["dead_ratio"] == 0.25
