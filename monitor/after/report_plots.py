"""The kill report's pictures, drawn with matplotlib and embedded as data URIs.

matplotlib's object API (``Figure``, no pyplot): nothing global changes in the process that
draws, and the page needs no script or network to show them (SVG for plots, PNG for
spectrograms).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from monitor.console import plain

Series = dict[str, list[tuple[int, float]]]  # {layer or "": [(iteration, value)]}
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#d62728"]
KILL = "#d62728"
BAND = "#9e9e9e"
STYLE = {"svg.fonttype": "none", "font.size": 8, "axes.spines.top": False,
         "axes.spines.right": False, "axes.titlesize": 9, "legend.fontsize": 7}

# Units of the monitor's own signals; others by their name's ending.
UNITS = {"dead_ratio": "fraction of units", "evergreen_ratio": "fraction of units",
         "healthy_ratio": "fraction of units", "activation_std": "activation units",
         "activation_mean": "activation units", "nonfinite_count": "values",
         "power_loss": "squared power", "sampled_steps": "steps", "steps": "steps",
         "grad_norm": "L2 norm"}


def text(name: object) -> str:
    """A name from the run as matplotlib shows it verbatim: one line, ``$`` not mathtext, a
    leading ``_`` not taken for "leave out of the legend"."""
    shown = plain(name).replace("$", r"\$")
    return f" {shown}" if shown.startswith("_") else shown


def unit(signal: str) -> str:
    if signal in UNITS:
        return UNITS[signal]
    if signal.endswith("_db"):
        return "dB"
    if signal.endswith("_s"):
        return "s"
    return ""


def _label(signal: str) -> str:
    u = unit(signal)
    return text(f"{signal} ({u})" if u else signal)


def _finite(points: Iterable[tuple[int, float]]) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for x, y in points:
        if isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _nonfinite(points: Iterable[tuple[int, float]]) -> list[int]:
    return [x for x, y in points if isinstance(y, float) and not math.isfinite(y)]


def _uri(fig: Figure, fmt: str = "svg", dpi: int = 100, tight: bool = True) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight" if tight else None,
                metadata=None if fmt == "png" else {"Date": None})
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def band(siblings: Sequence[Series], layers: Iterable[str]) -> dict[int, tuple[float, float,
                                                                                 float]]:
    """``{iteration: (10th percentile, median, 90th percentile)}`` of the siblings' values over
    ``layers`` (all their layers when the signal has none): one odd sibling does not widen
    the band over the whole plot."""
    wanted = set(layers)
    at: dict[int, list[float]] = {}
    for series in siblings:
        for layer, points in series.items():
            if wanted and layer not in wanted and "" not in wanted:
                continue
            for x, y in zip(*_finite(points)):
                at.setdefault(x, []).append(y)
    return {x: tuple(float(q) for q in np.percentile(v, [10, 50, 90]))  # type: ignore[misc]
            for x, v in sorted(at.items())}


def evidence(signal: str, series: Series, siblings: Sequence[Series], kill_iteration: int,
             x_max: int) -> str:
    """One signal of a stopped trial, a line per layer (named in the legend), over the band
    of its healthy siblings at the same iterations, with the kill marked."""
    with rc_context(STYLE):
        fig = Figure(figsize=(4.6, 2.6))
        ax = fig.subplots()
        b = {x: v for x, v in band(siblings, series).items() if x <= x_max}
        if b:
            xs = list(b)
            ax.fill_between(xs, [v[0] for v in b.values()], [v[2] for v in b.values()],
                            color=BAND, alpha=0.3, linewidth=0,
                            label=f"healthy siblings ({len(siblings)}): 10-90th pct")
            ax.plot(xs, [v[1] for v in b.values()], color=BAND, linestyle="--", linewidth=1,
                    label="healthy siblings: median")
        for i, (layer, points) in enumerate(sorted(series.items())):
            xs, ys = _finite(points)
            ax.plot(xs, ys, color=COLOURS[i % len(COLOURS)], linewidth=1.6, marker=".",
                    markersize=4, label=text(layer or signal))
            for x in _nonfinite(points):
                ax.annotate("NaN", (x, 0), xycoords=("data", "axes fraction"), color=KILL,
                            fontsize=7, ha="center")
        ax.axvline(kill_iteration, color=KILL, linestyle=":", linewidth=1.5,
                   label=f"stopped at {kill_iteration}")
        ax.set_xlim(0.5, x_max + 0.5)
        ax.set_xlabel("iteration")
        ax.set_ylabel(_label(signal))
        ax.set_title(text(signal))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _uri(fig)


def metric_over_time(metric: str, lines: dict[str, dict[str, Any]]) -> str:
    """The validation metric of every trial by iteration; a stopped trial's line ends in a
    cross, the baseline is drawn thickest. ``lines``: label -> {points, stopped, baseline}."""
    with rc_context(STYLE):
        fig = Figure(figsize=(7.5, 3.4))
        ax = fig.subplots()
        finite = [y for line in lines.values() for y in _finite(line["points"])[1]]
        for i, (label, line) in enumerate(lines.items()):
            xs, ys = _finite(line["points"])
            colour = COLOURS[i % len(COLOURS)]
            ax.plot(xs, ys, color=colour, linewidth=2.6 if line.get("baseline") else 1.2,
                    linestyle="--" if line.get("stopped") else "-", label=text(label))
            if line.get("stopped") and xs:
                ax.plot([xs[-1]], [ys[-1]], marker="x", color=KILL, markersize=7,
                        markeredgewidth=2)
        if finite:
            low, high = np.percentile(finite, [0, 95])
            pad = 0.1 * (high - low or 1.0)
            ax.set_ylim(low - pad, high + pad)  # a diverged trial does not flatten the rest
        ax.set_xlabel("iteration")
        ax.set_ylabel(_label(metric))
        ax.set_title(text(f"{metric} of every trial (x: stopped; thick: baseline)"))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _uri(fig)


def comparison(panels: list[tuple[str, Series, Series]], trial: str, baseline: str,
               stopped_at: int | None) -> str:
    """Small multiples: every signal and metric of ``trial`` (colours per layer, solid) beside
    the ``baseline``'s (the same colours, dashed)."""
    columns = 4
    rows = max(1, math.ceil(len(panels) / columns))
    with rc_context(STYLE):
        fig = Figure(figsize=(11, 2.0 * rows + 0.6))
        axes = fig.subplots(rows, columns, squeeze=False).ravel()
        all_layers = sorted({layer for _, mine, theirs in panels for layer in (*mine, *theirs)
                             if layer})
        colour_of = {layer: COLOURS[i % len(COLOURS)] for i, layer in enumerate(all_layers)}
        for ax, (signal, mine, theirs) in zip(axes, panels):
            for layer in sorted(set(mine) | set(theirs)):
                colour = colour_of.get(layer, COLOURS[0])
                ax.plot(*_finite(theirs.get(layer, [])), color=colour, linestyle="--",
                        linewidth=0.9, alpha=0.7)
                ax.plot(*_finite(mine.get(layer, [])), color=colour, linewidth=1.4)
            if stopped_at is not None:
                ax.axvline(stopped_at, color=KILL, linestyle=":", linewidth=1)
            ax.set_title(_label(signal), fontsize=8)
            ax.tick_params(labelsize=6)
            ax.locator_params(nbins=4)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(text(f"{trial} (solid) against baseline {baseline} (dashed)"),
                     fontsize=10, y=1 - 0.12 / fig.get_figheight())
        handles = [Line2D([], [], color=colour_of[layer], label=text(layer))
                   for layer in all_layers]
        if handles:
            fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 8),
                       frameon=False, bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_figheight()),
                       title="layers", title_fontsize=7)
        fig.subplots_adjust(left=0.05, right=0.98, top=1 - 1.0 / fig.get_figheight(),
                            bottom=0.3 / fig.get_figheight(), hspace=0.55, wspace=0.25)
        return _uri(fig, "png", dpi=80, tight=False)  # many panels: a raster is faster


def spectrogram(samples: np.ndarray, sample_rate: int, title: str) -> str:
    """A PNG spectrogram of one clip (dB, 0 to Nyquist)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(3.4, 1.8))
        ax = fig.subplots()
        if len(samples) >= 256 and np.any(samples):
            ax.specgram(samples, NFFT=256, Fs=sample_rate, noverlap=192, cmap="magma",
                        vmin=-120)
        else:
            ax.text(0.5, 0.5, "silence", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("s")
        ax.set_ylabel("Hz")
        ax.set_title(text(title), fontsize=8)
        return _uri(fig, "png", dpi=90)
