"""Segmentation metrics on label maps: Dice, IoU, Hausdorff distance (HD95) and surface Dice (NSD), per label.

Inputs are N-D label maps (numpy arrays or CPU tensors) of the same shape, ``pred`` and ``gt``; a label ``l`` selects
the voxels equal to ``l`` (binary masks work with ``label=1``). Distances are in millimetres, from ``spacing``
(one value per axis, in the axis order of the arrays).

Surface definition (the one of MONAI's ``get_mask_edges`` without sub-voxel areas, so results agree with
``HausdorffDistanceMetric`` / ``SurfaceDiceMetric``): the surface of a mask is the set of its voxels with at
least one face-neighbour (2N-connectivity) outside the mask, voxels beyond the array border counting as outside.
Surface distances are exact Euclidean distances between voxel centres of one surface and the nearest voxel centre
of the other.

Speed on large volumes: per label the work is confined to the bounding box of both masks (found from axis
projections of the label maps), the surfaces are extracted in that crop (padded by one voxel so the crop border
does not create surface), and the two Euclidean distance transforms (``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``) run on the crop only. The crop holds every surface voxel of both masks, so the distances are
exactly those of the full volume. Dice/IoU come from the same crop, and HD95 and NSD share one distance pass.

Empty masks (the same rules in every function):

=====================  ====  ===  ====  ===
case                   Dice  IoU  HD95  NSD
=====================  ====  ===  ====  ===
both empty             1     1    0     1
exactly one empty      0     0    inf   0
=====================  ====  ===  ====  ===
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

METRIC_NAMES = ("dice", "iou", "hd95", "nsd")
_TIE_SLACK = 1e-9  # relative slack of the NSD tolerance test, against floating rounding of grid distances


# ------------------------------------------------------------------------------------------------ validation


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (including MetaTensor): compute on the CPU copy
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.ndim < 1:
        raise ValueError(f"{name} must be a label map with at least one axis, got a scalar")
    return array


def _check_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    pred_a, gt_a = _as_array(pred, "pred"), _as_array(gt, "gt")
    if pred_a.shape != gt_a.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pred_a.shape} and gt {gt_a.shape}")
    return pred_a, gt_a


def check_spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.ndim != 1 or values.size not in (1, ndim):
        raise ValueError(f"spacing must be a number or one value per axis ({ndim}), got {spacing!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing values must be finite and > 0, got {spacing!r}")
    return tuple(float(v) for v in np.broadcast_to(values, (ndim,)))


def _check_tolerance(tolerance_mm: float) -> float:
    if isinstance(tolerance_mm, bool) or not isinstance(tolerance_mm, (int, float)):
        raise ValueError(f"nsd tolerance must be a number of mm >= 0, got {tolerance_mm!r}")
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"nsd tolerance must be a finite number of mm >= 0, got {tolerance_mm!r}")
    return float(tolerance_mm)


def _check_labels(labels: Sequence[int]) -> list[int]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty sequence of integers, got {labels!r}")
    out = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"labels must be integers, got {label!r} in {list(labels)}")
        out.append(int(label))
    if len(set(out)) != len(out):
        raise ValueError(f"labels must be unique, got {out}")
    return out


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str) or not metrics:
        raise ValueError(
            f"metrics must be a non-empty sequence of names from {list(METRIC_NAMES)}, got {metrics!r}"
        )
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {list(METRIC_NAMES)}")
    return list(dict.fromkeys(metrics))


# ------------------------------------------------------------------------------------------------ geometry


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of a boolean mask as slices, or None if it is empty."""
    box: list[slice] = []
    rest = mask
    for _ in range(mask.ndim):
        present = np.flatnonzero(rest.reshape(rest.shape[0], -1).any(axis=1))
        if present.size == 0:
            return None
        lo, hi = int(present[0]), int(present[-1]) + 1
        box.append(slice(lo, hi))
        rest = rest[lo:hi].any(axis=0)
    return tuple(box)


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: voxels with a face-neighbour outside it (outside the array counts)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    interior = mask.copy()
    inner = [slice(1, -1)] * mask.ndim
    for axis in range(mask.ndim):
        for shifted in (slice(0, -2), slice(2, None)):
            index = list(inner)
            index[axis] = shifted
            interior &= padded[tuple(index)]
    return mask & ~interior


