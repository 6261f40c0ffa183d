"""A user's mistakes with the hooks are named in one line when they happen."""

from __future__ import annotations

import logging

import torch
from torch import nn

from monitor.training.hooks import attach


def test_a_missing_step_is_named_once(caplog):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    health = attach(model)
    with caplog.at_level(logging.WARNING, logger="monitor.training.hooks"):
        for _ in range(3):
            model(torch.randn(2, 4))
        assert health.collect()["layers"] == {}
        model(torch.randn(2, 4))
        health.collect()
    lines = [r.getMessage() for r in caplog.records if "health.step()" in r.getMessage()]
    assert lines == ["attach(Sequential): 3 forward passes and no health.step(): nothing is "
                     "measured; call health.step() once per training step"]
    health.close()


def test_no_warning_when_step_is_called(caplog):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    health = attach(model, every=1)
    with caplog.at_level(logging.WARNING, logger="monitor.training.hooks"):
        health.step()
        model(torch.randn(2, 4))
        assert "1" in health.collect()["layers"]
    assert not [r for r in caplog.records if "health.step()" in r.getMessage()]
    health.close()
