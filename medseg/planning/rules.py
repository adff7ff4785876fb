"""The planning rules: from a dataset fingerprint and a device budget to a config overlay, one reason per choice.

The reference is nnU-Net's ``ExperimentPlanner`` (``MIC-DKFZ/nnUNet: nnunetv2/experiment_planning/
experiment_planners/default_experiment_planner.py`` and ``network_topology.py``); where medseg differs, the rule
says so. Every rule below is applied by :func:`plan_from_fingerprint` and reported as a
:class:`~medseg.planning.plan.Decision`. The rules live by subject: 1-4 in :mod:`medseg.planning.geometry`, the
patch and batch search (3-5) in :mod:`medseg.planning.sizing`, 7-8 in :mod:`medseg.planning.intensity`, 9 in
:mod:`medseg.planning.calibrate`; 6 and 10 and the order of application here.

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
5. **Batch size** (``train.batch_size``, in cases): a medseg step holds ``batch_size x samples_per_case`` patches,
   and nnU-Net's batch counts patches, so: the fewest cases that give at least 2 patches (nnU-Net's minimum);
   grown by whole cases while the step fits the memory budget (and the CPU step-time limit) and its patches cover
   at most 5 % of the dataset's voxels (nnU-Net's overfitting cap; dataset voxels = median shape x number of
   cases). Rules 3 and 9 cost and time a step of those patches too, so a plan's memory and step-time claims hold
   for the step training runs. (Before, a step was costed as ``batch_size`` patches: with 2 samples per case the
   real step was twice the memory and time the plan named.)
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
   val_every)``, with steps per epoch = ceil(training cases / batch) (an epoch visits every case once) and the
   validation time estimated from the number of sliding windows over the median (uncropped) case at a third of a
   step's time per patch for each window.
10. **Postprocessing** (``inference.postprocess.largest_component``): the labels that are one connected object in
    every training case (a brain, a liver, an organ mask) keep only their largest connected component at
    inference; stray blobs far from the object are what drives HD95 up. nnU-Net decides the same step by
    cross-validation; here the training labels themselves decide, so planning needs no extra training. Labels
    with several objects in some case (lesions, vessels) are left as predicted.
11. **Precision** (``train.precision``): the config's setting resolved for the planned device
    (:func:`medseg.training.precision.resolve_precision`: ``auto`` is fp16 on CUDA, bf16 on a CPU whose flags show
    native bfloat16, fp32 otherwise), written into the plan so that training runs at the precision the calibration
    (rule 9) measured. The memory estimate stays float32 (an upper bound under autocast).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.planning.fingerprint import CT_BODY_THRESHOLD, Fingerprint
from medseg.planning.geometry import MAX_FEATURES, MIN_FEATURE_MAP, median_shape, target_spacing
from medseg.planning.intensity import detect_modality, normalization_for
from medseg.planning.memory import GIB, DeviceBudget, StepCost, estimate_step
from medseg.planning.plan import Plan
from medseg.planning.sizing import MIN_PATCHES, choose_batch, choose_network
from medseg.training.precision import resolve_precision

logger = logging.getLogger(__name__)

BASE_FEATURES = {"cuda": 32, "cpu": 16}
CROP_KEEP_MAX = 0.75


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return " x ".join(f"{float(v):.{digits}g}" for v in values)


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

    spc = tc.samples_per_case

    def cost_of(patch: list[int], features: list[int], cases: int) -> StepCost:
        """A step of ``cases`` x ``samples_per_case`` patches."""
        return estimate_step(config.network, in_ch, out_ch, patch, cases * spc, tc.optimizer, features=features)

    choice = choose_network(spacing, plan.median_shape, budget, base, cost_of, spc)
    plan.pools_per_axis = list(choice.pools)
    limits = f"memory budget {budget.memory_bytes / GIB:.2f} GiB ({budget.memory_source})"
    if budget.max_step_seconds is not None:
        limits += f" and step time <= {budget.max_step_seconds:.3g} s"
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
    batch, cost, why_batch = choose_batch(choice.patch, choice.features, budget, dataset_voxels, cost_of, spc)
    plan.cost = cost
    plan.decide(
        "train.batch_size", batch,
        f"cases per step; x {spc} patch(es) per case = {batch * spc} patches, >= {MIN_PATCHES} (nnU-Net), grown "
        f"until {why_batch}",
    )
    predicted = budget.predicted_seconds(cost)
    plan.decide(
        "(step estimate)", f"{cost.total_bytes / GIB:.2f} GiB",
        cost.describe() + (f"; ~{predicted:.2f} s predicted" if predicted is not None else ""), in_overlay=False,
    )

    # rule 11: precision of the training step
    precision = resolve_precision(tc.precision, budget.device, amp=tc.amp)
    plan.decide("train.precision", precision.name, precision.reason)

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
