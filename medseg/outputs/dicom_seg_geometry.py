"""The geometry check of a DICOM SEG's source: its slices (or frames) form one ascending stack and the label's
affine lies on it.

Single-frame source: the slices must share one series, frame of reference, size and orientation, and ascend along
the normal ``F_r x F_c`` (medseg's reading order, see :mod:`medseg.data.dicom.geometry`). Multi-frame source (one
Enhanced / Legacy Converted Enhanced image): the frames are matched to the label's slices by geometry (the frame
lying at slice ``k`` of the label's affine; a frame may belong to another stack of the same file and then stays
unreferenced), and the affine is checked on the matched frames exactly as for single-frame slices. The affine is
computed as medseg's DICOM reader computes it (:func:`source_affine`), and a given label affine must match it
within 1e-3 mm (:func:`check_affine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medseg.data.dicom.multiframe import frame_infos, is_multiframe
from medseg.errors import MedsegError

__all__ = ["SourceGrid", "UnsupportedSegSourceError", "check_affine", "source_affine", "source_grid"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GEOMETRY_TOL = 1e-3  # mm (and mm per voxel for the affine's columns)
_ORIENTATION_TOL = 1e-4


class UnsupportedSegSourceError(MedsegError, ValueError):
    """The source series is readable but a SEG cannot reference it (one stack or temporal position of a
    multi-frame file, or a series spread over several multi-frame files)."""


def _float_list(ds: Dataset, keyword: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise ValueError(f"source slice {_name(ds)} has no valid {keyword}")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _name(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    return Path(filename).name if isinstance(filename, str) else f"#{ds.get('InstanceNumber', '?')}"


@dataclass(frozen=True)
class SourceGrid:
    """Source geometry in the label's slice order: IOP (6,), slice positions (n, 3), PixelSpacing (row, column),
    the slice step used when there is one slice, and (multi-frame source) the 0-based frame of each slice."""

    iop: np.ndarray
    positions: np.ndarray
    pixel_spacing: np.ndarray
    single_step: float
    frames: tuple[int, ...] | None = None


def _stack_grid(
    names: Sequence[str],
    iops: Sequence[Any],
    positions: Sequence[Any],
    pixel_spacing: Any,
    step: float,
    frames: tuple[int, ...] | None = None,
) -> SourceGrid:
    """The grid of slices (``names`` for messages) after checking they share one orientation and ascend along its
    normal; the same for single-frame slices and for the frames of a multi-frame source."""
    iop = np.asarray(iops[0], dtype=np.float64)
    for name, other in zip(names[1:], iops[1:], strict=True):
        if np.max(np.abs(np.asarray(other, dtype=np.float64) - iop)) > _ORIENTATION_TOL:
            raise ValueError(f"{name} has a different ImageOrientationPatient")
    stacked = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    _check_ascending(iop, stacked)
    return SourceGrid(iop, stacked, np.asarray(pixel_spacing, dtype=np.float64), float(step), frames)


def _single_frame_grid(datasets: Sequence[Dataset]) -> SourceGrid:
    """Check the slices form one single-frame stack in ascending order; return its grid."""
    first = datasets[0]
    for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        values = {str(ds.get(keyword, "")) for ds in datasets}
        if len(values) != 1 or values == {""}:
            raise ValueError(
                f"source slices must share one non-empty {keyword}, found {len(values)} value(s)"
            )
    if any(is_multiframe(ds) for ds in datasets):
        raise UnsupportedSegSourceError(
            "a DICOM SEG references either single-frame slices or exactly one multi-frame image; "
            f"got {len(datasets)} source files including multi-frame ones"
        )
    return _stack_grid(
        [f"source slice {_name(ds)}" for ds in datasets],
        [_float_list(ds, "ImageOrientationPatient", 6) for ds in datasets],
        [_float_list(ds, "ImagePositionPatient", 3) for ds in datasets],
        _float_list(first, "PixelSpacing", 2),
        float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0),
    )


def _check_ascending(iop: np.ndarray, positions: np.ndarray) -> None:
    along = positions @ np.cross(iop[:3], iop[3:])
    if len(along) > 1 and not np.all(np.diff(along) > 0):
        raise ValueError(
            "source slices are not in medseg's slice order (ascending along the normal of "
            "ImageOrientationPatient); pass the series folder, or SeriesInfo.files from medseg.data.dicom"
        )


def _frames_on_grid(infos: Sequence[Any], given: np.ndarray, n_slices: int) -> list[int]:
    """The frame lying at each of the label's ``n_slices`` slices (label affine ``given``, RAS).

    Selection only (frames within a quarter step along the normal, half a pixel in-plane, orientation within 1e-3);
    the exact check is :func:`check_affine` on the selected frames, as for single-frame sources.
    """
    lps = _LPS_FROM_RAS @ given
    to_index = np.linalg.inv(lps)
    axes = lps[:3, :2] / np.linalg.norm(lps[:3, :2], axis=0)
    iop = np.concatenate([axes[:, 0], axes[:, 1]])
    at: dict[int, list[int]] = {}
    for number, info in enumerate(infos):
        if info.position is None or info.orientation is None:
            continue
        if np.max(np.abs(np.asarray(info.orientation) - iop)) > 10 * _ORIENTATION_TOL:
            continue
        i, j, k = (to_index @ np.array([*info.position, 1.0]))[:3]
        nearest = round(float(k))
        if abs(i) <= 0.5 and abs(j) <= 0.5 and abs(k - nearest) <= 0.25 and 0 <= nearest < n_slices:
            at.setdefault(nearest, []).append(number)
    missing = [k for k in range(n_slices) if k not in at]
    if missing:
        raise ValueError(
            f"label slice(s) {missing[:5]} lie on no frame of the multi-frame source; a DICOM SEG must be on the "
            "source grid (resample the label to the series first)"
        )
    doubled = {k: v for k, v in at.items() if len(v) > 1}
    if doubled:
        k, frames = next(iter(doubled.items()))
        raise UnsupportedSegSourceError(
            f"frames {[f + 1 for f in frames]} of the multi-frame source all lie at label slice {k} (several "
            "temporal positions or stacks); a DICOM SEG cannot say which one it segments"
        )
    return [at[k][0] for k in range(n_slices)]


def _multiframe_grid(ds: Dataset, affine: Any, n_slices: int) -> SourceGrid:
    """Geometry of the frames of one multi-frame source that the label's slices lie on (all frames, sorted along
    the normal, when no affine is given)."""
    infos = frame_infos(ds)  # MultiFrameError is a ValueError
    if affine is not None:
        frames = _frames_on_grid(infos, _affine_array(affine), n_slices)
    else:
        if any(f.position is None or f.orientation is None for f in infos):
            raise ValueError(f"multi-frame source {_name(ds)} has frames without position or orientation")
        normal = np.cross(infos[0].orientation[:3], infos[0].orientation[3:])
        frames = sorted(range(len(infos)), key=lambda f: float(np.asarray(infos[f].position) @ normal))
    first = infos[frames[0]]
    if first.pixel_spacing is None:
        raise ValueError(f"frame {frames[0] + 1} of the multi-frame source has no valid PixelSpacing")
    return _stack_grid(
        [f"frame {f + 1} of the multi-frame source" for f in frames],
        [infos[f].orientation for f in frames],
        [infos[f].position for f in frames],
        first.pixel_spacing,
        float(first.spacing_between_slices or first.slice_thickness or 1.0),
        tuple(frames),
    )


def source_grid(datasets: Sequence[Dataset], affine: Any = None, n_slices: int | None = None) -> SourceGrid:
    """The checked grid of the ordered source ``datasets``; for one multi-frame source, of the frames that the
    label's ``n_slices`` slices lie on by ``affine`` (all frames, sorted along the normal, without one)."""
    if len(datasets) == 1 and is_multiframe(datasets[0]):
        ds = datasets[0]
        for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(keyword, "") or ""):
                raise ValueError(f"the multi-frame source has no {keyword}")
        return _multiframe_grid(ds, affine, n_slices if n_slices is not None else 0)
    return _single_frame_grid(datasets)


