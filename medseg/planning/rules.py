"""The planning rules: from a dataset fingerprint and a device budget to a config overlay, one reason per choice.

The reference is nnU-Net's ``ExperimentPlanner`` (``MIC-DKFZ/nnUNet: nnunetv2/experiment_planning/
experiment_planners/default_experiment_planner.py`` and ``network_topology.py``); where medseg differs, the rule
says so. Every rule below is applied by :func:`plan_from_fingerprint` and reported as a :class:`Decision`.

1. **Target spacing** (``data.spacing``): the median spacing per axis. When the dataset is anisotropic -- the largest
   median spacing is more than 3x the next largest (``ANISO_THRESHOLD``) *and* that axis has more than 3x fewer
   voxels than the smallest other axis -- the low-resolution axis gets the 10th percentile of its spacings instead
   (never finer than the other axes), so few thick-slice cases are not interpolated into many fake slices.
2. **Median shape**: the median over cases of the shape after the foreground crop (when rule 6 turns it on) and
   resampling to the target spacing. It bounds the patch and sizes the dataset for rule 5.
3. **Patch size and pooling** (``train.patch_size``): start from a patch whose edge lengths in mm are equal and
   whose volume is 256^3 voxels, clipped to the median shape. Per axis, nnU-Net's pooling rule: an axis is pooled
   while its feature map stays >= 4 voxels (``MIN_FEATURE_MAP``; a lone axis needs 12) and its current spacing is
   within 2x of the finest, so a low-resolution axis pools later and fewer times. The patch is padded to a multiple
   of ``2**pools`` per axis. While one training step does not fit the memory budget (or, on CPU, the step-time
   limit), the axis with the largest patch / median-shape ratio is shrunk by its divisor and the pooling recomputed.
   If the smallest patch still does not fit the memory budget, planning fails with the numbers.
4. **Network depth and width** (``network.features``): medseg's UNet/UNet++ pool every axis at every level, so the
   depth is the *smallest* per-axis pool count (the low-resolution axis is never pooled below 4 voxels; the other
   axes' extra pools, which nnU-Net's per-axis strides would add, are reported but not used) and at least 1.
   Widths start at 32 on CUDA (nnU-Net) and 16 on CPU (compute-bound there: half the width is a quarter of the
   convolution work) and double per level, capped at 320 in 3D (512 in 2D) as nnU-Net caps them.
5. **Batch size** (``train.batch_size``): at least 2; grown while the step fits the memory budget (and the CPU
   step-time limit) and one batch covers at most 5 % of the dataset's voxels (nnU-Net's overfitting cap;
   dataset voxels = median shape x number of cases).
6. **Foreground crop** (``train.crop_foreground``, ``train.foreground_threshold``): the crop keeps the bounding box
   of the voxels above the threshold (-500 HU, body vs air, when every channel is CT; else the config's threshold).
   On when it keeps at most 3/4 of the voxels in the median case (the 3/4 nnU-Net uses for its non-zero crop); off
   otherwise (it would only cost time).
7. **Modality** per channel, first rule that applies: ``--modality CHANNEL=MOD``; the channel's DICOM series rule
   (``series.modality``); a ``ct_window`` normalization in the config; the channel's name (``CT``; ``MR``, ``T1``,
   ``T2``, ``FLAIR``, ``ADC``, ...); the modality in the DICOM header; the intensities: CT when the 0.5th percentile
   of the image voxels is <= -500 (air at about -1000 HU; MR and most derived maps have no such values); otherwise
   ``other``.
8. **Normalization** (``data.channels[*].normalization``): CT -> ``ct_clip_zscore``: clip to the 0.5/99.5
   percentiles of the dataset's foreground (label > 0) intensities, then z-score with their mean and standard
   deviation (nnU-Net's CTNormalization, fixed for the whole dataset). MR and other -> ``zscore`` per image; with
   ``nonzero: true`` when the non-zero crop keeps less than 3/4 of the median case (nnU-Net's ``use_mask_for_norm``:
   skull-stripped or masked images).
9. **Epochs for a time budget** (``train.epochs``, ``train.budget_minutes``): from the calibrated step time
   (:mod:`medseg.planning.calibrate`): ``epochs = budget / (steps per epoch x step time + validation time /
   val_every)``, with steps per epoch = ceil(training cases x samples per case / batch) and the validation time
   estimated from the number of sliding windows over the median (uncropped) case at a third of a step per window.
10. **Postprocessing** (``inference.postprocess.largest_component``): the labels that are one connected object in
    every training case (a brain, a liver, an organ mask) keep only their largest connected component at
    inference; stray blobs far from the object are what drives HD95 up. nnU-Net decides the same step by
    cross-validation; here the training labels themselves decide, so planning needs no extra training. Labels
    with several objects in some case (lesions, vessels) are left as predicted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.planning.fingerprint import CT_BODY_THRESHOLD, Fingerprint
from medseg.planning.memory import GIB, DeviceBudget, StepCost, estimate_step

logger = logging.getLogger(__name__)

ANISO_THRESHOLD = 3.0
LOWRES_PERCENTILE = 10.0
INITIAL_PATCH_EDGE = 256
MIN_FEATURE_MAP = 4
BASE_FEATURES = {"cuda": 32, "cpu": 16}
MAX_FEATURES = {2: 512, 3: 320}
MIN_BATCH = 2
MAX_BATCH = 64
MAX_DATASET_FRACTION = 0.05
CROP_KEEP_MAX = 0.75
NONZERO_KEEP_MAX = 0.75
CT_AIR_PERCENTILE_HU = -500.0
MR_NAMES = ("MR", "MRI", "T1", "T1W", "T1C", "T1CE", "T1GD", "T2", "T2W", "FLAIR", "PD", "ADC", "DWI", "SWI")
MODALITIES = ("CT", "MR", "other")


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


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return " x ".join(f"{float(v):.{digits}g}" for v in values)


# ------------------------------------------------------------------------------------------------ geometry rules


def target_spacing(fp: Fingerprint) -> tuple[list[float], str]:
    """Rule 1: the target spacing and its reason."""
    spacings = fp.spacings
    target = np.median(spacings, axis=0)
    sizes = np.median(fp.shapes, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    reason = f"median spacing per axis ({len(fp.cases)} cases)"
    if not others:
        return [float(t) for t in target], reason
    other_spacing = max(target[i] for i in others)
    aniso_spacing = target[worst] > ANISO_THRESHOLD * other_spacing
    aniso_voxels = sizes[worst] * ANISO_THRESHOLD < min(sizes[i] for i in others)
    if aniso_spacing and aniso_voxels:
        low = float(np.percentile(spacings[:, worst], LOWRES_PERCENTILE))
        if low < other_spacing:
            low = float(max(other_spacing, low) + 1e-5)
        target[worst] = low
        reason = (
            f"median spacing; axis {worst} is low-resolution ({float(np.median(spacings[:, worst])):.3g} mm > "
            f"{ANISO_THRESHOLD:g} x {float(other_spacing):.3g} mm, {sizes[worst]:.0f} voxels vs "
            f"{min(sizes[i] for i in others):.0f}): it gets the {LOWRES_PERCENTILE:g}th percentile of its spacings "
            "(nnU-Net)"
        )
    return [float(t) for t in target], reason


def median_shape(fp: Fingerprint, spacing: Sequence[float], crop_threshold: float | None) -> list[float]:
    """Rule 2: median over cases of the (cropped) shape resampled to ``spacing``."""
    shapes = []
    for c in fp.cases:
        shape = c.crop_shapes.get(float(crop_threshold), c.shape) if crop_threshold is not None else c.shape
        shapes.append([s * sp / t for s, sp, t in zip(shape, c.spacing, spacing, strict=True)])
    return [float(v) for v in np.median(np.array(shapes, dtype=np.float64), axis=0)]


def pool_props(spacing: Sequence[float], patch: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """nnU-Net's per-axis pooling (``get_pool_and_conv_props``): (pools per axis, padded patch, divisors)."""
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch]
    pools = [0] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * MIN_FEATURE_MAP]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * MIN_FEATURE_MAP:
            break
        if not valid:
            break
        for i in valid:
            pools[i] += 1
            current_spacing[i] *= 2
            current_size[i] = math.ceil(current_size[i] / 2)
    divisors = [2**p for p in pools]
    padded = [int(math.ceil(p / d) * d) for p, d in zip(patch, divisors, strict=True)]
    return pools, padded, divisors


