"""Wall-clock budget: the clock's rules, the poly schedule by progress, a budgeted run that stops by the budget
with the learning rate at its final value, and a resumed budgeted run that continues with the budget left."""

from __future__ import annotations

import math
import time

import pytest
import torch
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.errors import ConfigError
from medseg.training import train
from medseg.training.clock import RunClock
from medseg.training.optim import ProgressPoly, build_schedule

BUDGET_MIN = 0.05  # 3 s of training: far fewer than the 500 epochs allowed


def _optimizer(lr: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_progress_poly_follows_the_fraction_and_resumes():
    opt = _optimizer()
    sched = ProgressPoly(opt, power=0.9)
    assert sched.set_progress(0.0) == pytest.approx(0.01)
    assert sched.set_progress(0.5) == pytest.approx(0.01 * 0.5**0.9)
    assert sched.set_progress(0.25) == pytest.approx(0.01 * 0.5**0.9)  # never goes back
    state = sched.state_dict()
    other = ProgressPoly(_optimizer(), power=0.9)
    other.load_state_dict(state)
    assert other.get_last_lr() == pytest.approx([0.01 * 0.5**0.9])
    assert sched.set_progress(1.0) == 0.0 and sched.set_progress(7.0) == 0.0
    assert isinstance(build_schedule(_optimizer(), 10, 0.9, budget=False), torch.optim.lr_scheduler.PolynomialLR)
    assert isinstance(build_schedule(_optimizer(), 10, 0.9, budget=True), ProgressPoly)


def test_clock_fraction_eta_and_last_epoch():
    clock = RunClock(epochs=10, val_every=5)
    clock.steps_per_epoch = 4
    for _ in range(10):
        clock.note_step(0.5)
    assert clock.step_fraction() == pytest.approx(0.25) and clock.fraction() == pytest.approx(0.25)
    # 30 steps left at 0.5 s, and the validations after epochs 5 and 10 at 2 s each
    clock.note_validation(2.0)
    assert clock.eta(epoch=2) == pytest.approx(30 * 0.5 + 2 * 2.0)
    assert not clock.exhausted() and not clock.last_epoch(validates=True)  # no budget: only epochs end a run

    budget = RunClock(epochs=1000, val_every=0, budget_seconds=100.0)
    budget.spent = 50.0  # as after a resume
    budget.note_validation(10.0)
    budget.note_checkpoint(2.0)
    budget.note_step(5.0)
    assert budget.time_fraction() == pytest.approx(50.0 / 88.0, rel=1e-3)
    assert budget.eta(epoch=0) == pytest.approx(50.0, abs=0.5)
    assert not budget.last_epoch(validates=False)  # 50 + 2 + 5 + 12 < 100
    budget.spent = 82.0
    assert not budget.exhausted() and budget.last_epoch(validates=False)  # 82 + 2 + 5 + 12 >= 100: stop now
    budget.spent = 88.0
    assert budget.exhausted() and budget.fraction() == 1.0
    state = budget.state_dict()
    again = RunClock(epochs=1000, budget_seconds=100.0)
    again.load_state_dict(state, steps_done=7)
    assert again.elapsed() == pytest.approx(state["elapsed_seconds"]) and again.steps_done == 7
    assert again.reserve == pytest.approx(12.0)
    with pytest.raises(ValueError, match="budget_seconds"):
        RunClock(epochs=1, budget_seconds=0.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("budget_minutes", 0, "train.budget_minutes: must be > 0"),
        ("budget_minutes", -1.5, "train.budget_minutes: must be > 0"),
        ("budget_minutes", math.inf, "train.budget_minutes: must be > 0"),
        ("val_every", -1, "train.val_every: must be >= 1, or 0 for no validation"),
    ],
)
def test_budget_and_validation_keys_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(train={key: value})


class Steps:
    """Records the learning rate of every step and the epochs seen; interrupts once at ``stop_at`` (epoch, step)."""

    def __init__(self, stop_at: tuple[int, int] | None = None) -> None:
        self.stop_at, self.lrs, self.epochs = stop_at, [], []

    def on_step_end(self, epoch, step, info):
        if (epoch, step) == self.stop_at:
            self.stop_at = None
            raise KeyboardInterrupt  # not an Exception: it passes the hook guard, like Ctrl-C
        self.lrs.append(info["lr"])

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)


def _budget_config(**train):
    return tiny_config(train={"epochs": 500, "val_every": 4, "budget_minutes": BUDGET_MIN, **train})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_perfusion(tmp_path_factory.mktemp("budget") / "data", n=4)


def test_budget_stops_the_run_with_the_final_learning_rate(dataset, tmp_path):
    seen = Steps()
    result = train(_budget_config(), tmp_path / "work", datalist=dataset, tracker=seen)
    assert result.succeeded and result.stopped_by == "budget"
    n = len(result.history)
    assert 1 <= n < 500 and seen.epochs == list(range(n))  # stopped by the budget, long before epoch 500
    assert result.history[-1]["run/progress"] == 1.0 and "val/dice_mean" in result.history[-1]  # final validation
    steps = sum(h["train/steps"] for h in result.history)
    assert steps == len(seen.lrs) >= 2
    # the last step's rate is > 0, or 0 when an epoch end (validation, checkpoint) outlasted its reserve on a loaded
    # machine and the next epoch began with the budget spent (one step at the final rate): timing, not a rule
    assert 0 <= seen.lrs[-1] < seen.lrs[0] <= 0.01
    assert all(a >= b for a, b in zip(seen.lrs, seen.lrs[1:], strict=False))  # poly decay, step by step
    last = load_checkpoint(result.last_checkpoint)
    assert last.extra["stopped_by"] == "budget" and last.epoch == n - 1
    assert last.optimizer["param_groups"][0]["lr"] == 0.0  # the final value of the poly schedule
    assert last.scheduler["progress"] == 1.0
    assert last.extra["clock"]["elapsed_seconds"] == pytest.approx(result.train_seconds, abs=0.5)
    assert result.best_checkpoint.is_file()

    # a finished run trains no further when resumed
    again = train(_budget_config(), tmp_path / "work", datalist=dataset, resume=True)
    assert len(again.history) == n and again.stopped_by == "budget"


def test_resumed_budget_run_continues_with_the_budget_left(dataset, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        train(_budget_config(), work, datalist=dataset, tracker=Steps(stop_at=(1, 0)))
    ckpt = load_checkpoint(work / "checkpoints" / "last.pt")
    assert ckpt.epoch == 0 and ckpt.extra["stopped_by"] is None
    spent, progress = ckpt.extra["clock"]["elapsed_seconds"], ckpt.scheduler["progress"]
    assert 0 < spent < 60 * BUDGET_MIN and 0 < progress < 1

    time.sleep(0.5)  # time between the interruption and the resume is not counted
    seen = Steps()
    result = train(_budget_config(), work, datalist=dataset, resume=True, tracker=seen)
    assert result.succeeded and result.stopped_by == "budget" and seen.epochs[0] == 1
    assert result.train_seconds >= spent  # the clock continued from the checkpoint's time
    lr_at_checkpoint = 0.01 * (1 - progress) ** 0.9
    assert seen.lrs[0] <= lr_at_checkpoint + 1e-12  # the schedule continued, it did not restart at 0.01
    assert load_checkpoint(result.last_checkpoint).optimizer["param_groups"][0]["lr"] == 0.0

    with pytest.raises(ConfigError, match="was trained with train.budget_minutes"):
        train(tiny_config(), tmp_path / "work", datalist=dataset, resume=True)
