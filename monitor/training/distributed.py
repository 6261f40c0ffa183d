"""Combining a reporting window's statistics across data-parallel ranks.

Under ``DistributedDataParallel`` every rank runs the same model on its own shard of the
batch. A unit that never fires on one rank's shard may fire on another's: it is dead only if
it is dead on every rank. ``combine_across_ranks`` makes each layer's window statistics those
of all ranks' samples together, before ``collect()`` reads them: per-unit minima and maxima
(``MIN``/``MAX``), sums about a shift common to all ranks and counts (``SUM``). Every rank
calls it (``collect()`` does, when ``combine_ranks=True``); a layer that ran on some ranks
only is combined from those. Without an initialised process group it does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from monitor.training.hooks import LayerProbe


def combine_across_ranks(probes: dict[str, LayerProbe]) -> None:
    """Replace every probe's window with the union of all ranks' windows (collective)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    units: dict[str, int] = {}
    for name, probe in probes.items():
        if probe.samples:
            probe.drain_fused()
            units[name] = probe.units.partials.total()[0].numel()
    everyone: list[dict[str, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, units)
    layers = sorted({(n, u) for ranks in everyone for n, u in (ranks or {}).items()})
    if not layers:
        return
    n = sum(u for _, u in layers)
    low = torch.full((n,), torch.inf, dtype=torch.float64)
    high = torch.full((n,), -torch.inf, dtype=torch.float64)
    # per unit: shift, sum about it, sum of squares about it, count; per layer: non-finite
    sums = torch.zeros(4, n, dtype=torch.float64)
    bad = torch.zeros(len(layers), dtype=torch.float64)
    at = 0
    for i, (name, u) in enumerate(layers):
        probe = probes.get(name)
        if probe is not None and probe.samples:
            lo, hi = probe.units.partials.total()
            total, total_sq, count = probe.moments.partials.total()
            low[at:at + u], high[at:at + u] = lo.reshape(-1), hi.reshape(-1)
            sums[0, at:at + u] = probe.moments.shift.reshape(-1).double() * count
            sums[1, at:at + u], sums[2, at:at + u] = total.reshape(-1), total_sq.reshape(-1)
            sums[3, at:at + u] = count
            bad[i] = float(probe.nonfinite.partials.total()[0])
        at += u
    # a common shift (the count-weighted mean of the ranks' shifts), then every rank's sums
    # moved to it: sum(x - c) = S1 + n (s - c); sum((x - c)^2) = S2 + 2 (s - c) S1 + n (s - c)^2
    shift_sum = sums[0].clone()
    counts = sums[3].clone()
    dist.all_reduce(shift_sum)
    dist.all_reduce(counts)
    common = shift_sum / counts.clamp_min(1)
    local = torch.where(sums[3] > 0, sums[0] / sums[3].clamp_min(1), common)
    delta = local - common
    moved = torch.stack([sums[1] + sums[3] * delta,
                         sums[2] + 2 * delta * sums[1] + sums[3] * delta.square()])
    dist.all_reduce(moved)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(bad)
    at = 0
    for i, (name, u) in enumerate(layers):
        probe = probes.get(name)
        if probe is None:
            at += u
            continue
        if not probe.samples:  # this rank did not run the layer: take the others' window
            probe.samples = 1
        probe.units.partials.items = [(low[at:at + u], high[at:at + u])]
        probe.moments.shift = common[at:at + u].float()
        probe.moments.partials.items = [(moved[0, at:at + u], moved[1, at:at + u],
                                         counts[at:at + u])]
        probe.nonfinite.partials.items = [(bad[i],)]
        at += u
