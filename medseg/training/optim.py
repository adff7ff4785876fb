"""Optimizer (AdamW or SGD with Nesterov momentum) and the poly learning-rate schedule, from the config."""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
