"""Activation coverage on model code nobody here wrote (bench/zoo: transformers, timm,
PyTorch's recurrent layers), eager and under torch.compile."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bench.zoo.coverage import call_sites, reported
from bench.zoo.models import ZOO, build
from monitor.training.hooks import attach

BY_NAME = {e.name: e for e in ZOO}


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_every_activation_call_site_is_reported_eager(entry):
    model, forward = build(entry)
    sites = call_sites(model, forward)
    assert sites, "the zoo model has activation call sites"
    seen, report = reported(model, forward)
    assert sites <= seen, f"not reported: {sorted(sites - seen)}"
    assert seen <= sites, f"reported but not an activation call site: {sorted(seen - sites)}"
    assert report["sampled_steps"] == 2  # every=4 over 8 steps


def _compiled_against_eager(name: str) -> tuple[dict, dict, int]:
    from torch._dynamo.utils import counters

    model, forward = build(BY_NAME[name])
    model.eval()  # no dropout: both runs see the same activations
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    _, ref = reported(eager, forward, steps=12)
    _, got = reported(torch.compile(model), forward, steps=12)
    return ref, got, counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm/resnet10t", "transformers/BertModel",
                                  "transformers/SpeechT5HifiGan"])
def test_compiled_model_reports_the_eager_signals(name):
    ref, got, graphs = _compiled_against_eager(name)
    assert set(got["layers"]) == set(ref["layers"]) and ref["layers"]
    for layer, signals in ref["layers"].items():
        for signal, value in signals.items():
            assert got["layers"][layer][signal] == pytest.approx(value, rel=1e-4, abs=1e-6), \
                (layer, signal)
    # one graph with the measurement, one without, for the forward (and the backward's);
    # not one per sampled step: 12 steps, 3 of them sampled
    assert graphs <= 4


class Block(nn.Module):
    """A HiFi-GAN-style residual block: functional activations in a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(4, 4, 3, padding=1) for _ in range(3))

    def forward(self, x):
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, 0.1))
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv1d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.block = Block()
        self.rnn = nn.GRU(4, 6, batch_first=True)

    def forward(self, x):
        h = self.block(self.act(self.pre(x)))
        y, _ = self.rnn(torch.relu(h).transpose(1, 2))
        return y.mean()


def test_names_and_kinds_do_not_depend_on_wrappers_or_compile_order():
    torch.manual_seed(0)
    model = Net()
    expected = {"act": "activation", "rnn": "recurrent", "block:leaky_relu.0": "functional",
                "block:leaky_relu.1": "functional", "block:leaky_relu.2": "functional",
                "relu.0": "functional"}
    for wrapped in (model, nn.DataParallel(model), torch.compile(model)):
        health = attach(wrapped, every=1)
        health.step()
        wrapped(torch.randn(2, 2, 8)).backward()
        assert health.watched() == expected
        assert set(health.collect()["layers"]) == set(expected)
        health.close()


def test_attach_before_compiling_sees_the_layers_with_bounded_recompiles():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Net()
    torch._dynamo.reset()
    counters.clear()
    health = attach(model)  # default sampling; compiled afterwards, first call before step()
    compiled = torch.compile(model, backend="aot_eager")
    layers = []
    for step in range(16):
        compiled(torch.randn(2, 2, 8)).backward()
        health.step()
        if step % 8 == 7:
            layers.append(set(health.collect()["layers"]))
    assert layers[-1] == {"act", "rnn", "block:leaky_relu.0", "block:leaky_relu.1",
                          "block:leaky_relu.2", "relu.0"}
    # traced once without hooks, then once per sampling state (GRU: dynamo's own breaks)
    assert counters["stats"]["unique_graphs"] <= 8


