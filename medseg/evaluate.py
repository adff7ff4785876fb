"""Evaluate predicted label maps against ground truth: per case and per label Dice, HD95 and NSD.

``evaluate(pred, gt)`` compares one pair of label files; ``evaluate_folders(pred_dir, gt_dir, out_csv)``
matches the cases of two folders, writes one CSV row per case and label plus a per-label summary CSV, and
returns the summary. Metrics come from :func:`medseg.metrics.compute_metrics` with the ground truth's voxel
spacing (see that module for the surface definition and the empty-mask rules). A 3D file with a single slice
is evaluated as 2D.

Grids: prediction and ground truth must have the same shape and the same affine (within 1e-3 mm); nothing is
resampled. A mismatch raises :class:`medseg.errors.InputError` (``LABEL_GEOMETRY_MISMATCH``) naming both
files.

Case matching: label files (NIfTI, NRRD, MetaImage) are found recursively; a case's key is its path relative
to the folder without the file suffix, except that a file named ``label.*`` is keyed by its folder. So
medseg's outputs ``pred/<case>/label.nii.gz`` match ``gt/<case>.nii.gz`` or ``gt/<case>/label.nii.gz``.
Unmatched files on either side are listed in the summary, not evaluated.

Labels: when none are given, each case is evaluated on the non-zero values present in its prediction or ground
truth. Summary statistics (mean and median per label and metric) are taken over the cases where the label is
present in the prediction or the ground truth; cases where both are empty (Dice 1 by convention) are counted
in ``n_both_empty`` and left out. A label found in only one of the two has HD95 ``inf``, so its HD95 mean is
``inf``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import TEMP_PREFIX, atomic_write_text
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["EVAL_METRICS", "evaluate", "evaluate_folders", "match_cases"]

EVAL_METRICS = ("dice", "hd95", "nsd")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_GRID_TOL_MM = 1e-3
_ROW_FIELDS = ("case", "label", "name", *EVAL_METRICS, "gt_voxels", "pred_voxels")

Labels = Sequence[int] | Mapping[int, str] | None


# ------------------------------------------------------------------------------------------------ one pair


def _load_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    from medseg.data.io import load_volume

    image = load_volume(path, dtype=None)
    array = image.as_tensor().numpy()[0]
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(ReasonCode.LABEL_VALUES, path, "label map holds non-integer values")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iub":
        raise InputError(ReasonCode.LABEL_VALUES, path, f"label map has non-numeric dtype {array.dtype}")
    return array, image.affine.numpy().astype(np.float64)


def _check_grid(
    pred: np.ndarray,
    pred_aff: np.ndarray,
    gt: np.ndarray,
    gt_aff: np.ndarray,
    pred_path: str | os.PathLike,
    gt_path: str | os.PathLike,
) -> None:
    if pred.shape != gt.shape:
        raise InputError(
            ReasonCode.LABEL_GEOMETRY_MISMATCH,
            pred_path,
            f"prediction shape {pred.shape} differs from ground truth {gt_path} shape {gt.shape}; "
            "both must be on one grid (nothing is resampled)",
        )
    diff = float(np.max(np.abs(pred_aff - gt_aff)))
    if diff > _GRID_TOL_MM:
        raise InputError(
            ReasonCode.LABEL_GEOMETRY_MISMATCH,
            pred_path,
            f"prediction affine differs from ground truth {gt_path} affine by {diff:.4g} mm "
            f"(spacing/origin/orientation); both must be on one grid (nothing is resampled)",
        )


def _label_names(labels: Labels, present: Sequence[int]) -> dict[int, str]:
    if labels is None:
        return {v: "" for v in present}
    if isinstance(labels, Mapping):
        return {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ValueError(
            f"labels must be a sequence of label values, a {{value: name}} mapping or None, got {labels!r}"
        )
    out = {}
    for value in labels:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) == 0:
            raise ValueError(f"labels must be non-zero integers, got {value!r} in {list(labels)}")
        out[int(value)] = ""
    return out


def evaluate(
    pred_path: str | os.PathLike,
    gt_path: str | os.PathLike,
    labels: Labels = None,
    nsd_tolerance_mm: float = 1.0,
    *,
    case: str | None = None,
) -> list[dict[str, Any]]:
    """Per-label Dice, HD95 (mm) and NSD of one predicted label file against its ground truth.

    Args:
        pred_path, gt_path: label files (NIfTI, NRRD, MetaImage) on the same grid.
        labels: values to evaluate (a list, or ``{value: name}``); None: the non-zero values in either file.
        nsd_tolerance_mm: surface Dice tolerance in mm.
        case: the ``case`` column (default: the prediction's file name).

    Returns:
        One dict per label: ``case, label, name, dice, hd95, nsd, gt_voxels, pred_voxels``.

    Raises:
        InputError: unreadable file, non-integer labels, or the two grids differ (the message names
            both files).
    """
    from medseg.metrics import compute_metrics

    pred, pred_aff = _load_label(pred_path)
    gt, gt_aff = _load_label(gt_path)
    _check_grid(pred, pred_aff, gt, gt_aff, pred_path, gt_path)
    spacing = [float(v) for v in np.linalg.norm(gt_aff[:3, :3], axis=0)][: gt.ndim]
    if gt.ndim == 3 and gt.shape[2] == 1:  # a single slice: surfaces are 2D
        pred, gt, spacing = pred[:, :, 0], gt[:, :, 0], spacing[:2]
    present = sorted(({int(v) for v in np.unique(pred)} | {int(v) for v in np.unique(gt)}) - {0})
    names = _label_names(labels, present)
    if not names:
        return []
    results = compute_metrics(pred, gt, list(names), spacing, nsd_tolerance_mm, metrics=EVAL_METRICS)
    case_name = case if case is not None else Path(pred_path).name
    rows = []
    for value, metrics in results.items():
        rows.append(
            {
                "case": case_name,
                "label": value,
                "name": names[value],
                **{m: float(metrics[m]) for m in EVAL_METRICS},
                "gt_voxels": int(np.count_nonzero(gt == value)),
                "pred_voxels": int(np.count_nonzero(pred == value)),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ folders


def _case_key(path: Path, root: Path) -> str | None:
    name = path.name.lower()
    suffix = next((s for s in LABEL_SUFFIXES if name.endswith(s)), None)
    if suffix is None or path.name.startswith((".", TEMP_PREFIX)):
        return None
    rel = path.relative_to(root)
    stem = rel.name[: -len(suffix)]
    if stem.lower() == "label" and len(rel.parts) > 1:
        return rel.parent.as_posix()
    return (rel.parent / stem).as_posix()


def _index(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise InputError(ReasonCode.FILE_NOT_FOUND, root, "folder does not exist")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        key = _case_key(path, root)
        if key is None:
            continue
        if key in found:
            raise ValueError(
                f"{root}: case {key!r} is ambiguous: {found[key].relative_to(root)} and {path.relative_to(root)}"
            )
        found[key] = path
    return found


def match_cases(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike
) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair the label files of two folders by case key; returns (pairs, unmatched pred keys, unmatched gt keys)."""
    preds, gts = _index(Path(pred_dir)), _index(Path(gt_dir))
    pairs = [(key, preds[key], gts[key]) for key in sorted(preds) if key in gts]
    return pairs, sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))


