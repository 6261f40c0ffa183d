"""Forward hooks that measure the health of ReLU-family layers cheaply.

``attach(model)`` (or ``HealthMonitor(model)``) registers a forward hook on every activation
module (``nn.ReLU``, ``LeakyReLU``, ``ReLU6``, ``PReLU``, ``RReLU``, ``ELU``, ``CELU``, ``SELU``,
``GELU``, ``SiLU``, ``Hardswish``, ``Mish`` by default) and keeps every handle; ``close()`` removes
them all.  Functional calls (``torch.relu(x)``, ``F.relu``, ``x.clamp(min=0)``) and in-place
ops on tensors run outside a module are *not* seen: use module activations, or name a module
as a tap.

Hot path: a hook detaches the output at once and launches a few plain vectorised ops whose
results are per unit (``amin``, ``amax``; shifted sums and sums of squares and a finiteness
count through one small scratch buffer shared by every layer, chunk by chunk): no
activation-sized temporary. Nothing is copied to the host until ``collect()``, which combines
the window's per-step results and reads every statistic with a single transfer. Sampling
follows a schedule: ``step()`` is called once per training step and only every ``every``-th
step (4 by default) is measured.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from monitor.signals import CHUNK, FOLD_AT, release_scratch, scratch
from monitor.signals.nonfinite import NonFinite, all_finite_on_cpu
from monitor.signals.power import OutputPower, power_spectrum
from monitor.signals.spread import ActivationMoments
from monitor.signals.units import UnitClasses, per_unit_min_max

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Hardswish, nn.Mish,
)
LAYER_SIGNALS = ("dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std",
                 "activation_mean", "nonfinite_count")
MODEL_SIGNALS = ("output_power_db", "target_power_db", "power_loss", "power_ratio_db")
DEFAULT_EVERY = 4  # sample one training step in four
log = logging.getLogger(__name__)


def unit_view(x: torch.Tensor, unit_dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A view with the units on one axis, and the axes to reduce.

    ``[batch, units, *rest]`` becomes ``[batch, units, rest]`` (reduce 0 and 2, the innermost
    contiguous axis last); units elsewhere become ``[elements, units]`` (reduce 0).
    """
    rank = x.dim()
    if rank <= 1:
        return x.reshape(1, -1), (0,)
    unit_dim %= rank
    if unit_dim == 1:
        if rank == 2:
            return x, (0,)
        return (x if rank == 3 else x.flatten(2)), (0, 2)
    return x.movedim(unit_dim, -1).reshape(-1, x.shape[unit_dim]), (0,)


