"""Every per-unit statistic of a CPU activation in one pass, in the hook, with no temporary.

On the CPU a sampled step of many small layers is dominated not by arithmetic but by the fixed
cost of each PyTorch op (dispatch, and cold code and caches after the model's own kernels):
the stacked reductions of ``SmallLayerBatch`` are five ops per batch. Here one compiled loop
(numba) reads the activation once, while it is still in cache, and adds into the window's
per-unit accumulators in place: minimum, maximum, and the sums of ``x - shift`` and its
square (in the activation's precision over at most ``BLOCK`` rows, then in float64;
``shift``: the unit's first value in the window, the shifted-data form of
the variance, so a unit with a large mean and a tiny spread keeps its spread). Nothing is
allocated per step; ``drain()`` hands the window's totals to the unit-class, moment and
non-finite quantities once per report, as the other paths do.

Non-finite values: the pass returns the window's sum of squares, which turns NaN or infinite
with the first such value (or, harmlessly, when squares overflow); from then on a second pass
counts them and marks the units that saw a NaN (their minimum and maximum become NaN, as
``amin``/``amax`` would make them).

Used for float32/float64 CPU activations of at most ``CHUNK`` elements (larger ones keep the
multi-threaded vectorised ops), when numba imports; ``MONITOR_FUSED=0`` turns it off.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

try:  # numba is a dependency; the vectorised-ops paths remain where it cannot load
    if os.environ.get("MONITOR_FUSED", "1") == "0":
        raise ImportError("MONITOR_FUSED=0")
    from numba import njit
except ImportError as exc:  # pragma: no cover - exercised with MONITOR_FUSED=0
    njit = None
    _REASON = str(exc)
else:
    _REASON = ""

FUSED_DTYPES = (torch.float32, torch.float64)
BLOCK = 64  # rows summed in the activation's own precision before adding into float64
SPAN = 256  # values of one row of a unit summed so (channel layout)


def available() -> bool:
    """Whether the one-pass kernels can run here (numba imported, and compiled them)."""
    return not _REASON


if njit is not None:
    from numba import carray, types
    from numba.extending import intrinsic

    @intrinsic
    def _pointer(typingctx, address, like):  # pragma: no cover - compiled
        """The integer ``address`` as a pointer to values of ``like``'s type."""
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return types.CPointer(like)(address, like), codegen

    def _jit(function: Any = None, **options: Any) -> Any:
        """Compiled lazily, cached on disk where numba finds a writable place (beside the
        module, ``NUMBA_CACHE_DIR`` or the user's cache directory); where none is, without a
        disk cache (numba would otherwise refuse at import)."""
        if function is None:
            return lambda f: _jit(f, **options)
        try:
            return njit(cache=True, nogil=True, error_model="numpy", **options)(function)
        except RuntimeError:
            return njit(nogil=True, error_model="numpy", **options)(function)

    @_jit
    def _units_last(address, rows, units, accumulators, first, like):  # pragma: no cover
        """[rows, units] of ``like``'s dtype; returns the window's sum of squares so far
        (NaN or infinite once any value was). The row loop works on local arrays, which the
        compiler can vectorise (it cannot prove the accumulators apart from ``x``); partial
        sums in the activation's precision over at most ``BLOCK`` rows go into float64."""
        x = carray(_pointer(address, like), (rows, units))
        acc = carray(_pointer(accumulators, 0.0), (5, units))
        if first:
            for u in range(units):
                acc[4, u] = x[0, u]
        low, high = x[0].copy(), x[0].copy()
        shift, a, q = np.empty_like(low), np.zeros_like(low), np.zeros_like(low)
        for u in range(units):
            shift[u] = acc[4, u]
        for start in range(0, rows, BLOCK):
            for b in range(start, min(rows, start + BLOCK)):
                for u in range(units):
                    v = x[b, u]
                    low[u] = min(low[u], v)
                    high[u] = max(high[u], v)
                    d = v - shift[u]
                    a[u] += d
                    q[u] += d * d
            for u in range(units):
                acc[2, u] += a[u]
                acc[3, u] += q[u]
                a[u] = 0
                q[u] = 0
        total = 0.0
        for u in range(units):
            acc[0, u] = min(acc[0, u], low[u])
            acc[1, u] = max(acc[1, u], high[u])
            total += acc[3, u]
        return total

    @_jit(fastmath={"reassoc", "nsz", "contract", "arcp"})
    def _span(x, start, stop, shift, zero):  # pragma: no cover - compiled
        """Minimum, maximum, sum of ``x - shift`` and of its square over ``x[start:stop]``,
        in ``x``'s precision: scalar reductions the compiler may reorder (and vectorise);
        no assumption about NaN or infinities, which stay in the sums."""
        low, high = x[start], x[start]
        a, q = zero, zero
        for r in range(start, stop):
            v = x[r]
            low = v if v < low else low
            high = v if v > high else high
            d = v - shift
            a += d
            q += d * d
        return low, high, a, q

    @_jit
    def _units_middle(address, batch, units, rest, accumulators, first,
                      like):  # pragma: no cover
        """[batch, units, rest] of ``like``'s dtype, ``rest`` innermost: for each unit, its
        rows reduced in spans of at most ``SPAN`` values in the activation's precision, each
        span's sums added into the unit's float64 sums."""
        x = carray(_pointer(address, like), (batch, units, rest))
        acc = carray(_pointer(accumulators, 0.0), (5, units))
        if first:
            for u in range(units):
                acc[4, u] = x[0, u, 0]
        k = np.zeros_like(x[0, 0, :1])
        zero = k[0]
        total = 0.0
        for u in range(units):
            k[0] = acc[4, u]
            shift = k[0]
            lo_u, hi_u = acc[0, u], acc[1, u]
            s1, s2 = 0.0, 0.0
            for b in range(batch):
                row = x[b, u]
                for start in range(0, rest, SPAN):
                    low, high, a, q = _span(row, start, min(rest, start + SPAN), shift,
                                            zero)
                    lo_u = min(lo_u, low)
                    hi_u = max(hi_u, high)
                    s1 += a
                    s2 += q
            # a NaN compares false: min/max above may skip it, the sums never do (the
            # caller then counts and marks the unit)
            acc[0, u], acc[1, u] = lo_u, hi_u
            acc[2, u] += s1
            acc[3, u] += s2
            total += acc[3, u]
        return total


