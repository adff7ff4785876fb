"""evaluate / evaluate_folders: known metric values, the ground truth's spacing, grid checks, case matching."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.data.io import save_image, save_label
from medseg.errors import InputError, ReasonCode
from medseg.evaluate import evaluate, evaluate_folders, match_cases
from medseg.metrics import compute_metrics

SHAPE = (8, 6, 5)
AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """Label 1: one voxel in each, two voxels apart along axis 0 (4 mm). Label 2: identical 2x2x2 cubes."""
    gt = np.zeros(SHAPE, dtype=np.uint8)
    pred = np.zeros(SHAPE, dtype=np.uint8)
    gt[2, 2, 2] = 1
    pred[4, 2, 2] = 1
    gt[5:7, 3:5, 0:2] = 2
    pred[5:7, 3:5, 0:2] = 2
    return pred, gt


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    return save_label(array, path, affine=affine)


def test_evaluate_known_values_with_gt_spacing(tmp_path: Path) -> None:
    pred, gt = _pair()
    rows = evaluate(
        _write(tmp_path / "p.nii.gz", pred), _write(tmp_path / "g.nii.gz", gt), nsd_tolerance_mm=1.0
    )
    assert [(r["case"], r["label"]) for r in rows] == [("p.nii.gz", 1), ("p.nii.gz", 2)]
    one, two = rows
    assert (one["dice"], one["hd95"], one["nsd"]) == (0.0, 4.0, 0.0)  # 2 voxels x 2 mm along axis 0
    assert (one["gt_voxels"], one["pred_voxels"]) == (1, 1)
    assert (two["dice"], two["hd95"], two["nsd"], two["gt_voxels"]) == (1.0, 0.0, 1.0, 8)
    # a wider tolerance covers the 4 mm
    assert evaluate(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz", [1], nsd_tolerance_mm=4.0)[0]["nsd"] == 1.0


def test_evaluate_matches_compute_metrics_on_anisotropic_blobs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    gt = (rng.random((16, 14, 6)) > 0.6).astype(np.uint8)
    pred = np.roll(gt, 1, axis=2)
    affine = np.diag([0.7, 0.9, 3.0, 1.0])
    rows = evaluate(
        _write(tmp_path / "p.nii.gz", pred, affine), _write(tmp_path / "g.nii.gz", gt, affine), {1: "x"}
    )
    expected = compute_metrics(pred, gt, [1], (0.7, 0.9, 3.0), 1.0, metrics=("dice", "hd95", "nsd"))[1]
    isotropic = compute_metrics(pred, gt, [1], (1.0, 1.0, 1.0), 1.0, metrics=("hd95",))[1]
    assert rows[0]["name"] == "x"
    for metric in ("dice", "hd95", "nsd"):
        assert rows[0][metric] == pytest.approx(expected[metric], rel=1e-6)  # NIfTI stores float32
    assert rows[0]["hd95"] != pytest.approx(isotropic["hd95"])  # the spacing was used


def test_single_slice_is_evaluated_in_2d(tmp_path: Path) -> None:
    gt = np.zeros((10, 10, 1), dtype=np.uint8)
    gt[2:8, 2:8, 0] = 1
    pred = np.zeros_like(gt)
    pred[2:8, 3:9, 0] = 1
    rows = evaluate(_write(tmp_path / "p.nii.gz", pred), _write(tmp_path / "g.nii.gz", gt))
    expected = compute_metrics(pred[:, :, 0], gt[:, :, 0], [1], (2.0, 1.0), 1.0)[1]
    assert rows[0]["nsd"] == pytest.approx(expected["nsd"]) and rows[0]["hd95"] == pytest.approx(
        expected["hd95"]
    )


def test_evaluate_grid_and_value_errors(tmp_path: Path) -> None:
    pred, gt = _pair()
    g = _write(tmp_path / "g.nii.gz", gt)
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.5
    p = _write(tmp_path / "moved.nii.gz", pred, shifted)
    with pytest.raises(
        InputError, match=r"moved\.nii\.gz: prediction affine differs from ground truth .*g\.nii\.gz"
    ) as info:
        evaluate(p, g)
    assert info.value.code == ReasonCode.LABEL_GEOMETRY_MISMATCH
    small = _write(tmp_path / "small.nii.gz", pred[:, :, :4])
    with pytest.raises(
        InputError, match=r"prediction shape \(8, 6, 4\) differs from ground truth .*g\.nii\.gz"
    ):
        evaluate(small, g)
    soft = save_image(pred.astype(np.float32) * 0.5, tmp_path / "soft.nii.gz", affine=AFFINE)
    with pytest.raises(InputError, match="non-integer values") as info:
        evaluate(soft, g)
    assert info.value.code == ReasonCode.LABEL_VALUES
    with pytest.raises(ValueError, match="labels must be non-zero integers"):
        evaluate(g, g, labels=[0, 1])


def test_evaluate_folders(tmp_path: Path) -> None:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred, gt = _pair()
    _write(pred_dir / "caseA" / "label.nii.gz", pred)  # medseg output layout
    _write(gt_dir / "caseA.nii.gz", gt)
    _write(pred_dir / "caseB" / "label.nii.gz", gt)  # perfect; label 1 absent from both in case C below
    _write(gt_dir / "caseB" / "label.nii.gz", gt)
    only2 = np.where(gt == 2, 2, 0).astype(np.uint8)
    _write(pred_dir / "caseC" / "label.nii.gz", only2)
    _write(gt_dir / "caseC.nii.gz", only2)
    moved = AFFINE.copy()
    moved[1, 3] = 3.0
    _write(pred_dir / "caseE" / "label.nii.gz", gt, moved)  # grid mismatch -> failed, others go on
    _write(gt_dir / "caseE.nii.gz", gt)
    _write(pred_dir / "extra.nii.gz", gt)  # unmatched prediction
    _write(gt_dir / "caseD.nii.gz", gt)  # unmatched ground truth
    (pred_dir / ".medseg-tmp-x.nii.gz").write_bytes(b"partial")  # temp files are ignored

    summary = evaluate_folders(
        pred_dir, gt_dir, tmp_path / "eval" / "metrics.csv", labels={1: "lesion", 2: "organ"}
    )
    assert (summary["cases"], summary["evaluated"]) == (4, 3)
    assert summary["unmatched_pred"] == ["extra"] and summary["unmatched_gt"] == ["caseD"]
    assert [f["case"] for f in summary["failed"]] == ["caseE"]
    assert summary["failed"][0]["code"] == "LABEL_GEOMETRY_MISMATCH"

    with open(summary["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["label"]) for r in rows] == [
        ("caseA", "1"),
        ("caseA", "2"),
        ("caseB", "1"),
        ("caseB", "2"),
        ("caseC", "1"),
        ("caseC", "2"),
    ]
    assert rows[0]["dice"] == "0.0" and rows[0]["hd95"] == "4.0" and rows[0]["name"] == "lesion"

    lesion = summary["labels"][1]
    assert (lesion["n"], lesion["n_both_empty"]) == (2, 1)  # case C: label 1 absent from both, left out
    assert lesion["dice_mean"] == pytest.approx(0.5) and lesion["hd95_median"] == pytest.approx(2.0)
    organ = summary["labels"][2]
    assert (organ["n"], organ["dice_mean"], organ["nsd_median"]) == (3, 1.0, 1.0)
    assert summary["summary_csv"].name == "metrics_summary.csv"
    with open(summary["summary_csv"], newline="") as fh:
        stats = list(csv.DictReader(fh))
    assert [s["name"] for s in stats] == ["lesion", "organ"] and float(stats[0]["dice_mean"]) == 0.5


def test_missing_structure_gives_inf_hd95_mean(tmp_path: Path) -> None:
    pred, gt = _pair()
    missed = np.where(pred == 1, 0, pred).astype(np.uint8)
    _write(tmp_path / "p" / "a.nii.gz", missed)
    _write(tmp_path / "g" / "a.nii.gz", gt)
    summary = evaluate_folders(tmp_path / "p", tmp_path / "g", tmp_path / "m.csv")
    assert math.isinf(summary["labels"][1]["hd95_mean"]) and summary["labels"][1]["dice_mean"] == 0.0
    assert "inf" in (tmp_path / "m.csv").read_text()


def test_matching_errors(tmp_path: Path) -> None:
    pred, gt = _pair()
    _write(tmp_path / "p" / "a.nii.gz", pred)
    _write(tmp_path / "g" / "b.nii.gz", gt)
    with pytest.raises(
        ValueError, match=r"no case of .*p matches one of .*g \(1 prediction and 1 ground-truth"
    ):
        evaluate_folders(tmp_path / "p", tmp_path / "g", tmp_path / "m.csv")
    _write(tmp_path / "p" / "a" / "label.nii.gz", pred)
    with pytest.raises(
        ValueError, match=r"case 'a' is ambiguous: a/label\.nii\.gz and a\.nii\.gz|a\.nii\.gz and a/label"
    ):
        match_cases(tmp_path / "p", tmp_path / "g")
    with pytest.raises(InputError, match="folder does not exist"):
        match_cases(tmp_path / "nope", tmp_path / "g")