class LayerProbe:
    """Statistics of one hooked module over the current window."""

    def __init__(self, name: str, unit_dim: int) -> None:
        self.name = name
        self.unit_dim = unit_dim
        self.units, self.moments, self.nonfinite = UnitClasses(), ActivationMoments(), NonFinite()
        self.quantities = (self.units, self.moments, self.nonfinite)
        self.samples = 0
        self.deferrable = True  # False once its output was seen modified before a batch ran


    def update(self, output: torch.Tensor) -> None:
        view, dims = unit_view(output.detach(), self.unit_dim)
        low, high = per_unit_min_max(view, dims)
        self.units.add(low, high)
        self.moments.update(view, dims)
        self.nonfinite.update(view, dims, low, high)
        self.samples += 1

    def values(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for q in self.quantities:
            out.update(q.values())
        return out

    def reset(self) -> None:
        for q in self.quantities:
            q.reset()
        self.samples = 0


class SmallLayerBatch:
    """Statistics of many small activations computed together, a few ops for all of them.

    A hook on a small activation (at most ``SMALL`` elements) only keeps a reference to it and
    its version counter; activations of one shape are stacked and reduced at once when
    ``size`` of them wait, when too many elements wait, and at ``flush()`` (the monitor calls
    it at the next ``step()``, ``collect()`` and before hooks go). The stack is a copy of small
    tensors only (at most ``LIMIT`` elements wait). An activation modified in place before its
    batch ran (its version counter moved) is not measured: that layer is measured at once from
    then on, and a warning says so.
    """

    SMALL = 1 << 16  # elements of an activation measured in batches
    LIMIT = 1 << 20  # elements waiting at most
    size = 16  # activations of one shape per batch

    def __init__(self) -> None:
        self.groups: dict[tuple, list[tuple[LayerProbe, torch.Tensor, int]]] = {}
        self.waiting = 0
        # Results of the batches run since the last ``absorb()``: (layers, low, high, sums,
        # sums of squares, non-finite counts or None, elements per unit), one row per layer.
        self.results: list[tuple] = []

    def add(self, probe: LayerProbe, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        key = (view.shape, view.dtype, view.device, dims)
        group = self.groups.setdefault(key, [])
        group.append((probe, view, view._version))
        self.waiting += view.numel()
        if len(group) >= min(self.size, CHUNK // max(1, view.numel())):
            self._run(key, self.groups.pop(key))
        elif self.waiting > self.LIMIT:
            self.flush()

    def flush(self) -> None:
        groups, self.groups = self.groups, {}
        for key, group in groups.items():
            self._run(key, group)
        self.waiting = 0

    def clear(self) -> None:
        self.groups.clear()
        self.results.clear()
        self.waiting = 0

    def absorb(self) -> None:
        """Hand the batches' results to their layers' accumulators: the batches of the same
        layers (usually every batch of a window) are combined together, a few ops in all."""
        same: dict[tuple, list[tuple]] = {}
        for result in self.results:
            same.setdefault(result[0], []).append(result)
        self.results.clear()
        for probes, runs in same.items():
            low = torch.stack([r[1] for r in runs]).amin(0).unbind(0)
            high = torch.stack([r[2] for r in runs]).amax(0).unbind(0)
            total = torch.stack([r[3] for r in runs]).double().sum(0).unbind(0)
            total_sq = torch.stack([r[4] for r in runs]).double().sum(0).unbind(0)
            counted = [r[5] for r in runs if r[5] is not None]
            bad = torch.stack(counted).sum(0).unbind(0) if counted else None
            count = sum(r[6] for r in runs)
            for i, probe in enumerate(probes):
                probe.units.add(low[i], high[i])
                probe.moments.add(total[i], total_sq[i], count)
                probe.nonfinite.add(0 if bad is None else bad[i])

    def _run(self, key: tuple, group: list[tuple[LayerProbe, torch.Tensor, int]]) -> None:
        self.waiting -= sum(view.numel() for _, view, _ in group)
        fresh = [(probe, view) for probe, view, version in group if view._version == version]
        if len(fresh) < len(group):
            for probe, view, version in group:
                if view._version == version:
                    continue
                probe.samples -= 1
                if probe.deferrable:
                    probe.deferrable = False
                    log.warning("the output of %s was modified in place after its hook; it is "
                                "measured in the hook from now on (one sample lost)", probe.name)
        if not fresh:
            return
        dims = tuple(d + 1 for d in key[3])
        views = [view for _, view in fresh]
        shape = (len(views), *views[0].shape)
        if len(views) * views[0].numel() <= CHUNK:  # into the shared float32 buffer
            x = torch.stack(views, out=scratch(views[0], shape))
        else:
            x = torch.stack(views).float()
        # x is our copy: worked on in place below
        for probe, view in fresh:
            if probe.moments.shift is None:
                probe.moments.shift = view.mean(dim=key[3], keepdim=True, dtype=torch.float32)
        shift = torch.stack([probe.moments.shift for probe, _ in fresh])
        low, high = x.amin(dim=dims), x.amax(dim=dims)
        bad = None
        if not all_finite_on_cpu(low, high):
            bad = torch.sub(x, x).nan_to_num_(nan=1.0).sum(dim=tuple(range(1, x.dim())))
        x.sub_(shift)
        total = x.sum(dim=dims)
        total_sq = x.square_().sum(dim=dims)
        count = fresh[0][1].numel() // max(1, total[0].numel())
        self.results.append((tuple(probe for probe, _ in fresh), low, high, total, total_sq,
                             bad, count))
        if len(self.results) > 4 * FOLD_AT:  # nobody reads: keep memory bounded
            self.absorb()


class HealthMonitor:
    """Hooks on a model's activation layers, sampled every ``every`` steps.

    Args:
        model: the network to watch.
        every: measure one step in ``every`` (the first step of each period; default 4).
        include: glob patterns of module names to watch (default: every activation module).
        taps: extra module names to watch whatever their type (named output taps).
        unit_dims: glob pattern -> dimension holding the units (default 1: channels of conv
            activations; use -1 for linear layers on [batch, time, features]).
    """

    def __init__(self, model: nn.Module, every: int = DEFAULT_EVERY,
                 include: tuple[str, ...] = ("*",), taps: tuple[str, ...] = (),
                 unit_dims: dict[str, int] | None = None,
                 activation_types: tuple[type[nn.Module], ...] = ACTIVATION_TYPES) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.probes: dict[str, LayerProbe] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.power = OutputPower()
        self.batch = SmallLayerBatch()
        self._step = 0
        self._active = False
        self._paused = False
        self.sampled_steps = 0
        self._targets: list[tuple[nn.Module, LayerProbe]] = []
        unit_dims = unit_dims or {}
        modules = dict(model.named_modules())
        missing = [t for t in taps if t not in modules]
        if missing:
            raise ValueError(f"taps not found in the model: {missing}")
        for name, module in modules.items():
            wanted = (isinstance(module, activation_types)
                      and any(fnmatch.fnmatchcase(name, p) for p in include)) or name in taps
            if not wanted or not name:
                continue
            unit_dim = next((d for p, d in unit_dims.items() if fnmatch.fnmatchcase(name, p)), 1)
            probe = LayerProbe(name, unit_dim)
            self.probes[name] = probe
            self._targets.append((module, probe))
        self.reopen()

    def reopen(self) -> None:
        """Register the hooks (again, after ``remove_hooks()``); schedule and window go on."""
        if not self.handles:
            self.handles = [module.register_forward_hook(self._hook(probe))
                            for module, probe in self._targets]

    def _hook(self, probe: LayerProbe):
        small, batch = SmallLayerBatch.SMALL, self.batch

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._active and not self._paused and isinstance(output, torch.Tensor):
                if output.numel() <= small and probe.deferrable:
                    view, dims = unit_view(output.detach(), probe.unit_dim)
                    batch.add(probe, view, dims)
                    probe.samples += 1
                else:
                    probe.update(output)
        return hook

    # -- schedule ---------------------------------------------------------------------------
    def step(self) -> bool:
        """Advance to the next training step; return whether it is sampled."""
        if self.batch.groups:
            self.batch.flush()
        self._active = self._step % self.every == 0
        self._step += 1
        if self._active:
            self.sampled_steps += 1
        return self._active

    @property
    def sampling(self) -> bool:
        return self._active and not self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Measure nothing inside (validation passes, inference)."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    # -- model-level signals ----------------------------------------------------------------
    def observe_power(self, phi_out: torch.Tensor, phi_target: torch.Tensor) -> None:
        """Record time-averaged power spectra of output and target (sampled steps only)."""
        if self.sampling:
            self.power.update(phi_out, phi_target)

    def observe_output(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Record output and target audio; computes their power spectra on sampled steps."""
        if self.sampling:
            with torch.no_grad():
                self.power.update(power_spectrum(output.detach()), power_spectrum(target))

    # -- reporting --------------------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        """Read the window's statistics (one host transfer) and start a new window.

        Returns ``{"layers": {layer: {signal: value}}, "model": {signal: value},
        "sampled_steps": n}``; layers not run in the window are left out.
        """
        self.batch.flush()
        self.batch.absorb()
        keys: list[tuple[str | None, str]] = []
        tensors: list[torch.Tensor] = []
        for name, probe in self.probes.items():
            if probe.samples:
                for signal, t in probe.values().items():
                    keys.append((name, signal))
                    tensors.append(t.reshape(()).float())
        if self.power.count:
            for signal, t in self.power.values().items():
                keys.append((None, signal))
                tensors.append(t.reshape(()).float())
        values = torch.stack(tensors).cpu().tolist() if tensors else []
        layers: dict[str, dict[str, float]] = {}
        model: dict[str, float] = {}
        for (layer, signal), v in zip(keys, values):
            (model if layer is None else layers.setdefault(layer, {}))[signal] = v
        report = {"layers": layers, "model": model, "sampled_steps": self.sampled_steps}
        for probe in self.probes.values():
            probe.reset()
        self.power.reset()
        self.sampled_steps = 0
        return report

    def remove_hooks(self) -> None:
        """Remove every hook; state, schedule and buffers stay (``reopen()`` re-registers)."""
        self.batch.flush()
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def close(self) -> None:
        """Remove every hook this monitor registered and drop the window's statistics."""
        self.remove_hooks()
        self.batch.clear()
        for probe in self.probes.values():
            probe.reset()
        self.power.reset()
        release_scratch()

    def __enter__(self) -> HealthMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach(model: nn.Module, **kwargs: Any) -> HealthMonitor:
    """Attach a ``HealthMonitor`` to ``model``; see ``HealthMonitor`` for the arguments."""
    return HealthMonitor(model, **kwargs)
