"""Forward hooks that measure the health of ReLU-family layers cheaply.

``attach(model)`` (or ``HealthMonitor(model)``) registers a forward hook on every activation
module (``nn.ReLU``, ``LeakyReLU``, ``ReLU6``, ``PReLU``, ``RReLU``, ``ELU``, ``CELU``, ``SELU``,
``GELU``, ``SiLU``, ``Hardswish``, ``Mish`` by default) and keeps every handle; ``close()`` removes
them all.  Functional calls (``torch.relu(x)``, ``F.relu``, ``x.clamp(min=0)``) and in-place
ops on tensors run outside a module are *not* seen: use module activations, or name a module
as a tap.

Hot path. Hooks are in their modules only while a step is sampled: an unsampled step runs
PyTorch's hook-free path. A float32/float64 CPU activation is measured in the hook by one
compiled pass (``signals.fused``, numba) that adds into the window's per-unit accumulators in
place: no temporary, no per-step allocation, a few attribute reads per layer. Elsewhere
(accelerators, half precision, numba absent) a hook detaches the output and launches a few
plain vectorised ops whose results are per unit (``amin``, ``amax``, shifted sums and sums of
squares through one small scratch buffer shared by every layer, chunk by chunk); small ones
are stacked and reduced together (``SmallLayerBatch``). Nothing is copied to the host until
``collect()``, which combines the window's per-step results and reads every statistic with a
single transfer. Sampling follows a schedule: ``step()`` is called once per training step
and only every ``every``-th step (4 by default) is measured.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from monitor.training import compiled
from monitor.training.distributed import combine_across_ranks
from monitor.training.functional import QUIET_TYPES, ActivationMode, unwatch, watch
from monitor.training.naming import (
    ACTIVATION_TYPES,
    activation_kind,
    is_compiled,
    named_modules,
    units_last,
    unwrapped,
)
from monitor.training.signals import CHUNK, FOLD_AT, fused, release_scratch, scratch
from monitor.training.signals.nonfinite import NonFinite
from monitor.training.signals.power import OutputPower, power_spectrum
from monitor.training.signals.spread import ActivationMoments
from monitor.training.signals.units import (
    NEVER_POSITIVE,
    Band,
    UnitClasses,
    dead_band,
    module_dead_band,
    per_unit_min_max,
)

LAYER_SIGNALS = ("dead_ratio", "evergreen_ratio", "healthy_ratio", "activation_std",
                 "activation_mean", "nonfinite_count", "saturated_ratio")
MODEL_SIGNALS = ("output_power_db", "target_power_db", "power_loss", "power_ratio_db")
DEFAULT_EVERY = 4  # sample one training step in four
PROBE_WINDOWS = 16  # the activation mode looks at a model's calls again every 16 reports
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

    def __init__(self, name: str, unit_dim: int, kind: str = "activation",
                 band: Band = NEVER_POSITIVE) -> None:
        self.name = name
        self.unit_dim = unit_dim
        self.kind = kind
        self.units = UnitClasses(band)
        self.moments, self.nonfinite = ActivationMoments(), NonFinite()
        self.quantities = (self.units, self.moments, self.nonfinite)
        self.fused = fused.FusedUnits()
        self.samples = 0
        self.deferrable = True  # False once its output was seen modified before a batch ran

    def update(self, output: torch.Tensor) -> None:
        view, dims = unit_view(output.detach(), self.unit_dim)
        low, high = per_unit_min_max(view, dims)
        self.units.add(low, high)
        self.moments.update(view, dims)
        self.nonfinite.update(view, dims, low, high)
        self.samples += 1

    def update_fused(self, output: torch.Tensor) -> bool:
        """Measure ``output`` in one compiled pass (float32/64 on the CPU; contiguous, or
        with its units innermost, as a channels-last conv's); False where it cannot (other
        layouts, too large, or the kernels could not compile): the caller
        then uses the vectorised ops. After a window's first step an output of the same
        shape goes straight to the kernel (the hook checks that first)."""
        f = self.fused
        if (output.dtype not in fused.FUSED_DTYPES or not output.is_cpu
                or output.numel() > CHUNK or not fused.available()):
            return False
        view, dims = unit_view(output.detach(), self.unit_dim)
        if not view.is_contiguous() and output.dim() > 2:  # channels last: units innermost
            moved = output.detach().movedim(self.unit_dim, -1)
            if moved.is_contiguous():
                view, dims = moved.view(-1, moved.shape[-1]), (0,)
        if not f.fits(view):
            self.drain_fused()
        try:
            done = f.update(view, dims, output)
        except fused.Unavailable:
            return False
        self.samples += done
        return done

    def drain_fused(self) -> None:
        """Hand the one-pass accumulators to the quantities, about this window's shift."""
        t = self.fused.drain()
        if t is None:
            return
        self.units.add(t["low"], t["high"])
        n, total, shift = t["count"], t["total"], t["shift"]
        if self.moments.shift is None:
            self.moments.shift = shift.float().reshape(t["keep"])
        delta = shift - self.moments.shift.reshape(-1).double()  # 0 unless paths were mixed
        self.moments.add(total + n * delta, t["total_sq"] + 2 * delta * total
                         + n * delta.square(), n)
        self.nonfinite.add(torch.tensor(t["nonfinite"], dtype=torch.float64))

    def values(self) -> dict[str, torch.Tensor]:
        self.drain_fused()
        out: dict[str, torch.Tensor] = {}
        for q in self.quantities:
            out.update(q.values())
        if self.kind == "recurrent":
            out["saturated_ratio"] = self.units.saturated()
        return out

    def reset(self) -> None:
        self.fused.drain()
        for q in self.quantities:
            q.reset()
        self.samples = 0