def test_a_module_without_activations_is_named_at_attach_and_after_its_forward(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with caplog.at_level(logging.WARNING, logger="monitor.training.hooks"):
        health = attach(model, every=1)
        assert "attach(Sequential): no activation module or recurrent layer" in caplog.text
        health.step()
        model(torch.randn(2, 4)).sum().backward()
    assert "attach(Sequential): nothing to measure in its forward" in caplog.text
    assert health.watched() == {}


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.head = Block(), nn.Linear(4, 1)

    def forward(self, x, reentrant: bool | None = False):
        from torch.utils.checkpoint import checkpoint

        h = self.block(x) if reentrant is None else checkpoint(self.block, x,
                                                                use_reentrant=reentrant)
        return self.head(h.transpose(1, 2)).sum()


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_forward_is_not_counted_twice(reentrant):
    torch.manual_seed(0)
    model = Checkpointed()
    x = torch.randn(3, 4, 8, requires_grad=True)
    reports = []
    for mode in (None, reentrant):  # plain, then checkpointed (recomputed in backward)
        health = attach(model, every=1)
        health.step()
        model(x, reentrant=mode).backward()
        samples = health.probes["block:leaky_relu.0"].samples
        reports.append((samples, health.collect()["layers"]))
        health.close()
    (plain_samples, plain), (samples, checkpointed) = reports
    assert samples == plain_samples == 1
    assert set(checkpointed) == set(plain)
    for layer, signals in plain.items():
        assert checkpointed[layer] == pytest.approx(signals), layer


class Spellings(nn.Module):
    """Activation calls in every spelling, one bound before any forward ran (``self.bound``:
    no wrapper can see it), one that calls another watched function (``F.selu`` calls
    ``torch.selu``)."""

    def __init__(self, bound: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 1)
        self.bound = F.leaky_relu if bound else None

    def forward(self, x):
        h = self.conv(x)
        h = F.relu(h) + torch.relu(h) + h.relu() + F.selu(h)
        if self.bound is not None:
            h = self.bound(h, 0.2)
        return h


def _modes_seen(model: nn.Module, health, steps: int) -> list[bool]:
    """Whether a TorchFunctionMode was active inside each sampled forward."""
    from torch.overrides import _get_current_function_mode_stack

    seen: list[bool] = []
    hook = model.conv.register_forward_hook(
        lambda *_: seen.append(bool(_get_current_function_mode_stack())))
    for _ in range(steps):
        health.step()
        model(torch.randn(2, 3, 5)).sum().backward()
    hook.remove()
    return seen


def test_after_the_first_look_the_wrappers_alone_see_every_call_and_leave_nothing_behind():
    torch.manual_seed(0)
    model = Spellings(bound=False)
    originals = (F.relu, torch.relu, torch.Tensor.relu, F.selu, torch.selu)
    health = attach(model, every=1)
    modes = _modes_seen(model, health, 3)
    assert modes == [True, False, False]  # the mode looks once, then the wrappers only
    assert {p.samples for p in health.probes.values()} == {3}  # F.selu counted once
    assert set(health.collect()["layers"]) == {"relu.0", "relu.1", "relu.2", "selu.0"}
    assert (F.relu, torch.relu, torch.Tensor.relu, F.selu, torch.selu) == originals
    assert "relu" not in vars(torch.Tensor)  # the inherited method is back
    assert _modes_seen(model, health, 2) == [False, False]  # calls found: no new look
    assert {p.samples for p in health.probes.values()} == {2}
    health.close()


class BoundGELU(nn.Module):
    """An activation module that binds its function at construction, as transformers'
    ``GELUActivation`` does: hooked as a module, its call is its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fn = F.gelu

    def forward(self, x):
        return self.fn(x)


class BoundInsideHooked(Spellings):
    def __init__(self) -> None:
        super().__init__(bound=False)
        self.act = BoundGELU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_a_bound_call_inside_a_hooked_module_does_not_keep_the_mode():
    torch.manual_seed(0)
    model = BoundInsideHooked()
    health = attach(model, every=1)
    assert _modes_seen(model, health, 3) == [True, False, False]
    assert set(health.collect()["layers"]) == {"act", "relu.0", "relu.1", "relu.2", "selu.0"}
    health.close()


def test_a_call_the_wrappers_cannot_see_keeps_the_mode():
    torch.manual_seed(0)
    model = Spellings(bound=True)
    health = attach(model, every=1)
    assert _modes_seen(model, health, 3) == [True, True, True]
    assert {p.samples for p in health.probes.values()} == {3}
    assert "leaky_relu.0" in health.collect()["layers"]
    health.close()


def test_another_thread_is_not_measured_while_a_forward_watches():
    import threading

    model = Spellings(bound=False)
    health = attach(model, every=1)
    _modes_seen(model, health, 1)  # the look with the mode; the wrappers from now on
    other: list[tuple[bool, torch.Tensor]] = []
    relu = F.relu
    started, release = threading.Event(), threading.Event()

    def elsewhere() -> None:
        started.set()
        release.wait(5)
        other.append((F.relu is not relu, F.relu(torch.randn(4, 3))))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    started.wait(5)
    def meanwhile(*_: object) -> None:  # inside the sampled forward, the wrappers in place
        release.set()
        thread.join(5)

    hook = model.conv.register_forward_hook(meanwhile)
    health.step()
    model(torch.randn(2, 3, 5)).sum().backward()
    hook.remove()
    assert other and other[0][0]  # called through the wrapper, measured by nobody
    assert set(health.watched()) == {"relu.0", "relu.1", "relu.2", "selu.0"}
    assert {p.samples for p in health.probes.values()} == {2}
    health.close()


class Plain(nn.Module):
    """Activation modules only (a container of torch.nn, whose root hooks dynamo traces,
    would not show the root's hooks running outside the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.act, self.post = nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 1, 1)

    def forward(self, x):
        return self.post(self.act(self.pre(x)))


@pytest.mark.parametrize("calls", [False, True])
def test_compiled_sampled_steps_run_the_mode_only_where_activation_calls_are(monkeypatch,
                                                                              calls):
    """The mode entered at a compiled model's root can be active while its graph runs (a
    Python call per torch call there): after the first window's look finds no activation
    call, sampled steps run without it; where it finds some, it stays (their measurement is
    in the graph traced through it)."""
    from torch._dynamo.utils import counters

    from monitor.training import hooks

    class Counting(hooks.ActivationMode):
        entered = 0

        def __enter__(self):
            Counting.entered += 1
            return super().__enter__()

    monkeypatch.setattr(hooks, "ActivationMode", Counting)
    torch.manual_seed(0)
    model = Net() if calls else Plain()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    health = attach(compiled, every=1)
    entered, layers = [], []
    for _window in range(3):
        for _ in range(3):
            health.step()
            compiled(torch.randn(2, 2, 8)).sum().backward()
        entered.append(Counting.entered)
        layers.append(health.collect()["layers"])
    if calls:  # every sampled step
        assert entered == [3, 6, 9]
    else:  # the first window looks; the later ones run without the mode
        assert entered[0] >= 1 and entered[0] == entered[1] == entered[2]
    assert all(set(w) == set(layers[0]) for w in layers) and layers[0]
    assert all(w[name]["activation_std"] > 0 for w in layers for name in w)
    assert counters["stats"]["unique_graphs"] <= 6
    health.close()
