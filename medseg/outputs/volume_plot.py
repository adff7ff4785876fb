"""Volume distribution plot of one label over a batch run, as PNG bytes (matplotlib, Agg, no display).

One dot per case with a non-empty label on a logarithmic volume axis (spread vertically by a jitter derived from
the case key, so the picture is reproducible); flagged cases in red with the start of their key; the run's median
as a solid line and the outlier limits (where the robust z-score reaches the threshold) as dashed lines. Empty
labels cannot sit on a log axis: their number is written in the title.

The PNG carries no time stamp or software tag, so the same data give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = ["PlotPoint", "volume_plot_png"]

_MAX_ANNOTATED = 12


@dataclass(frozen=True)
class PlotPoint:
    """One case on the plot."""

    key: str
    volume: float
    flagged: bool


def _jitter(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF - 0.5


def volume_plot_png(
    label: str,
    unit: str,
    points: Sequence[PlotPoint],
    *,
    median: float | None = None,
    limits: tuple[float, float] | None = None,
) -> bytes:
    """The plot of one label's volumes (see the module docstring); ``unit`` names the axis (mL or mm^2)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    shown = sorted((p for p in points if p.volume > 0), key=lambda p: p.key)
    empty = sum(1 for p in points if p.volume <= 0)
    fig = Figure(figsize=(7.5, 2.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    title = f"{label}: {len(shown)} case(s)" + (f", {empty} empty" if empty else "")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(f"volume ({unit}, log scale)", fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(-1, 1)
    if shown:
        ax.set_xscale("log")
        normal = [p for p in shown if not p.flagged]
        flagged = [p for p in shown if p.flagged]
        ax.scatter(
            [p.volume for p in normal],
            [_jitter(p.key) for p in normal],
            s=14,
            color="#4a5568",
            alpha=0.7,
            label="case",
        )
        ax.scatter(
            [p.volume for p in flagged],
            [_jitter(p.key) for p in flagged],
            s=30,
            color="#d92d20",
            marker="D",
            label="flagged",
        )
        for p in flagged[:_MAX_ANNOTATED]:
            ax.annotate(
                p.key[:8],
                (p.volume, _jitter(p.key)),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                color="#b42318",
            )
        if median is not None and median > 0:
            ax.axvline(median, color="#175cd3", lw=1.2, label="median")
        if limits is not None:
            for n, bound in enumerate(limits):
                if bound > 0:
                    ax.axvline(
                        bound, color="#175cd3", lw=1.0, ls="--", label="outlier limits" if n == 0 else None
                    )
            lo = min(limits[0], min(p.volume for p in shown))
            hi = max(limits[1], max(p.volume for p in shown))
            ax.set_xlim(lo / 1.5, hi * 1.5)
        ax.legend(loc="upper right", fontsize=7, frameon=False, ncols=4)
        for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    else:
        ax.text(0.5, 0.0, "no non-empty cases", ha="center", va="center", transform=ax.transAxes)
    ax.tick_params(which="both", labelsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()