class SmallLayerBatch:
    """Statistics of many small activations computed together, a few ops for all of them.

    A hook on a small activation (at most ``SMALL`` elements) only keeps a reference to it and
    its version counter. The waiting activations are measured together, activations of one
    shape stacked into the shared scratch buffer (at most ``CHUNK`` elements, so 32 layers of
    64 x 256 are one batch), at ``flush()`` (the monitor calls it at the next ``step()``,
    ``collect()`` and before hooks go) or as soon as ``CHUNK`` elements wait. Per batch: the
    stacking copy, a minimum, a sum, a shifted square and its sum; the maximum only where the
    minimum is negative (for a non-negative activation the sum is positive exactly when the
    maximum is), and the non-finite count only where the minimum or the sum of squares is
    not finite.
    On an accelerator nothing is read back: the maximum and the count always run.
    An activation modified in place before its batch ran (its version counter moved) is not
    measured: that layer is measured at once from then on, and a warning says so.
    """

    SMALL = 1 << 16  # elements of an activation measured in batches
    LIMIT = CHUNK  # elements waiting at most

    def __init__(self) -> None:
        self.pending: list[tuple[LayerProbe, torch.Tensor, int]] = []
        self.waiting = 0
        # Results of the batches run since the last ``absorb()``: (layers, low, high, sums,
        # sums of squares about the shifts, non-finite counts or None, elements per unit,
        # shifts), one row per layer.
        self.results: list[tuple] = []

    def add(self, probe: LayerProbe, output: torch.Tensor, n: int) -> None:
        self.pending.append((probe, output, output._version))
        self.waiting += n
        if self.waiting >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending, self.waiting = self.pending, [], 0
        same: dict[tuple, list[tuple[LayerProbe, torch.Tensor, int]]] = {}
        for item in pending:
            t = item[1]
            same.setdefault((t.shape, t.dtype, t.device, item[0].unit_dim), []).append(item)
        for group in same.values():
            per_batch = max(1, CHUNK // max(1, group[0][1].numel()))
            for i in range(0, len(group), per_batch):
                self._run(group[i:i + per_batch])

    def clear(self) -> None:
        self.pending.clear()
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
            # sums about each layer's shift (the same in every run of a window)
            total = torch.stack([r[3].double() - r[6] * r[7].double()
                                 for r in runs]).sum(0).unbind(0)
            total_sq = torch.stack([r[4] for r in runs]).double().sum(0).unbind(0)
            counted = [r[5] for r in runs if r[5] is not None]
            bad = torch.stack(counted).sum(0).unbind(0) if counted else None
            count = sum(r[6] for r in runs)
            for i, probe in enumerate(probes):
                probe.units.add(low[i], high[i])
                probe.moments.add(total[i], total_sq[i], count)
                probe.nonfinite.add(0 if bad is None else bad[i])

    def _fresh(self, group: list[tuple[LayerProbe, torch.Tensor, int]]
               ) -> list[tuple[LayerProbe, torch.Tensor]]:
        """The activations not modified since their hook ran; the others' layers are measured
        in their hooks from now on."""
        fresh = [(probe, t) for probe, t, version in group if t._version == version]
        if len(fresh) < len(group):
            for probe, t, version in group:
                if t._version == version:
                    continue
                probe.samples -= 1
                if probe.deferrable:
                    probe.deferrable = False
                    log.warning("the output of %s was modified in place after its hook; it is "
                                "measured in the hook from now on (one sample lost)", probe.name)
        return fresh

    @staticmethod
    def _shift(probes: tuple[LayerProbe, ...], total: torch.Tensor, count: int,
               keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The layers' shifts stacked ``[layers, *keep]`` and ``[layers, units]``; a layer's
        first sampled step in the window sets its shift to that step's per-unit mean (from
        ``total``: no extra pass)."""
        means = None
        for i, probe in enumerate(probes):
            if probe.moments.shift is None:
                means = total / count if means is None else means
                probe.moments.shift = means[i].reshape(keep)
        stacked = torch.stack([probe.moments.shift for probe in probes])
        return stacked, stacked.view(total.shape)

    def _run(self, group: list[tuple[LayerProbe, torch.Tensor, int]]) -> None:
        fresh = self._fresh(group)
        if not fresh:
            return
        probes = tuple(probe for probe, _ in fresh)
        views = []
        for probe, t in fresh:
            view, dims = unit_view(t, probe.unit_dim)
            views.append(view)
        keep = [1 if d in dims else n for d, n in enumerate(views[0].shape)]
        dims = tuple(d + 1 for d in dims)
        shape = (len(views), *views[0].shape)
        if len(views) * views[0].numel() <= CHUNK:  # into the shared float32 buffer
            x = torch.stack(views, out=scratch(views[0], shape))
        else:
            x = torch.stack(views).float()
        low, total = x.amin(dim=dims), x.sum(dim=dims)
        count = views[0].numel() // max(1, low[0].numel())
        shift, flat_shift = self._shift(probes, total, count, keep)
        total_sq = functional.mse_loss(x, shift.expand_as(x), reduction="none").sum(dim=dims)
        high = bad = None
        if x.device.type == "cpu":  # reading two numbers costs no transfer here
            floor = float(low.amin())
            # a NaN or infinite value makes the sum of squares NaN or infinite
            if math.isfinite(floor) and math.isfinite(float(total_sq.sum())):
                if floor >= 0:
                    high = total  # non-negative: the sum is positive exactly when the max is
            else:
                bad = _nonfinite_rows(x)
        else:
            bad = _nonfinite_rows(x)
        if high is None:
            high = x.amax(dim=dims)
        self.results.append((probes, low, high, total, total_sq, bad, count, flat_shift))
        if len(self.results) > 4 * FOLD_AT:  # nobody reads: keep memory bounded
            self.absorb()


def _nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """Number of NaN or infinite values in each ``x[i]``."""
    return torch.sub(x, x).nan_to_num_(nan=1.0).sum(dim=tuple(range(1, x.dim())))


class _Slot:
    """One hook, registered once and then put into (armed) or taken out of (disarmed) its
    module's hook dict under the same id: two dict operations, where registering anew costs
    several microseconds; an unarmed module runs PyTorch's hook-free path."""

    __slots__ = ("module", "fn", "pre", "always", "handle", "hooks")

    def __init__(self, module: nn.Module, fn: Any, pre: bool = False,
                 always: bool = False) -> None:
        self.module, self.fn, self.pre, self.always = module, fn, pre, always
        self.handle: torch.utils.hooks.RemovableHandle | None = None
        self.hooks: Any = None

    def arm(self) -> None:
        module = self.module
        hooks = module._forward_pre_hooks if self.pre else module._forward_hooks
        if self.handle is not None and hooks is self.hooks:
            hooks[self.handle.id] = self.fn
            if self.always:
                module._forward_hooks_always_called[self.handle.id] = True
            return
        self.handle = (module.register_forward_pre_hook(self.fn) if self.pre
                       else module.register_forward_hook(self.fn, always_call=self.always))
        self.hooks = hooks

    def disarm(self) -> None:
        if self.handle is None:
            return
        if self.hooks is (self.module._forward_pre_hooks if self.pre
                          else self.module._forward_hooks):
            self.hooks.pop(self.handle.id, None)
            self.module._forward_hooks_always_called.pop(self.handle.id, None)
        else:
            self.handle.remove()
            self.handle = None


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The activation in a module's output: the tensor itself, a recurrent layer's output
    sequence (the first element of its tuple; a ``PackedSequence``'s data)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output:
        first = output[0]
        if isinstance(first, torch.Tensor):
            return first
        data = getattr(first, "data", None)  # PackedSequence
        if isinstance(data, torch.Tensor):
            return data
    return None


class HealthMonitor:
    """Hooks on a model's activations, sampled every ``every`` steps.

    Watched: activation modules (by type, or a leaf whose class name says it is one: see
    ``monitor.training.naming``), recurrent layers (their output sequence), activation functions
    called anywhere in the model's forward (``monitor.training.functional``), and modules named as
    taps. Names do not depend on DDP/FSDP/``torch.compile`` wrappers.

    Args:
        model: the network to watch (plain, DDP-wrapped or compiled).
        every: measure one step in ``every`` (the first step of each period; default 4).
        include: glob patterns of layer names to watch (default: all).
        taps: extra module names to watch whatever their type (named output taps).
        unit_dims: glob pattern -> dimension holding the units (default: 1, channels of conv
            activations; the last axis for recurrent layers and for activations computed
            among linear layers, such as transformers' MLPs).
        activation_types: module types watched as activations.
        functional: watch activation functions called in the forward (default True).
        combine_ranks: in data-parallel training, combine each window's statistics across
            ranks at ``collect()`` (every rank must call it; a unit is dead only if it is
            dead on every rank).
    """

    def __init__(self, model: nn.Module, every: int = DEFAULT_EVERY,
                 include: tuple[str, ...] = ("*",), taps: tuple[str, ...] = (),
                 unit_dims: dict[str, int] | None = None,
                 activation_types: tuple[type[nn.Module], ...] = ACTIVATION_TYPES,
                 functional: bool = True, combine_ranks: bool = False) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.include = tuple(include)
        self.unit_dims = dict(unit_dims or {})
        self.functional = functional
        self.combine_ranks = combine_ranks
        self.probes: dict[str, LayerProbe] = {}
        self.power = OutputPower()
        self.batch = SmallLayerBatch()
        self._step = 0
        self._active = False
        self._paused = False
        self._open = True
        self._measuring = False  # active, not paused, open: read by every hook
        self.sampled_steps = 0
        root = unwrapped(model)
        self.model_name = type(root).__name__
        self._compiled = is_compiled(model)
        self._compile_seen = False
        self._key = compiled.register(self)
        self._measure_untraced = torch.compiler.disable(self._measure)
        self._token = torch.zeros(1)
        self._stack: list[list[Any]] = []
        self._mode: ActivationMode | None = None
        self._excluded: set[str] = set()
        self._functional_probing = True  # next sampled forward looks with the mode
        self._functional_found = False  # activation calls measured in this window
        self._functional_live = False  # ... and in the last one: watched again (wrappers)
        self._uncovered = False  # a call the wrappers miss: eager forwards keep the mode
        self._watching = 0  # this forward's wrappers: 1 feeding this monitor, 2 marking only
        self._windows = 0
        self._warned_empty = False
        self._forwards = 0  # forward passes of the model seen outside torch.compile
        self._armed: tuple[bool, bool] | None = None  # (measured, stacked) hooks in place
        self._warned_no_step = False
        # Eager sampled forwards hand activations over at the root's post-hook, not in each
        # hook (``_take``): ``_pending`` holds (probe, None, output, version) and (stack entry,
        # function, output, version) in call order. ``_defer``: 0 until a forward measured in
        # its hooks showed no watched output changed in place afterwards (then 1), -1 where
        # one was (measured in the hooks from then on).
        self._pending: list[tuple[Any, Any, torch.Tensor, int]] = []
        self._pending_n = 0
        self._defer = 0
        self._checked: list[tuple[weakref.ref, int]] = []  # outputs of a checking forward
        self._depth = 0  # eager root forwards running (nested calls of the root count)
        modules = list(named_modules(root))
        by_name = dict(modules)
        missing = [t for t in taps if t not in by_name]
        if missing:
            raise ValueError(f"taps not found in the model: {missing} (module names as in "
                             f"named_modules(), without DDP/compile wrapper prefixes)")
        self._measured: list[_Slot] = []
        self._stacked: list[_Slot] = []
        for name, module in modules:
            kind = "tap" if name in taps else activation_kind(module, activation_types)
            if kind is None or not name or (kind != "tap" and not self._included(name)):
                continue
            library = kind == "activation" and not isinstance(module, activation_types)
            parent = by_name.get(name.rpartition(".")[0]) if "." in name else root
            last = kind == "recurrent" or (library and units_last(parent))
            probe = LayerProbe(name, self._unit_dim(name, -1 if last else 1), kind,
                               module_dead_band(module) if kind == "activation"
                               else NEVER_POSITIVE)
            self.probes[name] = probe
            self._measured.append(_Slot(module, self._module_hook(probe)))
        hooked = {id(slot.module) for slot in self._measured}
        if functional:  # a conv or norm layer of torch.nn calls no activation: no stack entry
            for name, module in modules:
                if type(module) not in QUIET_TYPES or id(module) in hooked:
                    self._stacked += self._stack_hooks(name, module, id(module) in hooked)
        self._root_slots = [_Slot(root, self._root_pre, pre=True),
                            _Slot(root, self._root_post, always=True)]
        for slot in self._root_slots:  # always there: they notice torch.compile tracing
            slot.arm()
        if not self.probes:
            log.warning("attach(%s): no activation module or recurrent layer found%s",
                        self.model_name, "; activation functions called in its forward are "
                        "looked for on the first sampled step" if functional else "")
        if self._compiled:
            self._arm()

    def _included(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include)

    def _unit_dim(self, name: str, default: int) -> int:
        return next((d for p, d in self.unit_dims.items() if fnmatch.fnmatchcase(name, p)),
                    default)

    # -- what is watched --------------------------------------------------------------------
    def watched(self) -> dict[str, str]:
        """Every layer watched so far and its kind (``activation``, ``recurrent``,
        ``functional``, ``tap``); activation functions appear once a sampled step ran
        them."""
        return {name: probe.kind for name, probe in self.probes.items()}

    # -- hooks ------------------------------------------------------------------------------
    def _arm(self) -> None:
        """Hooks are in their modules only while a step is sampled (not paused): an
        unsampled step runs the model's modules on PyTorch's hook-free path and costs
        nothing. A compiled model keeps every hook (the graph was traced with them; dynamo
        guards on ``_measuring`` instead, one graph with the measurement and one without)."""
        self._measuring = self._open and self._active and not self._paused
        armed = self._measuring or (self._compiled and self._open)
        stacked = armed and (self._compiled or self._looking)
        if self._armed == (armed, stacked):
            return  # nothing to move (a model has a slot per module: 2 x 70 for a ResNet)
        self._armed = (armed, stacked)
        for slot in self._measured:
            slot.arm() if armed else slot.disarm()
        for slot in self._stacked:
            slot.arm() if stacked else slot.disarm()

    @property
    def handles(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Handles of the hooks now in the model (root hooks included)."""
        slots = self._measured + self._stacked + self._root_slots
        return [s.handle for s in slots if s.handle is not None
                and s.handle.id in (s.module._forward_pre_hooks if s.pre
                                    else s.module._forward_hooks)]

    def _module_hook(self, probe: LayerProbe):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._measuring:
                return
            out = _first_tensor(output)
            if out is None:
                return
            if torch.compiler.is_compiling():
                torch.ops.voice_monitor.observe(out, self._token, self._key, probe.name,
                                                probe.unit_dim)
            elif self._compiled:  # an eager part of a compiled model: not to be traced
                self._measure_untraced(probe, out)
            else:
                self._take(probe, None, out)
        return hook

    def _stack_hooks(self, name: str, module: nn.Module, hooked: bool) -> list[_Slot]:
        """Hooks that keep the stack of modules running, for naming activation calls:
        ``(name, hooked, units last)`` and the calls counted in this invocation."""
        static = (name, hooked, units_last(module), {})  # the last: names by (kind, index)
        stack = self._stack

        def push(module: nn.Module, inputs: Any) -> None:
            if self._measuring:
                stack.append([static, {}])

        def pop(module: nn.Module, inputs: Any, output: Any) -> None:
            if stack and stack[-1][0] is static:
                stack.pop()
        return [_Slot(module, push, pre=True), _Slot(module, pop, always=True)]

    def _root_pre(self, module: nn.Module, inputs: Any) -> None:
        if torch.compiler.is_compiling():
            if not self._compiled:  # dynamo guards on this: the graph is traced again
                self._compile_seen = True
        else:
            self._depth += 1
            if not self._step:
                self._forwards += 1  # counted until the first step(): only to name a missing one
        if not (self._measuring and self.functional and self._mode is None):
            return
        if torch.compiler.is_compiling():  # traced here: the mode, always
            if self._compiled or self._functional_probing or self._functional_found:
                self._mode = ActivationMode(self)
                self._mode.__enter__()
            return
        if self._compiled:
            # The hooks of a compiled model's root run outside its graph: a mode entered here
            # is active while the graph runs, and dynamo traced the graph through it (the
            # measurement of activation calls is in that graph) and guards on it. It also
            # costs a Python call per torch call of the graph's wrapper code; where the look
            # found no activation call, sampled steps run a graph traced without it.
            if self._looking:
                self._mode = ActivationMode(self)
                self._mode.__enter__()
            return
        if self._watching:
            return  # a nested call of the root module: already watched
        if not self._looking:
            return
        if self._functional_probing or self._uncovered:  # the mode sees every spelling
            watch(None)
            self._watching = 2
            self._mode = ActivationMode(self, coverage=True)
            self._mode.__enter__()
        else:  # wrappers only
            watch(self)
            self._watching = 1

    def _root_post(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not torch.compiler.is_compiling():
            self._depth = max(0, self._depth - 1)
            if not self._depth and (self._pending or self._checked):
                self._flush_pending()
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)
            if not torch.compiler.is_compiling():
                self._functional_probing = False
        if not torch.compiler.is_compiling():
            self._unwatch()
        if self._measuring and not self.probes and not self._warned_empty:
            self._warned_empty = True
            log.warning("attach(%s): nothing to measure in its forward: no activation "
                        "module, recurrent layer or activation function call", self.model_name)

    @property
    def _looking(self) -> bool:
        """Whether this window's sampled forwards watch activation calls: the mode's look,
        or calls found in this window or the last."""
        return self._functional_probing or self._functional_found or self._functional_live

    def _unwatch(self) -> None:
        watching, self._watching = self._watching, 0
        if watching:
            unwatch(self if watching == 1 else None)

    def _call(self, kind: str, out: torch.Tensor) -> None:
        """An activation function's output from the wrappers (eager): named and measured now,
        or after the forward (``_take``) where that is known to give the same result."""
        stack = self._stack
        if stack:
            if self._defer > 0 and out.numel() <= CHUNK:
                self._pending.append((stack[-1], kind, out, out._version))
                self._pending_n += out.numel()
                if self._pending_n > CHUNK:
                    self._flush_pending()
            else:
                self._functional(kind, out)

    def _take(self, probe: LayerProbe, kind: str | None, out: torch.Tensor) -> None:
        """A module's activation in an eager sampled step: measured after the forward, all
        together, where outputs are not changed in place afterwards (a forward measured in
        the hooks checks that first): between a model's kernels, the hooks' Python and
        numba code run with cold caches, a cost per call several times that of the same
        work done in a row; at most ``CHUNK`` elements wait (2 MiB of float32)."""
        n = out.numel()
        if (self._defer >= 0 and n <= CHUNK and not self._compiled
                and (self._depth or torch._C._current_graph_task_id() == -1)):
            if self._defer:
                self._pending.append((probe, None, out, out._version))
                self._pending_n += n
                if self._pending_n > CHUNK:
                    self._flush_pending()
                return
            self._checked.append((weakref.ref(out), out._version))
        self._measure(probe, out)

    def _flush_pending(self) -> None:
        """Measure the activations waiting since the forward ran, in call order (names of
        activation calls count calls per module invocation); one changed in place since is
        not measured (its layers' sample is lost, with a warning) and later forwards measure
        in the hooks. Also concludes a checking forward: every output it measured in the
        hooks unchanged allows waiting from the next one."""
        if self._checked:
            checked, self._checked = self._checked, []
            if self._defer == 0:
                same = all(t is None or t._version == version
                           for t, version in ((ref(), v) for ref, v in checked))
                self._defer = 1 if same else -1
                if not same:
                    log.debug("attach(%s): an activation is changed in place after its hook; "
                              "measured in the hooks", self.model_name)
        pending, self._pending, self._pending_n = self._pending, [], 0
        measure, functional = self._measure, self._functional
        for owner, kind, out, version in pending:
            changed = out._version != version
            if changed and self._defer > 0:
                self._defer = -1
                log.warning("attach(%s): an activation was modified in place after its hook "
                            "(one sample lost); measured in the hooks from now on",
                            self.model_name)
            if kind is None:
                if not changed:
                    measure(owner, out)
            else:
                stack = self._stack
                stack.append(owner)  # named as in the call: its module, its index there
                try:
                    functional(kind, out, measured=not changed)
                finally:
                    stack.pop()

    def _functional(self, kind: str, out: torch.Tensor, covered: bool = True,
                    measured: bool = True) -> None:
        """An activation function's output, from ``ActivationMode`` or the wrappers: named
        after the innermost module running and the call's index there (``covered``: False
        for a call the mode saw and no wrapper made)."""
        if not self._stack:
            return
        (module_name, hooked, last, names), counts = self._stack[-1]
        if hooked:
            return  # a watched module's own computation
        k = counts.get(kind, 0)
        counts[kind] = k + 1
        name = names.get((kind, k))
        if name is None:
            name = names[kind, k] = f"{module_name}:{kind}.{k}" if module_name else f"{kind}.{k}"
        if name in self._excluded:
            return
        if torch.compiler.is_compiling():
            torch.ops.voice_monitor.observe(out, self._token, self._key, name,
                                            self._unit_dim(name, -1 if last else 1))
            return
        probe = self.probes.get(name)
        if probe is None:
            probe = self._new_functional(name, self._unit_dim(name, -1 if last else 1))
            if probe is None:
                return
        if not covered:
            self._uncovered = True  # measured here, invisible to the wrappers: keep the mode
        self._functional_found = True
        if self._compiled:
            self._measure_untraced(probe, out)
        elif measured:
            if not self._defer:
                self._checked.append((weakref.ref(out), out._version))
            self._measure(probe, out)

    def _new_functional(self, name: str, unit_dim: int) -> LayerProbe | None:
        if not self._included(name):
            self._excluded.add(name)
            return None
        function = name.rpartition(":")[2].rpartition(".")[0]  # "blocks.0:gelu.1" -> gelu
        probe = self.probes[name] = LayerProbe(name, unit_dim, "functional",
                                               dead_band(function))
        return probe

    def _measure_named(self, name: str, x: torch.Tensor, unit_dim: int = 1) -> None:
        """Measure ``x`` as layer ``name`` (from a compiled graph's ``observe`` operator)."""
        probe = self.probes.get(name) or self._new_functional(name, unit_dim)
        if probe is not None:
            if probe.kind == "functional":
                self._functional_found = True  # a compiled graph's activation call
            self._measure(probe, x)

    def _measure(self, probe: LayerProbe, output: torch.Tensor) -> None:
        """One sampled activation into ``probe``'s window."""
        if torch._C._current_graph_task_id() != -1:
            return  # recomputed in backward (activation checkpointing): already counted
        one_pass = probe.fused
        # the usual sampled step: the window's shape again, straight to the kernel
        if (output.shape == one_pass.shape and output.is_cpu
                and output.dtype == one_pass.dtype and output.is_contiguous()):
            if not one_pass.add(output):
                one_pass.count_nonfinite(*unit_view(output.detach(), probe.unit_dim))
            probe.samples += 1
            return
        if probe.update_fused(output):
            return
        n = output.numel()
        if n <= SmallLayerBatch.SMALL and probe.deferrable:
            self.batch.add(probe, output.detach(), n)
            probe.samples += 1
        else:
            probe.update(output)

    # -- schedule ---------------------------------------------------------------------------
    def step(self) -> bool:
        """Advance to the next training step; return whether it is sampled."""
        self._depth = 0  # between forwards
        if self._pending or self._checked:
            self._flush_pending()
        if self.batch.pending:
            self.batch.flush()
        if self._compile_seen and not self._compiled:
            self._compiled = True
            log.info("attach(%s): the model runs under torch.compile; its hooks stay in "
                     "the graph (one graph for sampled steps, one for the others)",
                     self.model_name)
        self._active = self._step % self.every == 0
        self._step += 1
        if self._active:
            self.sampled_steps += 1
        self._arm()
        return self._active

    @property
    def sampling(self) -> bool:
        return self._measuring

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Measure nothing inside (validation passes, inference)."""
        previous, self._paused = self._paused, True
        self._arm()
        try:
            yield
        finally:
            self._paused = previous
            self._arm()

    def reopen(self) -> None:
        """Let the hooks run again after ``remove_hooks()``; schedule and window go on."""
        self._open = True
        for slot in self._root_slots:
            slot.arm()
        self._armed = None  # put every hook back, whatever happened to the modules' dicts
        self._arm()

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

    def keep_audio(self, output: Any, sample_rate: int, *, reference: Any = None
                   ) -> dict[str, str]:
        """One short output clip (1-D waveform) for this report, to add to the reported
        metrics; the run directory keeps a bounded number per trial, and ``monitor kill-report
        --html`` plays them beside the baseline's (``audio_samples``). ``reference``
        (the target) is sent once."""
        from monitor.training.audio_samples import AudioKeeper

        keeper = self.__dict__.setdefault("_audio", AudioKeeper())
        return keeper.clip(output, sample_rate, reference)

    # -- reporting --------------------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        """Read the window's statistics (one host transfer) and start a new window.

        Returns ``{"layers": {layer: {signal: value}}, "model": {signal: value},
        "sampled_steps": n}``; layers not run in the window are left out.
        """
        self._flush_pending()
        self.batch.flush()
        self.batch.absorb()
        if self.combine_ranks:
            combine_across_ranks(self.probes)
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
        if self._compiled and self.sampled_steps and not layers and self.probes:
            log.warning("attach(%s): the compiled model ran %d sampled steps and no layer was "
                        "measured: it was compiled and run before attach(); attach before "
                        "its first call (or call torch._dynamo.reset() after attach)",
                        self.model_name, self.sampled_steps)
        if not self._step and self._forwards and not self._warned_no_step:
            self._warned_no_step = True
            log.warning("attach(%s): %d forward passes and no health.step(): nothing is "
                        "measured; call health.step() once per training step",
                        self.model_name, self._forwards)
        report = {"layers": layers, "model": model, "sampled_steps": self.sampled_steps}
        for probe in self.probes.values():
            probe.reset()
        self.power.reset()
        self.sampled_steps = 0
        # activation calls found in this window are watched in the next (the wrappers); the
        # mode looks at every PROBE_WINDOWS-th window (a forward under it costs every torch
        # call)
        self._windows += 1
        self._functional_live = self._functional_found
        self._functional_probing = self._windows % PROBE_WINDOWS == 0
        self._functional_found = False
        return report

    def remove_hooks(self) -> None:
        """Remove every hook; state, schedule and buffers stay (``reopen()`` re-registers)."""
        self._flush_pending()
        self.batch.flush()
        self._open = False
        self._arm()
        for slot in self._root_slots:
            slot.disarm()
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        self._unwatch()

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
