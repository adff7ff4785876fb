"""The per-case time limit of worker processes and Ray actors: a hung worker fails only its case.

A case whose processing never returns (a worker stuck in a system call on a hung network mount, a GPU driver that
stopped answering, a decoder in an endless loop) would hold its worker, and at the end the whole run, forever. The
parent (or the Ray driver) therefore times every case its workers hold: past the limit it kills the worker
(SIGKILL, or ``ray.kill``: a process stuck in a system call may never act on SIGTERM), marks the case ``FAILED``
with reason ``WorkerTimeout`` (retried by the next run), hands a case the worker had only read ahead to another
worker, starts a replacement worker and goes on.

The limit (``ScaleOut.case_timeout``, ``medseg segment --case-timeout``):

* ``"auto"`` (the default): ``max(600 s, 20 x the median time of the cases finished so far in this run)`` once
  :data:`AUTO_MIN_CASES` cases have finished, and 3600 s before that. Generous on purpose: a case runs 20 times
  longer than a typical one of the same archive (or an hour before there is a typical one) only when it is stuck,
  while a CPU-only run whose cases take minutes each adapts without a setting. It applies where cases already run
  in worker processes or Ray actors (``workers`` >= 2, or Ray); a run with one worker computes in its own process,
  which cannot stop itself.
* a number of seconds: a fixed limit, for every case from the first. With one worker it makes the run compute in
  one worker process (which can be stopped) instead of in its own.
* ``None`` / ``"off"``: no limit (a stuck case then holds its worker until the run is stopped).

A case's time runs from when its worker is free for it (it finished the previous case, or received this one) to its
result, so it covers reading the input and computing, not the worker's start-up or model loading.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from medseg.errors import ConfigError

__all__ = [
    "AUTO_FACTOR",
    "AUTO_FIRST_S",
    "AUTO_FLOOR_S",
    "AUTO_MIN_CASES",
    "TIMEOUT_REASON",
    "CaseTimeout",
    "parse_case_timeout",
]

AUTO_FLOOR_S = 600.0
AUTO_FACTOR = 20.0
AUTO_MIN_CASES = 3
AUTO_FIRST_S = 3600.0
TIMEOUT_REASON = "WorkerTimeout"


@dataclass(frozen=True)
class CaseTimeout:
    """A per-case time limit: ``fixed_s`` seconds, or derived from the run's case times when ``fixed_s`` is None."""

    fixed_s: float | None = None

    @property
    def auto(self) -> bool:
        return self.fixed_s is None

    def limit(self, finished: Sequence[float]) -> float:
        """The limit in seconds, given the durations of the cases finished so far in this run."""
        if self.fixed_s is not None:
            return self.fixed_s
        if len(finished) < AUTO_MIN_CASES:
            return AUTO_FIRST_S
        return max(AUTO_FLOOR_S, AUTO_FACTOR * statistics.median(finished))

    def describe(self) -> str:
        return "auto" if self.fixed_s is None else f"{self.fixed_s:g} s"


def parse_case_timeout(value: float | int | str | None) -> CaseTimeout | None:
    """``"auto"``, a number of seconds (> 0; a string such as ``"900"`` too), or ``None`` / ``"off"`` (no limit).

    Raises:
        ConfigError: anything else, naming the setting and the value.
    """
    given = value
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return CaseTimeout()
        if text in ("off", "none"):
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"case_timeout: expected 'auto', 'off' or a number of seconds > 0, got {given!r}")
    return CaseTimeout(float(value))