def initial_patch(spacing: Sequence[float], shape: Sequence[float]) -> list[int]:
    """Equal edge lengths in mm, ``INITIAL_PATCH_EDGE**dims`` voxels, clipped to ``shape``."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    dims = len(spacing)
    scale = (INITIAL_PATCH_EDGE**dims / np.prod(inv)) ** (1.0 / dims)
    return [max(1, min(int(round(i * scale)), int(round(s)))) for i, s in zip(inv, shape, strict=True)]


def features_for(depth: int, base: int, dims: int = 3) -> list[int]:
    """Rule 4: ``depth + 1`` widths doubling from ``base``, capped (320 in 3D, 512 in 2D)."""
    cap = MAX_FEATURES[dims]
    return [min(base * 2**i, cap) for i in range(depth + 1)]


# ------------------------------------------------------------------------------------------------ patch search


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


def choose_network(
    spacing: Sequence[float], shape: Sequence[float], budget: DeviceBudget, base: int,
    cost_of: Callable[[list[int], list[int], int], StepCost],
) -> NetworkChoice:
    """Rules 3 and 4: the largest patch (nnU-Net's shrinking order) whose step at batch 2 fits ``budget``."""
    patch = initial_patch(spacing, shape)
    pools, patch, divisors = pool_props(spacing, patch)
    shrunk = 0
    while True:
        depth = max(1, min(pools))
        features = features_for(depth, base, len(spacing))
        cost = cost_of(patch, features, MIN_BATCH)
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
                    f"but the smallest candidate, patch {list(patch)} x batch {MIN_BATCH} with widths {features}, "
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
    cost_of: Callable[[list[int], list[int], int], StepCost],
) -> tuple[int, StepCost, str]:
    """Rule 5: grow the batch from 2 while it fits and covers <= 5 % of the dataset."""
    cap = max(MIN_BATCH, int(round(dataset_voxels * MAX_DATASET_FRACTION / float(np.prod(patch)))))
    batch, cost = MIN_BATCH, cost_of(list(patch), features, MIN_BATCH)
    why = "the minimum"
    while batch < min(cap, MAX_BATCH):
        nxt = cost_of(list(patch), features, batch + 1)
        mem_ok, time_ok = _fits(nxt, budget)
        if not (mem_ok and time_ok):
            why = "the memory budget" if not mem_ok else "the step-time limit"
            break
        batch, cost = batch + 1, nxt
    else:
        why = f"the 5% cap ({cap} patches = 5% of {dataset_voxels:.3g} voxels)" if cap <= MAX_BATCH else "64"
    return batch, cost, why