_KERNELS: dict[torch.dtype, tuple[Any, Any, Any]] = {}


def kernels(dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """``(units_last, units_middle, like)`` for ``dtype``: the kernels take addresses and
    sizes only (plain integers) and a scalar of the dtype, since in a hook, after the model's
    own kernels have evicted everything, building and typing numpy arrays costs more than the
    pass itself. Compiled on first use and cached on disk by numba; where they cannot
    compile, the one-pass path is switched off for this process with a warning."""
    global _REASON
    found = _KERNELS.get(dtype)
    if found is None:
        like = np.float32(0) if dtype == torch.float32 else np.float64(0)
        try:
            probe, x = np.zeros((5, 1)), np.zeros(1, dtype=like.dtype)  # compile here
            _units_last(x.ctypes.data, 1, 1, probe.ctypes.data, True, like)
            _units_middle(x.ctypes.data, 1, 1, 1, probe.ctypes.data, True, like)
        except Exception as exc:  # noqa: BLE001 - any numba failure: fall back, say why
            _REASON = f"{type(exc).__name__}: {exc}"
            log.warning("one-pass hook kernels unavailable (%s); using vectorised ops",
                        _REASON)
            raise Unavailable(_REASON) from exc
        found = _KERNELS[dtype] = (_units_last, _units_middle, like)
    return found


class Unavailable(RuntimeError):
    """The one-pass kernels could not be compiled here."""


class FusedUnits:
    """One layer's per-unit accumulators over the window, updated in place by one pass."""

    def __init__(self) -> None:
        self.samples = 0
        self.units = -1
        self.shape: torch.Size | None = None  # a module output shape that takes ``add``

    def _start(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        """Start a window; arrays of the previous window are reused when the layout is the
        same (the usual case: nothing is allocated per window either)."""
        units = view.shape[1]
        if (units, view.dtype, view.dim()) != (self.units, getattr(self, "dtype", None),
                                               getattr(self, "rank", None)):
            self.units, self.dtype, self.rank = units, view.dtype, view.dim()
            # rows: minimum, maximum, sum of x - shift, sum of its square, shift (float64)
            self.acc = np.empty((5, units))
            self.address = self.acc.ctypes.data
            self.nan_units = np.zeros(units, dtype=bool)
            self.kernels = kernels(view.dtype)
            self.shape = None
        self.keep = [1 if d in dims else n for d, n in enumerate(view.shape)]
        self._reset()

    def _reset(self) -> None:
        self.acc[0], self.acc[1], self.acc[2:4] = np.inf, -np.inf, 0.0
        self.nan_units[:] = False
        self.count = 0
        self.finite = True
        self.nonfinite = 0.0

    def fits(self, view: torch.Tensor) -> bool:
        """Whether ``view`` (from ``unit_view``) adds to the current window's arrays."""
        return self.samples == 0 or (view.shape[1] == self.units and view.dtype == self.dtype
                                     and view.dim() == self.rank)

    def update(self, view: torch.Tensor, dims: tuple[int, ...],
               output: torch.Tensor | None = None) -> bool:
        """Add one step: ``view`` is [rows, units] (``dims == (0,)``) or [batch, units, rest]
        (``dims == (0, 2)``), float32/float64 on the CPU. False, with nothing changed, where
        ``view`` is not contiguous (the caller then uses the vectorised ops). Where ``view``
        is ``output``'s own memory, later outputs of that shape go straight to ``add``."""
        if not view.is_contiguous():
            return False
        first = self.samples == 0
        if first:
            self._start(view, dims)
        shape = view.shape
        if len(shape) == 2 or shape[2] == 1:  # [batch, units, 1] is [batch, units]
            kernel, sizes, per_step = self.kernels[0], (shape[0], shape[1]), shape[0]
        else:
            kernel, sizes = self.kernels[1], (shape[0], shape[1], shape[2])
            per_step = shape[0] * shape[2]
        address, like = view.data_ptr(), self.kernels[2]
        if not self._added(kernel(address, *sizes, self.address, first, like), per_step):
            self.count_nonfinite(view, dims)
        if (output is not None and output.data_ptr() == address
                and output.is_contiguous()):
            self.shape = output.shape
            self.steady = (kernel, (*sizes, self.address), per_step, like)
        return True

    def add(self, output: torch.Tensor) -> bool:
        """Add one step of a module output of ``self.shape`` and the window's dtype,
        contiguous on the CPU (the caller checks; a new window may start here). False where
        this step may hold NaN or infinite values: the caller then passes its view to
        ``count_nonfinite``. The hot path: a few attribute reads and the kernel."""
        kernel, args, per_step, like = self.steady
        first = self.samples == 0
        if first:
            self._reset()
        return self._added(kernel(output.data_ptr(), *args, first, like), per_step)

    def _added(self, squares: float, per_step: int) -> bool:
        self.count += per_step
        self.samples += 1
        if self.finite and math.isfinite(squares):
            return True
        self.finite = False  # the window's sum stays NaN/inf: count every later step
        return False

    def count_nonfinite(self, view: torch.Tensor, dims: tuple[int, ...]) -> None:
        """The rare path: count the values, and remember the units that saw a NaN (they
        report NaN extremes, as ``amin``/``amax`` would make them)."""
        self.nonfinite += float((~torch.isfinite(view)).sum())
        nan = torch.isnan(view)
        for d in sorted(dims, reverse=True):
            nan = nan.any(dim=d)
        self.nan_units |= nan.numpy()

    def drain(self) -> dict[str, Any] | None:
        """The window's totals as tensors (``None`` when nothing was added); the next step
        starts a new window in the same arrays."""
        if not self.samples:
            return None
        acc = torch.from_numpy(self.acc.copy())
        nan = torch.from_numpy(self.nan_units.copy())
        low = acc[0].to(self.dtype).masked_fill(nan, math.nan)
        high = acc[1].to(self.dtype).masked_fill(nan, math.nan)
        out = {"low": low, "high": high, "total": acc[2], "total_sq": acc[3],
               "shift": acc[4], "keep": self.keep, "count": self.count,
               "nonfinite": self.nonfinite}
        self.samples = 0
        return out


def unavailable_reason() -> str:
    return _REASON