def surface_distances(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each pred surface voxel to the gt surface, and from each gt surface voxel to pred's.

    Both masks must be non-empty boolean arrays of the same shape. The work is cropped to their bounding box.
    """
    pred_mask, gt_mask = _check_pair(np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool))
    sampling = check_spacing(spacing, pred_mask.ndim)
    box = _union_box(_bounding_box(pred_mask), _bounding_box(gt_mask))
    if box is None or not pred_mask.any() or not gt_mask.any():
        raise ValueError("surface_distances needs two non-empty masks")
    return _crop_distances(pred_mask[box], gt_mask[box], sampling)


def _crop_distances(
    pred_crop: np.ndarray, gt_crop: np.ndarray, sampling: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    pred_edge, gt_edge = surface(pred_crop), surface(gt_crop)
    to_gt = ndimage.distance_transform_edt(~gt_edge, sampling=sampling)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=sampling)[gt_edge]
    return to_gt, to_pred


# ------------------------------------------------------------------------------------------------ metrics


def _label_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    label: int,
    spacing: tuple[float, ...] | None,
    tolerance: float,
    percentile: float,
    wanted: Sequence[str],
) -> dict[str, float]:
    pred_box = _bounding_box(pred == label)
    gt_box = _bounding_box(gt == label)
    if pred_box is None and gt_box is None:
        both_empty = {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0}
        return {m: both_empty[m] for m in wanted}
    if pred_box is None or gt_box is None:
        one_empty = {"dice": 0.0, "iou": 0.0, "hd95": math.inf, "nsd": 0.0}
        return {m: one_empty[m] for m in wanted}
    box = _union_box(pred_box, gt_box)
    p, g = pred[box] == label, gt[box] == label
    out: dict[str, float] = {}
    if "dice" in wanted or "iou" in wanted:
        inter = int(np.count_nonzero(p & g))
        n_pred, n_gt = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        if "dice" in wanted:
            out["dice"] = 2.0 * inter / (n_pred + n_gt)
        if "iou" in wanted:
            out["iou"] = inter / (n_pred + n_gt - inter)
    if "hd95" in wanted or "nsd" in wanted:
        if spacing is None:
            raise ValueError("surface metrics (hd95, nsd) need the voxel spacing")
        to_gt, to_pred = _crop_distances(p, g, spacing)
        if "hd95" in wanted:
            out["hd95"] = float(max(np.percentile(to_gt, percentile), np.percentile(to_pred, percentile)))
        if "nsd" in wanted:
            limit = tolerance + _TIE_SLACK * max(tolerance, 1.0)
            within = np.count_nonzero(to_gt <= limit) + np.count_nonzero(to_pred <= limit)
            out["nsd"] = float(within / (to_gt.size + to_pred.size))
    return {m: out[m] for m in wanted}


def compute_metrics(
    pred: Any,
    gt: Any,
    labels: Sequence[int],
    spacing: float | Sequence[float],
    nsd_tolerance_mm: float = 1.0,
    metrics: Sequence[str] = METRIC_NAMES,
) -> dict[int, dict[str, float]]:
    """Per-label metrics of a predicted label map against the ground truth.

    Args:
        pred, gt: label maps of the same shape (any number of axes).
        labels: the label values to evaluate.
        spacing: voxel spacing in mm, one value per axis (or one for all).
        nsd_tolerance_mm: surface Dice tolerance: a surface voxel counts as correct if its distance to the other
            surface is <= this (with a 1e-9 relative slack so that exact grid distances are not lost to rounding).
        metrics: which of ``"dice"``, ``"iou"``, ``"hd95"``, ``"nsd"`` to compute.

    Returns:
        ``{label: {metric: value}}``. HD95 is the larger of the two directed 95th percentiles (linear
        interpolation) of the surface distances; NSD is the fraction of both surfaces within the tolerance.
        Both empty: Dice 1, IoU 1, HD95 0, NSD 1. Exactly one empty: Dice 0, IoU 0, HD95 inf, NSD 0.
    """
    pred_a, gt_a = _check_pair(pred, gt)
    label_list = _check_labels(labels)
    wanted = _check_metrics(metrics)
    sampling = check_spacing(spacing, pred_a.ndim)
    tolerance = _check_tolerance(nsd_tolerance_mm)
    return {
        label: _label_metrics(pred_a, gt_a, label, sampling, tolerance, 95.0, wanted) for label in label_list
    }


def dice(pred: Any, gt: Any, label: int = 1) -> float:
    """Dice ``2|P & G| / (|P| + |G|)`` of one label. Both empty: 1; exactly one empty: 0."""
    pred_a, gt_a = _check_pair(pred, gt)
    return _label_metrics(pred_a, gt_a, _check_labels([label])[0], None, 0.0, 95.0, ["dice"])["dice"]


def iou(pred: Any, gt: Any, label: int = 1) -> float:
    """Intersection over union ``|P & G| / |P | G|`` of one label. Both empty: 1; exactly one empty: 0."""
    pred_a, gt_a = _check_pair(pred, gt)
    return _label_metrics(pred_a, gt_a, _check_labels([label])[0], None, 0.0, 95.0, ["iou"])["iou"]


def mean_iou(pred: Any, gt: Any, labels: Sequence[int]) -> float:
    """Mean over ``labels`` of :func:`iou` (each label's empty-mask rule applies)."""
    pred_a, gt_a = _check_pair(pred, gt)
    values = [
        _label_metrics(pred_a, gt_a, lab, None, 0.0, 95.0, ["iou"])["iou"] for lab in _check_labels(labels)
    ]
    return float(np.mean(values))


def hausdorff_distance(
    pred: Any, gt: Any, spacing: float | Sequence[float], label: int = 1, percentile: float = 100.0
) -> float:
    """Symmetric Hausdorff distance (mm) of one label at ``percentile`` (100: the maximum, 95: HD95).

    The larger of the two directed ``percentile``-th percentiles (linear interpolation) of surface distances.
    Both empty: 0; exactly one empty: inf.
    """
    pred_a, gt_a = _check_pair(pred, gt)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    sampling = check_spacing(spacing, pred_a.ndim)
    label = _check_labels([label])[0]
    return _label_metrics(pred_a, gt_a, label, sampling, 0.0, float(percentile), ["hd95"])["hd95"]


def hd95(pred: Any, gt: Any, spacing: float | Sequence[float], label: int = 1) -> float:
    """95th-percentile Hausdorff distance (mm) of one label. Both empty: 0; exactly one empty: inf."""
    return hausdorff_distance(pred, gt, spacing, label=label, percentile=95.0)


def surface_dice(
    pred: Any, gt: Any, spacing: float | Sequence[float], tolerance_mm: float = 1.0, label: int = 1
) -> float:
    """Normalised surface Dice of one label at ``tolerance_mm``: the fraction of the surface voxels of both masks
    lying within the tolerance of the other surface. Both empty: 1; exactly one empty: 0."""
    pred_a, gt_a = _check_pair(pred, gt)
    sampling = check_spacing(spacing, pred_a.ndim)
    tolerance = _check_tolerance(tolerance_mm)
    label = _check_labels([label])[0]
    return _label_metrics(pred_a, gt_a, label, sampling, tolerance, 95.0, ["nsd"])["nsd"]


def mean_over_labels(results: dict[int, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the labels of a :func:`compute_metrics` result (inf stays inf)."""
    if not results:
        raise ValueError("results is empty")
    names = next(iter(results.values())).keys()
    return {name: float(np.mean([per_label[name] for per_label in results.values()])) for name in names}