# ------------------------------------------------------------------------------------------------ modality / norm


def detect_modality(
    name: str, channel: Any, fp: Fingerprint, overrides: Mapping[str, str]
) -> tuple[str, str]:
    """Rule 7: the modality of channel ``name`` (``CT``, ``MR`` or ``other``) and the reason."""
    if name in overrides:
        return _modality(overrides[name]), f"--modality {name}={overrides[name]}"
    series = getattr(channel, "series", None) or {}
    if isinstance(series, Mapping) and series.get("modality"):
        return _modality(series["modality"]), f"the channel's DICOM series rule (modality {series['modality']})"
    norm = getattr(channel, "normalization", None) or {}
    if norm.get("name") == "ct_window":
        return "CT", "the config normalizes it with a CT window (ct_window)"
    if name.upper() == "CT":
        return "CT", "the channel is named CT"
    if name.upper() in MR_NAMES:
        return "MR", f"the channel is named {name}"
    if name in fp.modality_hints:
        return _modality(fp.modality_hints[name]), f"the DICOM header says {fp.modality_hints[name]}"
    low = fp.image_range.get(name, (0.0, 0.0))[0]
    if low <= CT_AIR_PERCENTILE_HU:
        return "CT", f"0.5th percentile of the image voxels is {low:.0f} <= {CT_AIR_PERCENTILE_HU:g} (air in HU)"
    return "other", f"no CT-like air values (0.5th percentile {low:.3g} > {CT_AIR_PERCENTILE_HU:g})"


def _modality(value: str) -> str:
    v = str(value).strip().upper()
    if v == "CT":
        return "CT"
    if v in MR_NAMES:
        return "MR"
    return "other"


