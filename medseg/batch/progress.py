"""A plain-text progress bar with an ETA for batch runs (no extra dependency).

It draws on one line of a terminal stream (``\\r`` + redraw), at most every ``min_interval`` seconds, and stays
silent when the stream is not a terminal (logs, CI, pipes) or when disabled. The ETA is the mean time of the items
finished so far times the items left. The text holds counts and times only, never item names.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

__all__ = ["ProgressBar", "format_duration", "format_progress"]


def format_duration(seconds: float | None) -> str:
    """``3725.2`` -> ``"1:02:05"``; ``None`` (not known yet) -> ``"--:--"``."""
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN or negative
        return "--:--"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_progress(
    done: int, total: int, elapsed: float, counts: Mapping[str, int] | None = None, width: int = 24
) -> str:
    """One progress line, e.g. ``[#########...............] 7/20  35%  1.2 s/item  ETA 00:16  DONE 6 FAILED 1``."""
    if total < 0 or done < 0:
        raise ValueError(f"progress counts must be >= 0, got {done}/{total}")
    frac = 1.0 if total == 0 else min(done / total, 1.0)
    filled = int(frac * width)
    per_item = elapsed / done if done else None
    eta = per_item * (total - done) if per_item is not None else None
    rate = f"{per_item:.2g} s/item" if per_item is not None else "-- s/item"
    text = (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {frac * 100:3.0f}%  {rate}  "
        f"ETA {format_duration(eta)}  elapsed {format_duration(elapsed)}"
    )
    if counts:
        text += "  " + " ".join(f"{k} {v}" for k, v in counts.items() if v)
    return text


class ProgressBar:
    """Progress of ``total`` items on ``stream`` (default ``sys.stderr`` at the time of drawing).

    Args:
        total: number of items this run will process.
        enabled: False silences the bar; it is also silent when the stream is not a terminal.
        stream: where to draw.
        min_interval: seconds between redraws (the last state is always drawn by :meth:`close`).
    """

    def __init__(
        self, total: int, *, enabled: bool = True, stream: TextIO | None = None, min_interval: float = 0.2
    ) -> None:
        self.total = int(total)
        self.done = 0
        self.counts: dict[str, int] = {}
        self._stream = stream
        self._min_interval = min_interval
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._width_drawn = 0
        out = self.stream
        self.active = bool(enabled) and self.total > 0 and hasattr(out, "isatty") and out.isatty()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def update(self, status: str, n: int = 1) -> None:
        """Count ``n`` finished items with ``status`` and redraw if due."""
        self.done += n
        self.counts[status] = self.counts.get(status, 0) + n
        now = time.perf_counter()
        if self.active and (now - self._last_draw >= self._min_interval or self.done >= self.total):
            self._draw(now)

    def _draw(self, now: float) -> None:
        line = format_progress(self.done, self.total, now - self._start, self.counts)
        pad = max(self._width_drawn - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width_drawn = len(line)
        self._last_draw = now

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.active:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
            self.active = False

    def __enter__(self) -> ProgressBar:
        if self.active:
            self._draw(time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
