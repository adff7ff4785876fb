"""Optimizer (AdamW or SGD with Nesterov momentum) and the poly learning-rate schedule, from the config.

Two forms of the poly schedule: stepped once per epoch over ``train.epochs`` (:func:`build_poly_schedule`), and
driven by the fraction of the run done, set before every step (:class:`ProgressPoly`), for a wall-clock budget
where the number of steps is only known as the run goes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.99,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """``"adamw"`` (torch.optim.AdamW) or ``"sgd"`` (momentum, optionally Nesterov)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
        )
    raise ConfigError(f"train.optimizer: unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")


def build_poly_schedule(optimizer: torch.optim.Optimizer, epochs: int, power: float = 0.9) -> LRScheduler:
    """Poly decay stepped once per epoch: the learning rate of epoch ``e`` is ``lr * (1 - e / epochs) ** power``."""
    if epochs < 1:
        raise ConfigError(f"train.epochs: must be >= 1, got {epochs}")
    return PolynomialLR(optimizer, total_iters=epochs, power=power)


class ProgressPoly:
    """Poly decay over the fraction ``p`` of the run done: ``lr = base_lr * (1 - p) ** power``.

    The loop calls :meth:`set_progress` before every step (``p`` never goes back) and ``set_progress(1.0)`` when
    the run ends, so the final learning rate is 0 as with :func:`build_poly_schedule` after its last epoch.
    :meth:`step` (the per-epoch call) does nothing. ``state_dict`` / ``load_state_dict`` resume it.
    """

    per_step = True

    def __init__(self, optimizer: torch.optim.Optimizer, power: float = 0.9) -> None:
        if power < 0:
            raise ConfigError(f"train.poly_power: must be >= 0, got {power}")
        self.optimizer, self.power = optimizer, float(power)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.progress = 0.0

    def set_progress(self, fraction: float) -> float:
        """Set the learning rate for ``fraction`` (clamped to [current progress, 1]); returns the first group's."""
        self.progress = min(1.0, max(self.progress, float(fraction)))
        factor = (1.0 - self.progress) ** self.power
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self) -> None:
        """Nothing at epoch ends: the rate follows the progress."""

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "progress": self.progress, "power": self.power}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self.power = float(state["power"])
        self.progress = 0.0
        self.set_progress(float(state["progress"]))


def build_schedule(
    optimizer: torch.optim.Optimizer, epochs: int, power: float = 0.9, budget: bool = False
) -> LRScheduler | ProgressPoly:
    """The poly schedule of a run: per epoch over ``epochs``, or by progress when training has a time budget."""
    if budget:
        return ProgressPoly(optimizer, power)
    return build_poly_schedule(optimizer, epochs, power)
