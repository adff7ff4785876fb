"""Sizing rules 3-5 (see :mod:`medseg.planning.rules`): the largest patch and network whose training step fits
the device budget (nnU-Net's shrinking order), then the batch size.

A medseg step holds ``train.batch_size`` cases x ``train.samples_per_case`` patches (the loader flattens each
case's patches into the batch), while nnU-Net's batch size, its minimum of 2 and its 5 % dataset cap count patches.
So the rules here count patches too: ``cost_of(patch, features, cases)`` must cost a step of ``cases x
samples_per_case`` patches, the smallest batch is the fewest cases that give :data:`MIN_PATCHES`, and the batch
grows by whole cases while the patches stay within the caps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from medseg.planning.geometry import MIN_FEATURE_MAP, features_for, initial_patch, pool_props
from medseg.planning.memory import GIB, DeviceBudget, StepCost
from medseg.planning.plan import PlanError

#: nnU-Net's minimum batch (``UNet_min_batch_size``), in patches per step
MIN_PATCHES = 2
MAX_PATCHES = 64
MAX_DATASET_FRACTION = 0.05


@dataclass(frozen=True)
class NetworkChoice:
    patch: list[int]
    pools: list[int]
    features: list[int]
    cost: StepCost
    shrunk: int
    limited_by: str


def _fits(cost: StepCost, budget: DeviceBudget) -> tuple[bool, bool]:
    mem = cost.total_bytes <= budget.memory_bytes
    seconds = budget.predicted_seconds(cost)
    time_ok = budget.max_step_seconds is None or seconds is None or seconds <= budget.max_step_seconds
    return mem, time_ok


def min_batch(samples_per_case: int) -> int:
    """The fewest cases per step that give :data:`MIN_PATCHES` patches."""
    return max(1, math.ceil(MIN_PATCHES / max(1, samples_per_case)))


def choose_network(
    spacing: Sequence[float], shape: Sequence[float], budget: DeviceBudget, base: int,
    cost_of: Callable[[list[int], list[int], int], StepCost], samples_per_case: int = 1,
) -> NetworkChoice:
    """Rules 3 and 4: the largest patch (nnU-Net's shrinking order) whose step at the smallest batch (>= 2
    patches) fits ``budget``."""
    cases = min_batch(samples_per_case)
    patch = initial_patch(spacing, shape)
    pools, patch, divisors = pool_props(spacing, patch)
    shrunk = 0
    while True:
        depth = max(1, min(pools))
        features = features_for(depth, base, len(spacing))
        cost = cost_of(patch, features, cases)
        mem_ok, time_ok = _fits(cost, budget)
        if mem_ok and time_ok:
            return NetworkChoice(patch, pools, features, cost, shrunk, "")
        ratios = [p / s if p - d >= 2 * MIN_FEATURE_MAP else -1.0
                  for p, s, d in zip(patch, shape, divisors, strict=True)]
        axis = int(np.argmax(ratios))
        if ratios[axis] < 0:  # nothing left to shrink
            if not mem_ok:
                raise PlanError(
                    f"the memory budget is too small: {budget.memory_bytes / GIB:.2f} GiB ({budget.memory_source}) "
                    f"but the smallest candidate, patch {list(patch)} x batch {cases} ({cases * samples_per_case} "
                    f"patches) with widths {features}, "
                    f"needs {cost.total_bytes / GIB:.2f} GiB; free memory or plan for another device"
                )
            return NetworkChoice(patch, pools, features, cost, shrunk, "time")
        trial = list(patch)
        trial[axis] -= divisors[axis]
        _, _, trial_div = pool_props(spacing, trial)
        patch = list(patch)
        patch[axis] -= trial_div[axis]
        pools, patch, divisors = pool_props(spacing, patch)
        shrunk += 1


def choose_batch(
    patch: Sequence[int], features: list[int], budget: DeviceBudget, dataset_voxels: float,
    cost_of: Callable[[list[int], list[int], int], StepCost], samples_per_case: int = 1,
) -> tuple[int, StepCost, str]:
    """Rule 5: grow the batch (in cases) from the smallest while it fits and its patches cover <= 5 % of the
    dataset."""
    spc = max(1, samples_per_case)
    cap = max(MIN_PATCHES, int(round(dataset_voxels * MAX_DATASET_FRACTION / float(np.prod(patch)))))
    batch = min_batch(spc)
    cost = cost_of(list(patch), features, batch)
    why = "the minimum"
    while (batch + 1) * spc <= min(cap, MAX_PATCHES):
        nxt = cost_of(list(patch), features, batch + 1)
        mem_ok, time_ok = _fits(nxt, budget)
        if not (mem_ok and time_ok):
            why = "the memory budget" if not mem_ok else "the step-time limit"
            break
        batch, cost = batch + 1, nxt
    else:
        why = (f"the 5% cap ({cap} patches = 5% of {dataset_voxels:.3g} voxels)" if cap <= MAX_PATCHES
               else f"{MAX_PATCHES} patches")
    return batch, cost, why
