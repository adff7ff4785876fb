"""Segmentation losses: soft Dice, Dice + cross-entropy, boundary loss, compound schedules, deep supervision.

Every loss is called as ``loss(pred, target)``, or ``loss(pred, target, dist=dist)`` when its ``requires_dist``
attribute is True (boundary losses take the signed distance maps of :mod:`medseg.data.distance`).
"""

from __future__ import annotations

from medseg.losses.boundary import BoundaryLoss
from medseg.losses.compound import (
    LOSSES,
    SCHEDULES,
    ConstantSchedule,
    DiceBoundaryLoss,
    LinearRampSchedule,
    Schedule,
    build_loss,
    build_schedule,
)
from medseg.losses.deep_supervision import DeepSupervisionLoss
from medseg.losses.dice import DiceCELoss, DiceLoss

__all__ = [
    "LOSSES",
    "SCHEDULES",
    "BoundaryLoss",
    "ConstantSchedule",
    "DeepSupervisionLoss",
    "DiceBoundaryLoss",
    "DiceCELoss",
    "DiceLoss",
    "LinearRampSchedule",
    "Schedule",
    "build_loss",
    "build_schedule",
]