def normalization_for(
    name: str, modality: str, fp: Fingerprint, nonzero_keep: float
) -> tuple[dict[str, Any], str]:
    """Rule 8: the normalization spec of one channel and the reason."""
    stats = fp.foreground.get(name)
    if modality == "CT" and stats is not None and stats.p99_5 > stats.p00_5 and stats.std > 0:
        spec = {
            "name": "ct_clip_zscore",
            "lower": round(stats.p00_5, 4),
            "upper": round(stats.p99_5, 4),
            "mean": round(stats.mean, 4),
            "std": round(stats.std, 4),
        }
        return spec, (
            f"CT: clip to the foreground 0.5/99.5 percentiles [{stats.p00_5:.4g}, {stats.p99_5:.4g}], z-score with "
            f"the foreground mean {stats.mean:.4g} / std {stats.std:.4g} ({stats.n} sampled voxels; nnU-Net CT)"
        )
    if modality == "CT":
        return {"name": "zscore"}, "CT without labelled foreground voxels to measure: per-image z-score"
    if nonzero_keep < NONZERO_KEEP_MAX:
        return {"name": "zscore", "nonzero": True}, (
            f"{modality}: per-image z-score over the non-zero voxels (they fill {nonzero_keep:.0%} of the median "
            f"case's box < {NONZERO_KEEP_MAX:.0%}: masked images; nnU-Net use_mask_for_norm)"
        )
    return {"name": "zscore"}, f"{modality}: per-image z-score (nnU-Net ZScoreNormalization)"


# ------------------------------------------------------------------------------------------------ the plan


def _median_keep(fp: Fingerprint, threshold: float) -> float:
    return float(np.median([c.crop_fraction(threshold) for c in fp.cases]))


