"""Self-configuration (``medseg plan``): a dataset fingerprint, nnU-Net-style rules, a calibrated time budget.

* :mod:`medseg.planning.fingerprint` -- geometry, intensities and label sizes of every case;
* :mod:`medseg.planning.memory` -- memory and compute of one training step; the device's budget;
* :mod:`medseg.planning.rules` -- the documented rules from fingerprint + budget to a config overlay (by subject in
  :mod:`~medseg.planning.geometry`, :mod:`~medseg.planning.sizing`, :mod:`~medseg.planning.intensity`);
* :mod:`medseg.planning.plan` -- the plan being made: decisions with reasons and the overlay;
* :mod:`medseg.planning.calibrate` -- the measured step time and the epochs that fit a time budget;
* :mod:`medseg.planning.table` -- the plan as a table with a reason per choice;
* :mod:`medseg.planning.planner` -- :func:`make_plan`, which writes ``plan.yaml`` and ``fingerprint.json``.
"""

from __future__ import annotations

from medseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats, LabelStats
from medseg.planning.memory import DeviceBudget, StepCost, estimate_step
from medseg.planning.plan import Decision, Plan, PlanError
from medseg.planning.planner import PlanResult, make_plan, parse_modalities
from medseg.planning.rules import plan_from_fingerprint
from medseg.planning.table import plan_table

__all__ = [
    "CaseFingerprint",
    "Decision",
    "DeviceBudget",
    "Fingerprint",
    "IntensityStats",
    "LabelStats",
    "Plan",
    "PlanError",
    "PlanResult",
    "StepCost",
    "estimate_step",
    "make_plan",
    "parse_modalities",
    "plan_from_fingerprint",
    "plan_table",
]
