"""The run's clock: time used (across resumes), the fraction of the run done, the ETA and the wall-clock budget.

Time counts from the start of the training loop: steps (data loading included), validations and checkpoints.
The loading and caching of the data before the first epoch are not counted. A resumed run continues from the time
stored in ``last.pt``: the time spent after that checkpoint, before the interruption, is not counted.

The fraction done ``p`` (in [0, 1], never decreasing) is the larger of

* steps done / steps planned (``epochs`` x steps per epoch), and
* with a budget, time used / time available, where the time available is the budget minus a reserve for the
  end of the run: the durations of the last validation and the last checkpoint writing (0 before the first
  ones, so a run whose first validation is its final one overruns the budget by that validation).

The budget is exhausted when the time fraction reaches 1: the loop then ends the epoch, runs the final validation
and writes the checkpoints, so the whole run ends close to the budget. An epoch is also made the last when its
end (its validation, if due, and checkpoints) would leave no time for another step and the final validation
(:meth:`RunClock.last_epoch`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

logger = logging.getLogger(__name__)


class RunClock:
    """Tracks time and steps of one training run.

    Args:
        epochs: epochs planned (an upper bound when there is a budget).
        val_every: validation period in epochs (0: no validation); the final epoch is always validated.
        budget_seconds: wall-clock budget of the loop (None: none).
    """

    def __init__(self, epochs: int, val_every: int = 1, budget_seconds: float | None = None) -> None:
        if budget_seconds is not None and not budget_seconds > 0:
            raise ValueError(f"budget_seconds must be > 0, got {budget_seconds}")
        self.epochs, self.val_every, self.budget = int(epochs), int(val_every), budget_seconds
        self.spent = 0.0  # seconds of earlier sessions (resume)
        self.steps_done = 0
        self.steps_per_epoch: int | None = None
        self.val_seconds = 0.0  # duration of the last validation: the reserve for the final one
        self.ckpt_seconds = 0.0  # duration of the last checkpoint writing
        self._start: float | None = None
        self._session_steps = 0
        self._session_step_seconds = 0.0
        self._fraction = 0.0

    # ------------------------------------------------------------------------------------------------ time
    def start(self) -> None:
        """Start (or restart) counting this session's time."""
        self._start = time.perf_counter()

    def stop(self) -> None:
        """Stop counting: the time used stays as it is now."""
        self.spent, self._start = self.elapsed(), None

    def elapsed(self) -> float:
        """Seconds used by the run so far (earlier sessions included)."""
        return self.spent + (0.0 if self._start is None else time.perf_counter() - self._start)

    def note_step(self, seconds: float) -> None:
        """One training step of ``seconds`` (its data loading included) is done."""
        self.steps_done += 1
        self._session_steps += 1
        self._session_step_seconds += float(seconds)

    def note_validation(self, seconds: float) -> None:
        """A validation took ``seconds``: the reserve kept for the final validation."""
        self.val_seconds = float(seconds)

    def note_checkpoint(self, seconds: float) -> None:
        """Writing the checkpoints of an epoch took ``seconds``."""
        self.ckpt_seconds = float(seconds)

    def mean_step(self) -> float:
        """Mean seconds per step in this session (0 before the first)."""
        return self._session_step_seconds / self._session_steps if self._session_steps else 0.0

    @property
    def reserve(self) -> float:
        """Seconds kept for the end of the run: the final validation and checkpoints."""
        return self.val_seconds + self.ckpt_seconds

    # ------------------------------------------------------------------------------------------------ progress
    @property
    def total_steps(self) -> int | None:
        return None if self.steps_per_epoch is None else self.epochs * self.steps_per_epoch

    def step_fraction(self) -> float:
        total = self.total_steps
        return 0.0 if not total else self.steps_done / total

    def time_fraction(self) -> float:
        """Time used / time available (0 without a budget)."""
        if self.budget is None:
            return 0.0
        available = self.budget - self.reserve
        return math.inf if available <= 0 else self.elapsed() / available

    def fraction(self) -> float:
        """The fraction of the run done, in [0, 1]; it never decreases."""
        self._fraction = min(1.0, max(self._fraction, self.step_fraction(), self.time_fraction()))
        return self._fraction

    def exhausted(self) -> bool:
        """True when the budget (less the final validation's reserve) is used up."""
        return self.budget is not None and self.time_fraction() >= 1.0

    def last_epoch(self, validates: bool) -> bool:
        """Whether the epoch whose steps just ended must be the last: the budget is used up, or its end (its
        validation when ``validates``, and checkpoints) would leave no time for one more step and the run's end."""
        if self.budget is None:
            return False
        end = (self.val_seconds if validates else 0.0) + self.ckpt_seconds
        return self.exhausted() or self.elapsed() + end + self.mean_step() + self.reserve >= self.budget

    def _validations_left(self, epoch: int) -> int:
        """Validations still to run after epoch ``epoch`` has trained (its own included)."""
        if self.val_every <= 0:
            return 0
        rest = range(epoch, self.epochs)
        return sum(1 for e in rest if (e + 1) % self.val_every == 0 or e == self.epochs - 1)

    def eta(self, epoch: int) -> float | None:
        """Seconds until the run ends, seen from epoch ``epoch``: the steps left at the mean step time of this
        session plus the validations left, capped by the budget left (None while nothing is measured)."""
        estimates = []
        total = self.total_steps
        if total is not None and self._session_steps:
            step = self._session_step_seconds / self._session_steps
            estimates.append(max(0, total - self.steps_done) * step + self._validations_left(epoch) * self.val_seconds)
        if self.budget is not None:
            estimates.append(max(0.0, self.budget - self.elapsed()))
        return min(estimates) if estimates else None

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` keeps: time used, the validation reserve and the fraction done."""
        return {
            "elapsed_seconds": self.elapsed(),
            "val_seconds": self.val_seconds,
            "ckpt_seconds": self.ckpt_seconds,
            "fraction": self._fraction,
        }

    def load_state_dict(self, state: dict[str, Any], steps_done: int) -> None:
        """Continue a run: time used and fraction from ``state``, ``steps_done`` from the history."""
        self.spent = float(state.get("elapsed_seconds", 0.0))
        self.val_seconds = float(state.get("val_seconds", 0.0))
        self.ckpt_seconds = float(state.get("ckpt_seconds", 0.0))
        self._fraction = float(state.get("fraction", 0.0))
        self.steps_done = int(steps_done)