def _grid_affine(grid: SourceGrid) -> np.ndarray:
    row_spacing, col_spacing = grid.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = grid.iop[:3] * col_spacing
    lps[:3, 1] = grid.iop[3:] * row_spacing
    if len(grid.positions) > 1:
        lps[:3, 2] = (grid.positions[-1] - grid.positions[0]) / (len(grid.positions) - 1)
    else:
        lps[:3, 2] = np.cross(grid.iop[:3], grid.iop[3:]) * grid.single_step
    lps[:3, 3] = grid.positions[0]
    return _LPS_FROM_RAS @ lps


def source_affine(datasets: Sequence[Dataset]) -> np.ndarray:
    """RAS affine of the ordered source slices (or of all frames of one multi-frame source), computed as medseg's
    DICOM reader does."""
    return _grid_affine(source_grid(datasets))


def _affine_array(affine: Any) -> np.ndarray:
    given = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if given.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {given.shape}")
    return given


def check_affine(affine: Any, grid: SourceGrid) -> None:
    """Raise ValueError unless the label's RAS ``affine`` matches the source grid within 1e-3 mm."""
    given = _affine_array(affine)
    expected = _grid_affine(grid)
    columns = [0, 1, 3] if len(grid.positions) == 1 else [0, 1, 2, 3]  # one slice: no measured step
    diff = float(np.max(np.abs(given[:3, columns] - expected[:3, columns])))
    if diff > _GEOMETRY_TOL:
        raise ValueError(
            f"the label's affine differs from the source series' geometry by {diff:.4g} mm; a DICOM SEG must be "
            "on the source grid (resample the label to the series first)"
        )