def _channel_dict(channel: Any, normalization: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": channel.name, "normalization": dict(normalization)}
    if getattr(channel, "series", None) is not None:
        out["series"] = dict(channel.series)
    return out


def plan_from_fingerprint(
    fp: Fingerprint,
    config: Any,
    budget: DeviceBudget,
    *,
    modality_overrides: Mapping[str, str] | None = None,
    n_train: int | None = None,
) -> Plan:
    """Rules 1-8 for ``fp`` under ``config`` (a :class:`medseg.config.MedsegConfig`: channels, network name and
    options, optimizer, samples per case) on ``budget``. Rule 9 needs a measured step: see
    :func:`medseg.planning.calibrate.budget_epochs`.

    Raises:
        PlanError: the memory budget cannot hold even the smallest patch (the message has the numbers).
    """
    overrides = dict(modality_overrides or {})
    unknown = sorted(set(overrides) - set(fp.channels))
    if unknown:
        raise ConfigError(f"--modality: unknown channel(s) {unknown}; the channels are {fp.channels}")
    data, tc = config.data, config.train
    plan = Plan()
    plan.n_train = len(fp.cases) if n_train is None else n_train
    plan.n_val = len(fp.cases) - plan.n_train

    # rules 7 + 8: modality and normalization per channel
    modalities = {}
    channels = []
    nonzero_keep = _median_keep(fp, 0.0)
    for ch in data.channels:
        modality, why_mod = detect_modality(ch.name, ch, fp, overrides)
        modalities[ch.name] = modality
        spec, why_norm = normalization_for(ch.name, modality, fp, nonzero_keep)
        plan.decide(f"(modality {ch.name})", modality, why_mod, in_overlay=False)
        channels.append(_channel_dict(ch, spec))
        plan.decide(f"data.channels.{ch.name}.normalization", spec, why_norm, in_overlay=False)
    plan.overlay.setdefault("data", {})["channels"] = channels

    # rule 1: target spacing
    spacing, why = target_spacing(fp)
    plan.decide("data.spacing", [round(s, 5) for s in spacing], why)
    plan.decide(
        "(anisotropy)", round(fp.anisotropy, 2),
        f"median over cases of max/min spacing; median spacing {_fmt(fp.median_spacing)} mm", in_overlay=False,
    )

    # rule 6: foreground crop
    threshold = CT_BODY_THRESHOLD if all(m == "CT" for m in modalities.values()) else float(tc.foreground_threshold)
    keep = _median_keep(fp, threshold)
    crop = keep <= CROP_KEEP_MAX
    plan.decide(
        "train.crop_foreground", crop,
        f"the crop keeps {keep:.0%} of the median case's voxels ({'<=' if crop else '>'} {CROP_KEEP_MAX:.0%})",
    )
    if crop:
        what = "body vs air (HU), every channel is CT" if threshold == CT_BODY_THRESHOLD else "the config's value"
        plan.decide("train.foreground_threshold", threshold, what)

    # rule 2: median shape
    plan.full_median_shape = median_shape(fp, spacing, None)
    plan.median_shape = median_shape(fp, spacing, threshold if crop else None)
    plan.decide(
        "(median shape)", [round(s) for s in plan.median_shape],
        ("after the foreground crop and " if crop else "") + f"resampling to {_fmt(spacing)} mm", in_overlay=False,
    )

    # rules 3-5: patch, network, batch
    in_ch, out_ch = len(data.channels), data.num_classes
    base = BASE_FEATURES["cuda" if budget.is_cuda else "cpu"]

    def cost_of(patch: list[int], features: list[int], batch: int) -> StepCost:
        return estimate_step(config.network, in_ch, out_ch, patch, batch, tc.optimizer, features=features)

    choice = choose_network(spacing, plan.median_shape, budget, base, cost_of)
    plan.pools_per_axis = list(choice.pools)
    limits = f"memory budget {budget.memory_bytes / GIB:.2f} GiB ({budget.memory_source})"
    if budget.max_step_seconds is not None:
        limits += f" and step time <= {budget.max_step_seconds:g} s"
    why_patch = (
        f"equal mm per axis, clipped to the median shape, padded to multiples of 2^pools; fits the {limits}"
        + (f" after {choice.shrunk} reduction(s)" if choice.shrunk else "")
    )
    if choice.limited_by == "time":
        why_patch += "; the smallest patch still exceeds the step-time limit"
    plan.decide("train.patch_size", list(choice.patch), why_patch)
    depth = len(choice.features) - 1
    plan.decide(
        "(pools per axis)", list(choice.pools),
        f"nnU-Net: pool an axis while >= {MIN_FEATURE_MAP} voxels and within 2x of the finest spacing; medseg's "
        f"UNet pools every axis per level, so depth = min = {depth}",
        in_overlay=False,
    )
    plan.decide(
        "network.features", list(choice.features),
        f"{depth + 1} levels (depth {depth}, bottleneck {[p // 2**depth for p in choice.patch]}); width {base} on "
        f"{'CUDA' if budget.is_cuda else 'CPU'}, doubling, capped at {MAX_FEATURES[len(spacing)]}",
    )
    dataset_voxels = float(np.prod(plan.median_shape)) * len(fp.cases)
    batch, cost, why_batch = choose_batch(choice.patch, choice.features, budget, dataset_voxels, cost_of)
    plan.cost = cost
    plan.decide("train.batch_size", batch, f">= {MIN_BATCH}, grown until {why_batch}")
    predicted = budget.predicted_seconds(cost)
    plan.decide(
        "(step estimate)", f"{cost.total_bytes / GIB:.2f} GiB",
        cost.describe() + (f"; ~{predicted:.2f} s predicted" if predicted is not None else ""), in_overlay=False,
    )

    # rule 10: postprocessing
    single, why_pp = single_object_labels(fp)
    plan.decide("inference.postprocess.largest_component", single or False, why_pp, in_overlay=bool(single))
    return plan


def single_object_labels(fp: Fingerprint) -> tuple[list[int], str]:
    """Rule 10: the foreground labels that are one connected object in every case that has them."""
    counts: dict[int, list[int]] = {}
    for case in fp.cases:
        for value, stats in case.labels.items():
            if value and stats.components is not None:
                counts.setdefault(value, []).append(stats.components)
    single = sorted(v for v, c in counts.items() if c and max(c) == 1)
    several = sorted(v for v, c in counts.items() if c and max(c) > 1)
    if not counts:
        return [], "no connected-object counts in the fingerprint"
    why = f"one connected object in every training case: labels {single}" if single else "no label is always one object"
    if several:
        why += f"; labels {several} have several objects in some case: left as predicted"
    return single, why