def _stat(values: list[float], fn: Any) -> float:
    if not values:
        return math.nan
    if any(math.isinf(v) for v in values) and fn is np.mean:
        return math.inf
    return float(fn(values))


def _summary(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for value in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == value]
        counted = [r for r in mine if r["gt_voxels"] or r["pred_voxels"]]
        entry: dict[str, Any] = {
            "label": value,
            "name": next((r["name"] for r in mine if r["name"]), ""),
            "n": len(counted),
            "n_both_empty": len(mine) - len(counted),
        }
        for metric in EVAL_METRICS:
            values = [float(r[metric]) for r in counted]
            entry[f"{metric}_mean"] = _stat(values, np.mean)
            entry[f"{metric}_median"] = _stat(values, np.median)
        out[value] = entry
    return out


def _csv(rows: list[dict[str, Any]], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        )
    return buffer.getvalue()


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    labels: Labels = None,
    nsd_tolerance_mm: float = 1.0,
) -> dict[str, Any]:
    """Evaluate every matched case of two folders; write the per-case CSV and ``<out_csv stem>_summary.csv``.

    Args:
        pred_dir, gt_dir: folders of label files (see the module docstring for how cases are matched).
        out_csv: the per-case, per-label CSV (columns ``case, label, name, dice, hd95, nsd, gt_voxels,
            pred_voxels``); the summary goes beside it.
        labels: values to evaluate (a list or ``{value: name}``); None: those present in each case.
        nsd_tolerance_mm: surface Dice tolerance in mm.

    Returns:
        ``{"cases": matched, "evaluated": ok, "failed": [{"case", "code", "detail"}], "unmatched_pred": [...],
        "unmatched_gt": [...], "labels": {value: {"name", "n", "n_both_empty", "<metric>_mean",
        "<metric>_median"}}, "csv": path, "summary_csv": path}``. A case whose files cannot be read or whose
        grids differ is listed in ``failed`` and the others are still evaluated.

    Raises:
        ValueError: no case matched, or a case key is ambiguous inside one folder.
    """
    pairs, unmatched_pred, unmatched_gt = match_cases(pred_dir, gt_dir)
    if not pairs:
        raise ValueError(
            f"no case of {pred_dir} matches one of {gt_dir} ({len(unmatched_pred)} prediction and "
            f"{len(unmatched_gt)} ground-truth file(s) found)"
        )
    for key in unmatched_pred:
        logger.warning("prediction %s has no ground truth", key)
    for key in unmatched_gt:
        logger.warning("ground truth %s has no prediction", key)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for key, pred_path, gt_path in pairs:
        try:
            rows += evaluate(pred_path, gt_path, labels, nsd_tolerance_mm, case=key)
        except InputError as exc:
            logger.warning("case %s not evaluated: %s", key, exc)
            failed.append({"case": key, "code": exc.code.value, "detail": str(exc)})
    per_label = _summary(rows)
    out = Path(out_csv)
    summary_path = out.with_name(f"{out.name.removesuffix('.csv')}_summary.csv")
    atomic_write_text(out, _csv(rows, _ROW_FIELDS))
    summary_fields = ["label", "name", "n", "n_both_empty"] + [
        f"{m}_{s}" for m in EVAL_METRICS for s in ("mean", "median")
    ]
    atomic_write_text(summary_path, _csv(list(per_label.values()), summary_fields))
    logger.info("evaluated %d of %d matched case(s) into %s", len(pairs) - len(failed), len(pairs), out.name)
    return {
        "cases": len(pairs),
        "evaluated": len(pairs) - len(failed),
        "failed": failed,
        "unmatched_pred": unmatched_pred,
        "unmatched_gt": unmatched_gt,
        "labels": per_label,
        "csv": out,
        "summary_csv": summary_path,
    }
