"""The plan being made: its decisions (key, value, reason) in order and the config overlay they build.

Shared by every rule module (:mod:`medseg.planning.geometry`, :mod:`medseg.planning.sizing`,
:mod:`medseg.planning.intensity`, :mod:`medseg.planning.rules`) and by the table and calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medseg.errors import ConfigError
from medseg.planning.memory import StepCost


class PlanError(ConfigError):
    """No plan fits: the message gives the budget and what the smallest candidate needs."""


@dataclass(frozen=True)
class Decision:
    """One row of the plan: a dotted config key (or an informative ``(...)`` row), its value and why."""

    key: str
    value: Any
    reason: str


@dataclass
class Plan:
    """Decisions in order and the config overlay they make (only the keys the plan decides)."""

    decisions: list[Decision] = field(default_factory=list)
    overlay: dict[str, Any] = field(default_factory=dict)
    cost: StepCost | None = None
    pools_per_axis: list[int] = field(default_factory=list)
    median_shape: list[float] = field(default_factory=list)
    full_median_shape: list[float] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0

    def decide(self, key: str, value: Any, reason: str, *, in_overlay: bool = True) -> None:
        """Record a decision; a config key also goes into :attr:`overlay` (``a.b.c`` -> nested mappings)."""
        self.decisions.append(Decision(key, value, reason))
        if not in_overlay:
            return
        node = self.overlay
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value

    def value(self, key: str) -> Any:
        return next(d.value for d in reversed(self.decisions) if d.key == key)
