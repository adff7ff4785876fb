"""Region + boundary compound loss with an epoch schedule, and the loss name table.

Kervadec et al. (2019) train with ``alpha * L_region + (1 - alpha) * L_boundary`` where ``alpha`` starts at 1 and
decreases over the epochs ("rebalance"): early on the boundary term, whose gradient is uninformative for a random
network, has no weight; the region (Dice) term then hands weight over to it. :class:`LinearRampSchedule` gives that
schedule (``rebalance=True``) or keeps the region weight at 1 and only ramps the boundary weight up
(``rebalance=False``). The trainer calls :meth:`DiceBoundaryLoss.set_epoch` at the start of every epoch.

What is MONAI's: the region part (:class:`~medseg.losses.DiceLoss`, and the Dice of
:class:`~medseg.losses.DiceCELoss`) computes with ``monai.losses.DiceLoss`` (see :mod:`medseg.losses.dice`). The
boundary loss, the epoch schedule, their combination and the name table are medseg's: MONAI has no boundary loss of
Kervadec et al. and no loss whose weights follow the epoch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.losses.boundary import BoundaryLoss
from medseg.losses.dice import DiceCELoss, DiceLoss, _check_bool, _check_number

logger = logging.getLogger(__name__)


class Schedule(Protocol):
    """Maps an epoch (0-based) to ``(region_weight, boundary_weight)``."""

    def weights(self, epoch: int) -> tuple[float, float]: ...


def _check_epoch(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


class LinearRampSchedule:
    """Boundary weight ramping linearly from 0 to ``max_boundary_weight``.

    For epoch ``e``::

        w(e) = max_boundary_weight * clip((e - start_epoch) / (end_epoch - start_epoch), 0, 1)
        boundary weight = w(e)
        region weight   = 1 - w(e)   if rebalance (Kervadec's alpha = 1 - w, decreasing from 1)
                          1          otherwise

    So the boundary weight is 0 up to ``start_epoch``, reaches ``max_boundary_weight`` at ``end_epoch`` and stays
    there. Kervadec et al.'s ``alpha = max(0.1, 1 - 0.01 * epoch)`` is ``LinearRampSchedule(0, 90, 0.9)``.

    Args:
        start_epoch: last epoch with boundary weight 0, integer >= 0.
        end_epoch: first epoch with the full boundary weight, > start_epoch.
        max_boundary_weight: final boundary weight, in [0, 1] with ``rebalance`` (the region weight stays >= 0),
            >= 0 without.
        rebalance: take the boundary weight from the region weight (True) or add it on top (False).
    """

    def __init__(
        self,
        start_epoch: int = 0,
        end_epoch: int = 90,
        max_boundary_weight: float = 0.9,
        rebalance: bool = True,
    ) -> None:
        self.start_epoch = _check_epoch("start_epoch", start_epoch)
        self.end_epoch = _check_epoch("end_epoch", end_epoch)
        if self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"end_epoch must be > start_epoch, got start_epoch={start_epoch}, end_epoch={end_epoch}"
            )
        self.rebalance = _check_bool("rebalance", rebalance)
        self.max_boundary_weight = _check_number("max_boundary_weight", max_boundary_weight, minimum=0.0)
        if self.rebalance and self.max_boundary_weight > 1.0:
            raise ValueError(
                f"max_boundary_weight must be <= 1 with rebalance=True (the region weight is 1 - it), "
                f"got {max_boundary_weight!r}"
            )

    def weights(self, epoch: int) -> tuple[float, float]:
        epoch = _check_epoch("epoch", epoch)
        fraction = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        boundary = self.max_boundary_weight * min(1.0, max(0.0, fraction))
        region = 1.0 - boundary if self.rebalance else 1.0
        return region, boundary

    def __repr__(self) -> str:
        return (
            f"LinearRampSchedule(start_epoch={self.start_epoch}, end_epoch={self.end_epoch}, "
            f"max_boundary_weight={self.max_boundary_weight}, rebalance={self.rebalance})"
        )


class ConstantSchedule:
    """Fixed weights ``(region_weight, boundary_weight)``, both >= 0."""

    def __init__(self, region_weight: float = 1.0, boundary_weight: float = 1.0) -> None:
        self.region_weight = _check_number("region_weight", region_weight, minimum=0.0)
        self.boundary_weight = _check_number("boundary_weight", boundary_weight, minimum=0.0)

    def weights(self, epoch: int) -> tuple[float, float]:
        _check_epoch("epoch", epoch)
        return self.region_weight, self.boundary_weight

    def __repr__(self) -> str:
        return f"ConstantSchedule(region_weight={self.region_weight}, boundary_weight={self.boundary_weight})"


class DiceBoundaryLoss(nn.Module):
    """``region_weight * dice(input, target) + boundary_weight * boundary(input, target, dist)``.

    The weights come from ``schedule.weights(epoch)`` for the epoch last given to :meth:`set_epoch` (0 until then).
    After each call, ``last_parts`` holds the detached unweighted parts ``{"dice": ..., "boundary": ...}`` for
    logging (tensors, so reading them is the caller's choice of when to synchronise with the device).

    Args:
        dice: the region loss, e.g. :class:`DiceLoss` or :class:`DiceCELoss`, called as ``dice(input, target)``.
        boundary: the boundary loss, called as ``boundary(input, target, dist)``.
        schedule: the weight schedule; ``None`` means ``LinearRampSchedule()`` (Kervadec's rebalance).
    """

    requires_dist = True

    def __init__(self, dice: nn.Module, boundary: nn.Module, schedule: Schedule | None = None) -> None:
        super().__init__()
        if not isinstance(dice, nn.Module) or not isinstance(boundary, nn.Module):
            raise ValueError(
                f"dice and boundary must be loss modules, got {type(dice).__name__} and {type(boundary).__name__}"
            )
        schedule = LinearRampSchedule() if schedule is None else schedule
        if not callable(getattr(schedule, "weights", None)):
            raise ValueError(f"schedule must have a weights(epoch) method, got {type(schedule).__name__}")
        self.dice = dice
        self.boundary = boundary
        self.schedule = schedule
        self.epoch = 0
        self.last_parts: dict[str, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        """Use the weights of ``epoch`` (0-based) from now on."""
        self.epoch = _check_epoch("epoch", epoch)
        region, boundary = self.schedule.weights(self.epoch)
        logger.debug("epoch %d: region weight %.4g, boundary weight %.4g", self.epoch, region, boundary)

    @property
    def weights(self) -> tuple[float, float]:
        """Current ``(region_weight, boundary_weight)``."""
        return self.schedule.weights(self.epoch)

    def forward(self, input: torch.Tensor, target: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the region loss and the boundary loss."""
        region_weight, boundary_weight = self.weights
        dice = self.dice(input, target)
        boundary = self.boundary(input, target, dist)
        self.last_parts = {"dice": dice.detach(), "boundary": boundary.detach()}
        return region_weight * dice + boundary_weight * boundary


# ----------------------------------------------------------------------------------------------- name table

SCHEDULES: dict[str, type] = {"linear_ramp": LinearRampSchedule, "constant": ConstantSchedule}


def _construct(kind: str, name: str, cls: Callable[..., Any], options: Mapping[str, Any]) -> Any:
    """``cls(**options)`` with unknown or missing options reported as ConfigError naming the valid ones."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"options of {kind} {name!r} must be a mapping, got {type(options).__name__}")
    signature = inspect.signature(cls)
    valid = sorted(signature.parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {kind} {name!r}; valid options: {valid}")
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(f"invalid options for {kind} {name!r}: {exc}; valid options: {valid}") from exc
    return cls(**options)


def build_schedule(options: Mapping[str, Any] | None) -> Schedule:
    """Build a schedule from ``{"name": "linear_ramp" | "constant", **options}``; None gives the default ramp."""
    if options is None:
        return LinearRampSchedule()
    if not isinstance(options, Mapping) or "name" not in options:
        raise ConfigError(
            f"schedule must be a mapping with a 'name' key, one of {sorted(SCHEDULES)}; got {options!r}"
        )
    options = dict(options)
    name = options.pop("name")
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; valid schedules: {sorted(SCHEDULES)}")
    return _construct("schedule", name, SCHEDULES[name], options)


def _compound(region_cls: type) -> Callable[..., DiceBoundaryLoss]:
    def make(
        dice: Mapping[str, Any] | None = None,
        boundary: Mapping[str, Any] | None = None,
        schedule: Mapping[str, Any] | None = None,
    ) -> DiceBoundaryLoss:
        return DiceBoundaryLoss(
            dice=_construct("loss part", region_cls.__name__, region_cls, dice or {}),
            boundary=_construct("loss part", "BoundaryLoss", BoundaryLoss, boundary or {}),
            schedule=build_schedule(schedule),
        )

    return make


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": DiceLoss,
    "dice_ce": DiceCELoss,
    "boundary": BoundaryLoss,
    "dice_boundary": _compound(DiceLoss),
    "dice_ce_boundary": _compound(DiceCELoss),
}


def build_loss(name: str, **options: Any) -> nn.Module:
    """Build a loss by name.

    ``"dice"``, ``"dice_ce"`` and ``"boundary"`` take the options of :class:`DiceLoss`, :class:`DiceCELoss` and
    :class:`BoundaryLoss`. The compound ``"dice_boundary"`` and ``"dice_ce_boundary"`` take three mappings:
    ``dice`` (options of the region loss), ``boundary`` (options of :class:`BoundaryLoss`) and ``schedule``
    (``{"name": "linear_ramp" | "constant", ...}``, default ``LinearRampSchedule()``), e.g.::

        build_loss("dice_boundary", dice={"to_onehot_y": True},
                   schedule={"name": "linear_ramp", "start_epoch": 10, "end_epoch": 60, "max_boundary_weight": 0.5})

    Raises:
        ConfigError (a ValueError): unknown name (the message lists the valid names) or unknown / invalid options
            (the message lists the valid options).
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {sorted(LOSSES)}")
    return _construct("loss", name, LOSSES[name], options)
