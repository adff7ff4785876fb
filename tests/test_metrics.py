"""Tests of medseg.metrics: Dice/IoU known values, empty-mask rules, HD95 and NSD against MONAI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric
from scipy import ndimage

from medseg.metrics import (
    compute_metrics,
    dice,
    hausdorff_distance,
    hd95,
    iou,
    mean_iou,
    mean_over_labels,
    surface,
    surface_dice,
    surface_distances,
)

# ------------------------------------------------------------------------------------------ Dice / IoU


def _hand_masks() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((6, 6), dtype=np.int64)
    pred = np.zeros((6, 6), dtype=np.int64)
    gt[1:4, 1:4] = 1  # 9 voxels
    pred[2:4, 1:5] = 1  # 8 voxels, overlap rows 2-3 x cols 1-3 = 6
    gt[5, 0:2] = 2  # 2 voxels
    pred[5, 1:4] = 2  # 3 voxels, overlap 1
    return pred, gt


def test_dice_iou_hand_values():
    pred, gt = _hand_masks()
    # label 1: Dice = 2*6 / (8 + 9) = 12/17 ; IoU = 6 / (8 + 9 - 6) = 6/11
    assert dice(pred, gt, 1) == pytest.approx(12 / 17)
    assert iou(pred, gt, 1) == pytest.approx(6 / 11)
    # label 2: Dice = 2*1 / (3 + 2) = 2/5 ; IoU = 1 / 4
    assert dice(pred, gt, 2) == pytest.approx(0.4)
    assert iou(pred, gt, 2) == pytest.approx(0.25)
    assert mean_iou(pred, gt, [1, 2]) == pytest.approx((6 / 11 + 0.25) / 2)
    result = compute_metrics(pred, gt, labels=[1, 2], spacing=1.0, metrics=["dice", "iou"])
    assert result == {
        1: {"dice": pytest.approx(12 / 17), "iou": pytest.approx(6 / 11)},
        2: pytest.approx({"dice": 0.4, "iou": 0.25}),
    }
    # background label 0 works too: 36 - 11 gt voxels vs 36 - 11 pred voxels, overlap = 36 - |union fg|
    fg_union = np.count_nonzero((pred > 0) | (gt > 0))
    assert dice(pred, gt, 0) == pytest.approx(2 * (36 - fg_union) / (25 + 25))


def test_binary_bool_masks_and_tensors():
    pred, gt = _hand_masks()
    assert dice(pred == 1, gt == 1) == pytest.approx(12 / 17)
    assert dice(torch.from_numpy(pred), torch.from_numpy(gt), 1) == pytest.approx(12 / 17)


def test_empty_mask_rules():
    empty = np.zeros((5, 5), dtype=np.int64)
    one = empty.copy()
    one[1:3, 1:3] = 1
    both_empty = compute_metrics(empty, empty, labels=[1], spacing=(1.0, 2.0))[1]
    assert both_empty == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0}
    for pred, gt in ((one, empty), (empty, one)):
        one_empty = compute_metrics(pred, gt, labels=[1], spacing=(1.0, 2.0))[1]
        assert one_empty == {"dice": 0.0, "iou": 0.0, "hd95": math.inf, "nsd": 0.0}
        assert dice(pred, gt) == 0.0 and iou(pred, gt) == 0.0
        assert hd95(pred, gt, spacing=1.0) == math.inf and surface_dice(pred, gt, spacing=1.0) == 0.0
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert hd95(empty, empty, spacing=1.0) == 0.0 and surface_dice(empty, empty, spacing=1.0) == 1.0
    assert mean_over_labels({1: {"dice": 1.0, "hd95": 0.0}, 2: {"dice": 0.5, "hd95": math.inf}}) == {
        "dice": 0.75,
        "hd95": math.inf,
    }


# ------------------------------------------------------------------------------------------ surfaces


def test_surface_matches_erosion_definition():
    rng = np.random.default_rng(1)
    mask = ndimage.binary_opening(rng.random((9, 10, 7)) > 0.4)
    mask[0, 3:6, 2:5] = True  # touches the array border: border voxels are surface
    expected = mask & ~ndimage.binary_erosion(mask, border_value=0)
    np.testing.assert_array_equal(surface(mask), expected)


def test_hand_computed_distances():
    gt = np.zeros((8, 8), dtype=np.int64)
    pred = np.zeros((8, 8), dtype=np.int64)
    gt[2, 2] = 1
    pred[5, 3] = 1  # offset (3, 1) voxels
    spacing = (1.5, 0.5)
    d = math.sqrt((3 * 1.5) ** 2 + (1 * 0.5) ** 2)  # sqrt(20.5)
    assert hd95(pred, gt, spacing) == pytest.approx(d)
    assert hausdorff_distance(pred, gt, spacing) == pytest.approx(d)
    assert surface_dice(pred, gt, spacing, tolerance_mm=d) == 1.0  # a distance equal to the tolerance counts
    assert surface_dice(pred, gt, spacing, tolerance_mm=d - 1e-3) == 0.0
    to_gt, to_pred = surface_distances(pred == 1, gt == 1, spacing)
    np.testing.assert_allclose(to_gt, [d])
    np.testing.assert_allclose(to_pred, [d])


def test_nsd_counts_exact_tie_lost_to_rounding():
    # offset (2, 3) voxels at spacing (0.35, 0.8): sqrt(0.7^2 + 2.4^2) = 2.5 exactly, but the float64 distance
    # transform gives 2.5000000000000004; MONAI (float32) counts it within a 2.5 mm tolerance, and so do we
    gt = np.zeros((6, 6), dtype=np.int64)
    pred = np.zeros((6, 6), dtype=np.int64)
    gt[1, 1] = 1
    pred[3, 4] = 1
    spacing = (0.35, 0.8)
    to_gt, _ = surface_distances(pred == 1, gt == 1, spacing)
    assert to_gt[0] > 2.5  # the rounding this test is about
    assert surface_dice(pred, gt, spacing, tolerance_mm=2.5) == 1.0
    _, ref_nsd = _monai_values(pred, gt, (1,), spacing, 2.5)
    assert float(ref_nsd[0]) == 1.0
    assert surface_dice(pred, gt, spacing, tolerance_mm=2.4999) == 0.0


def test_hausdorff_percentiles_hand_computed():
    # gt: a 1 x 5 line; pred: the same line shifted by one row except its last voxel (shifted by 3 rows)
    gt = np.zeros((8, 7), dtype=np.int64)
    pred = np.zeros((8, 7), dtype=np.int64)
    gt[1, 1:6] = 1
    pred[2, 1:5] = 1
    pred[4, 5] = 1
    # pred -> gt: four voxels at 1 mm, one at 3 mm ; gt -> pred: four at 1 mm, (1, 5) -> nearest (2, 4): sqrt(2)
    to_gt, to_pred = surface_distances(pred == 1, gt == 1, 1.0)
    np.testing.assert_allclose(sorted(to_gt), [1, 1, 1, 1, 3])
    np.testing.assert_allclose(sorted(to_pred), [1, 1, 1, 1, math.sqrt(2)])
    assert hausdorff_distance(pred, gt, 1.0) == pytest.approx(3.0)
    # 95th percentile with linear interpolation of [1, 1, 1, 1, 3]: position 0.95 * 4 = 3.8 -> 1 + 0.8 * 2 = 2.6
    assert hd95(pred, gt, 1.0) == pytest.approx(2.6)
    # NSD at 1 mm: 8 of the 10 surface voxels are within 1 mm
    assert surface_dice(pred, gt, 1.0, tolerance_mm=1.0) == pytest.approx(0.8)


def test_crop_does_not_change_results():
    rng = np.random.default_rng(3)
    small_gt = ndimage.binary_closing(rng.random((10, 9, 8)) > 0.5).astype(np.int64)
    small_pred = ndimage.binary_dilation(small_gt).astype(np.int64)
    big_gt = np.zeros((30, 25, 20), dtype=np.int64)
    big_pred = np.zeros_like(big_gt)
    big_gt[7:17, 5:14, 9:17] = small_gt
    big_pred[7:17, 5:14, 9:17] = small_pred
    spacing = (0.7, 1.1, 2.0)
    # the small arrays' border is the image border (surface there); embedded, the same voxels are surface anyway
    a = compute_metrics(small_pred, small_gt, [1], spacing)
    b = compute_metrics(big_pred, big_gt, [1], spacing)
    assert a[1] == pytest.approx(b[1])
    assert 0.0 < a[1]["nsd"] < 1.0


# ------------------------------------------------------------------------------------------ against MONAI


def _phantom(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three-label ground truth from smoothed noise and a perturbed prediction (one label touches the border)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    gt = np.zeros(shape, dtype=np.int64)
    gt[field > 0.05] = 1
    gt[field > 0.12] = 2
    gt[tuple(slice(0, max(2, n // 4)) for n in shape)] = 3  # corner block at the image border
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.0)
    pred = gt.copy()
    pred[(noise > 0.25) & ndimage.binary_dilation(gt > 0)] = 1  # grows label 1 into the neighbourhood
    pred[noise < -0.3] = 0
    pred = np.roll(pred, 1, axis=0)
    pred[(slice(-3, None),) + tuple(slice(0, 3) for _ in shape[1:])] = 2  # a far false positive of label 2
    return pred, gt


def _monai_values(pred: np.ndarray, gt: np.ndarray, labels, spacing, tolerance):
    def onehot(x):
        return torch.from_numpy(np.stack([x == c for c in (0, *labels)])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        nsd = SurfaceDiceMetric(
            class_thresholds=[tolerance] * len(labels), include_background=False, reduction="none"
        )
        return hd(onehot(pred), onehot(gt), spacing=spacing)[0].numpy(), nsd(
            onehot(pred), onehot(gt), spacing=spacing
        )[0].numpy()


@pytest.mark.parametrize(
    "shape,spacing,tolerance",
    [
        ((22, 18, 14), (0.7, 1.3, 2.5), 1.0),
        ((22, 18, 14), (0.7, 1.3, 2.5), 2.5),  # tolerance equal to a spacing: exact ties count as within
        ((20, 16, 12), (2.0, 0.5, 0.9), 1.3),
        ((40, 34), (0.6, 1.7), 1.7),
    ],
)
def test_hd95_and_nsd_match_monai(shape, spacing, tolerance):
    labels = (1, 2, 3)
    pred, gt = _phantom(shape, seed=len(shape) + int(10 * tolerance))
    for c in labels:
        assert (gt == c).any() and (pred == c).any() and not np.array_equal(gt == c, pred == c)
    ours = compute_metrics(pred, gt, labels=labels, spacing=spacing, nsd_tolerance_mm=tolerance)
    ref_hd, ref_nsd = _monai_values(pred, gt, labels, spacing, tolerance)
    for i, c in enumerate(labels):
        assert ours[c]["hd95"] == pytest.approx(float(ref_hd[i]), abs=1e-3), c
        assert ours[c]["nsd"] == pytest.approx(float(ref_nsd[i]), abs=1e-3), c
        assert hd95(pred, gt, spacing, label=c) == ours[c]["hd95"]
        assert surface_dice(pred, gt, spacing, tolerance_mm=tolerance, label=c) == ours[c]["nsd"]
    # the cases are not degenerate: some NSD strictly between 0 and 1, some HD95 above the largest spacing
    assert any(0.0 < ours[c]["nsd"] < 1.0 for c in labels)
    assert any(ours[c]["hd95"] > max(spacing) for c in labels)


# ------------------------------------------------------------------------------------------ validation


def test_validation_errors():
    a = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 4\).*\(4, 5\)"):
        compute_metrics(a, np.zeros((4, 5)), [1], 1.0)
    with pytest.raises(ValueError, match=r"one value per axis \(2\)"):
        compute_metrics(a, a, [1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="finite and > 0"):
        hd95(a, a, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="non-empty sequence"):
        compute_metrics(a, a, [], 1.0)
    with pytest.raises(ValueError, match="integers"):
        compute_metrics(a, a, [1.5], 1.0)
    with pytest.raises(ValueError, match="unique"):
        compute_metrics(a, a, [1, 1], 1.0)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['hd100'\].*'hd95'"):
        compute_metrics(a, a, [1], 1.0, metrics=["hd100"])
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(a, a, 1.0, tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(a, a, 1.0, percentile=101)
    with pytest.raises(ValueError, match="non-empty masks"):
        surface_distances(a == 1, a == 0, 1.0)
