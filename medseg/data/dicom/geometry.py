"""Slice sorting, geometry checks and the RAS affine of one stack of DICOM slices.

A slice is a single-frame file or one frame of a multi-frame file (:mod:`medseg.data.dicom.multiframe`); both are
checked alike. Problems name the file relative to the root; details name frames as ``"<file> frame N"``.

Conventions: a slice's ImageOrientationPatient is (F_r, F_c), the LPS direction cosines of a row (increasing column
index i) and of a column (increasing row index j). Pixel ``pixel_array[j, i]`` sits at
``IPP + i * PixelSpacing[1] * F_r + j * PixelSpacing[0] * F_c``. Slices are sorted by IPP projected on the normal
``n = F_r x F_c`` (ascending), so the volume's third axis follows n. The affine's third column is the vector between
consecutive sorted positions (first-to-last divided by n - 1), so it follows the acquisition exactly; the translation
is the first sorted IPP. RAS = diag(-1, -1, 1) @ LPS.

Tolerances (module constants, documented here once):

* ``ORIENTATION_TOL`` 1e-4: direction cosines of two slices differing by more than this (any component) are
  different orientations; |F_r|, |F_c| must be 1 and F_r . F_c must be 0 within it.
* ``SPACING_TOL_MM`` 1e-4 mm: pixel spacings differing by more are inconsistent.
* Duplicate positions: consecutive sorted slices closer than ``max(DUPLICATE_ABS_MM, DUPLICATE_REL * median step)``.
* Missing slice: a step larger than ``MISSING_FACTOR`` (1.5) times the median step.
* Gantry tilt: a slice whose offset from the first slice has an in-plane component larger than
  ``TILT_ABS_MM + TILT_REL * distance along n`` (0.01 mm + 0.1 %, i.e. about 0.06 degrees).
* Non-uniform spacing: a slice more than ``max(UNIFORM_ABS_MM, UNIFORM_REL * step)`` (0.01 mm or 1 % of the step)
  away from the regular grid running from the first to the last slice.
* ``MIN_VOLUME_SLICES`` 3: the fewest slices read as a 3D volume (``NOT_VOLUME`` below it, where a 3D volume is
  asked for). One slice has no slice step (it would be invented from SliceThickness); with two slices a missing
  slice or a non-uniform step cannot be seen. Three is the least that lets the checks above see a gap.

Pixel format and rescale: every slice of a stack must have the same BitsAllocated, BitsStored, HighBit,
PixelRepresentation and PhotometricInterpretation (``INCONSISTENT_PIXEL_FORMAT``), and either all slices or none
carry RescaleSlope/RescaleIntercept (``INCONSISTENT_RESCALE``); values that differ per slice are fine (each slice
is rescaled with its own). A slice's impossible values (``INVALID_RESCALE``, ``INVALID_PIXEL_FORMAT``, from
:mod:`medseg.data.dicom.header`) are reported with its file.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.dicom.records import SliceHeader, relative_name
from medseg.errors import Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_VOLUME_SLICES",
    "StackGeometry",
    "analyse_stack",
    "axis_codes",
    "orientation_key",
    "plane_name",
    "same_orientation",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOL = 1e-4
SPACING_TOL_MM = 1e-4
DUPLICATE_ABS_MM = 1e-3
DUPLICATE_REL = 0.01
MISSING_FACTOR = 1.5
TILT_ABS_MM = 0.01
TILT_REL = 1e-3
UNIFORM_ABS_MM = 0.01
UNIFORM_REL = 0.01
MIN_VOLUME_SLICES = 3


@dataclass
class StackGeometry:
    """Result of :func:`analyse_stack`: slices in spatial order, the RAS affine and any problems.

    ``affine`` is ``None`` when it cannot be computed (missing geometry tags).
    """

    slices: list[SliceHeader]
    affine: np.ndarray | None
    spacing: tuple[float, float, float] | None
    problems: list[Problem] = field(default_factory=list)


def same_orientation(a: Sequence[float], b: Sequence[float], tol: float = ORIENTATION_TOL) -> bool:
    """True when two ImageOrientationPatient values agree within ``tol`` in every component."""
    return bool(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))) <= tol)


def orientation_key(iop: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in iop)


def plane_name(iop: Sequence[float]) -> str:
    """'axial', 'coronal' or 'sagittal' after the main axis of the slice normal ('oblique' never returned)."""
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def axis_codes(affine: np.ndarray) -> str:
    """Axis codes of a RAS affine, e.g. 'LPS' for a standard axial DICOM stack (nibabel ``aff2axcodes``)."""
    import nibabel.orientations as nio

    return "".join(str(c) for c in nio.aff2axcodes(affine))


def _majority(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def _orthonormal_error(iop: Sequence[float]) -> float:
    f_r, f_c = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    return float(max(abs(np.linalg.norm(f_r) - 1.0), abs(np.linalg.norm(f_c) - 1.0), abs(f_r @ f_c)))


def _frame(h: SliceHeader) -> str:
    """Detail prefix naming the frame of a multi-frame file ("" for a single-frame file)."""
    return "" if h.frame is None else f"frame {h.frame + 1}: "


def _slice_label(h: SliceHeader, root: Path) -> str:
    """A slice named for messages: its relative path, plus ``" frame N"`` (1-based) for a multi-frame file."""
    name = relative_name(h.path, root)
    return name if h.frame is None else f"{name} frame {h.frame + 1}"


def _check_headers(slices: list[SliceHeader], root: Path) -> list[Problem]:
    """Per-file checks that do not need slice positions."""
    problems: list[Problem] = []
    for h in slices:
        if h.pixel_problem:
            problem = Problem(ReasonCode.TRUNCATED_PIXEL_DATA, relative_name(h.path, root), h.pixel_problem)
            if problem not in problems:  # once per file, not per frame
                problems.append(problem)
    for h in slices:
        if h.header_problem:
            problem = Problem(ReasonCode(h.header_problem[0]), relative_name(h.path, root), h.header_problem[1])
            if problem not in problems:
                problems.append(problem)
    problems += _format_problems(slices, root)
    for h in slices:
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient", h.position),
                ("ImageOrientationPatient", h.orientation),
                ("PixelSpacing", h.pixel_spacing),
            )
            if value is None
        ]
        if missing:
            problems.append(
                Problem(
                    ReasonCode.MISSING_GEOMETRY,
                    relative_name(h.path, root),
                    f"{_frame(h)}missing or invalid {', '.join(missing)}",
                )
            )
    shape = _majority([(h.rows, h.columns) for h in slices])
    for h in slices:
        if (h.rows, h.columns) != shape:
            problems.append(
                Problem(
                    ReasonCode.INCONSISTENT_SHAPE,
                    relative_name(h.path, root),
                    f"{_frame(h)}{h.rows}x{h.columns} pixels (rows x columns) while the series has {shape[0]}x{shape[1]}",
                )
            )
    spaced = [h for h in slices if h.pixel_spacing is not None]
    if spaced:
        ref = _majority([h.pixel_spacing for h in spaced])
        for h in spaced:
            if max(abs(a - b) for a, b in zip(h.pixel_spacing, ref, strict=True)) > SPACING_TOL_MM:
                problems.append(
                    Problem(
                        ReasonCode.INCONSISTENT_SPACING,
                        relative_name(h.path, root),
                        f"{_frame(h)}pixel spacing {list(h.pixel_spacing)} while the series has {list(ref)}",
                    )
                )
    oriented = [h for h in slices if h.orientation is not None]
    checked: dict[tuple[float, ...], float] = {}
    for h in oriented:
        err = checked.setdefault(h.orientation, _orthonormal_error(h.orientation))
        if err > ORIENTATION_TOL:
            problems.append(
                Problem(
                    ReasonCode.NON_ORTHONORMAL_ORIENTATION,
                    relative_name(h.path, root),
                    f"{_frame(h)}ImageOrientationPatient {list(h.orientation)} is not two orthogonal unit vectors "
                    f"(error {err:.3g} > {ORIENTATION_TOL})",
                )
            )
    if oriented:
        ref_key = _majority([orientation_key(h.orientation) for h in oriented])
        ref_iop = next(h.orientation for h in oriented if orientation_key(h.orientation) == ref_key)
        for h in oriented:
            # 2x: slices grouped within ORIENTATION_TOL of a stack's first slice are within 2x of each other
            if not same_orientation(h.orientation, ref_iop, tol=2 * ORIENTATION_TOL):
                problems.append(
                    Problem(
                        ReasonCode.MIXED_ORIENTATION,
                        relative_name(h.path, root),
                        f"{_frame(h)}ImageOrientationPatient {list(h.orientation)} differs from the series' {list(ref_iop)}",
                    )
                )
    return problems


_FORMAT_NAMES = ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PhotometricInterpretation")


def _format_problems(slices: list[SliceHeader], root: Path) -> list[Problem]:
    """Pixel format and rescale tags that differ between the slices of one stack (the minority is named).

    A slice whose format differs from the others' is read differently (other bits masked, other sign), so its
    values cannot be trusted; slices with RescaleSlope/Intercept next to slices without them mean that some
    slices lost their rescale (1 / 0 would be used silently).
    """
    problems: list[Problem] = []
    ref = _majority([h.pixel_format for h in slices])
    for h in slices:
        if h.pixel_format != ref:
            diffs = ", ".join(
                f"{name} {mine!r} (series: {theirs!r})"
                for name, mine, theirs in zip(_FORMAT_NAMES, h.pixel_format, ref, strict=True)
                if mine != theirs
            )
            problem = Problem(
                ReasonCode.INCONSISTENT_PIXEL_FORMAT, relative_name(h.path, root), f"pixel format differs: {diffs}"
            )
            if problem not in problems:
                problems.append(problem)
    with_rescale = [h for h in slices if h.has_rescale]
    if with_rescale and len(with_rescale) < len(slices):
        lacking = [h for h in slices if not h.has_rescale]
        minority, has = (lacking, False) if len(lacking) <= len(with_rescale) else (with_rescale, True)
        for h in minority:
            detail = (
                "has RescaleSlope/RescaleIntercept while most slices of the series have none"
                if has
                else f"has no RescaleSlope/RescaleIntercept while {len(with_rescale)} slice(s) of the series have them"
            )
            problem = Problem(ReasonCode.INCONSISTENT_RESCALE, relative_name(h.path, root), detail)
            if problem not in problems:
                problems.append(problem)
    return problems


def _single_slice_step(h: SliceHeader) -> float:
    for value in (h.spacing_between_slices, h.slice_thickness):
        if value is not None and value > 0:
            return float(value)
    logger.debug("%s: single slice without SliceThickness; using 1 mm as slice step", h.path.name)
    return 1.0


def _position_problems(
    slices: list[SliceHeader], along: np.ndarray, positions: np.ndarray, normal: np.ndarray, root: Path
) -> list[Problem]:
    """Checks on the sorted positions: duplicates, missing slices, gantry tilt, non-uniform spacing."""
    problems: list[Problem] = []
    steps = np.diff(along)
    positive = steps[steps > DUPLICATE_ABS_MM]
    median = float(np.median(positive)) if positive.size else 0.0
    dup_tol = max(DUPLICATE_ABS_MM, DUPLICATE_REL * median)
    for k in np.flatnonzero(steps <= dup_tol):
        problems.append(
            Problem(
                ReasonCode.DUPLICATE_SLICE,
                relative_name(slices[k + 1].path, root),
                f"{_frame(slices[k + 1])}same position as {_slice_label(slices[k], root)} (distance {steps[k]:.4g} mm along the normal)",
            )
        )
    if problems or median == 0.0:
        return problems
    for k in np.flatnonzero(steps > MISSING_FACTOR * median):
        a, b = _slice_label(slices[k], root), _slice_label(slices[k + 1], root)
        problems.append(
            Problem(
                ReasonCode.MISSING_SLICE,
                relative_name(slices[k + 1].path, root),
                f"gap of {steps[k]:.4g} mm between {a} and {b} (median step {median:.4g} mm): "
                f"about {round(steps[k] / median) - 1} slice(s) missing",
            )
        )
    offsets = positions - positions[0]
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    tilted = np.flatnonzero(in_plane > TILT_ABS_MM + TILT_REL * np.abs(offsets @ normal))
    if tilted.size:
        k = int(tilted[-1])
        angle = float(np.degrees(np.arctan2(in_plane[k], abs(offsets[k] @ normal))))
        problems.append(
            Problem(
                ReasonCode.GANTRY_TILT,
                relative_name(slices[k].path, root),
                f"{_frame(slices[k])}slice positions drift {in_plane[k]:.4g} mm in-plane over {abs(offsets[k] @ normal):.4g} mm "
                f"(about {angle:.2f} degrees of gantry tilt or shear); resampling is not done silently",
            )
        )
    if not any(p.code == ReasonCode.MISSING_SLICE for p in problems) and len(along) > 2:
        step = (along[-1] - along[0]) / (len(along) - 1)
        deviation = np.abs(along - (along[0] + step * np.arange(len(along))))
        tol = max(UNIFORM_ABS_MM, UNIFORM_REL * step)
        bad = np.flatnonzero(deviation > tol)
        if bad.size:
            k = int(bad[np.argmax(deviation[bad])])
            problems.append(
                Problem(
                    ReasonCode.NONUNIFORM_SPACING,
                    relative_name(slices[k].path, root),
                    f"{_frame(slices[k])}slice is {deviation[k]:.4g} mm off the regular {step:.4g} mm grid (tolerance {tol:.3g} mm); "
                    f"steps range {steps.min():.4g}..{steps.max():.4g} mm",
                )
            )
    return problems


def analyse_stack(slices: Sequence[SliceHeader], root: Path) -> StackGeometry:
    """Sort one stack of slices along its normal, check its geometry and compute its RAS affine.

    Args:
        slices: headers of one stack (one orientation, one echo, ...), any order.
        root: folder that problem paths are made relative to.

    Returns:
        The sorted slices, the affine (``None`` if positions/orientation are missing), the voxel spacing
        (i, j, k) in mm and the list of problems (empty when the stack is a clean regular grid).
    """
    if not slices:
        raise ValueError("analyse_stack needs at least one slice")
    slices = list(slices)
    problems = _check_headers(slices, root)
    if any(p.code == ReasonCode.MISSING_GEOMETRY for p in problems):
        ordered = sorted(
            slices,
            key=lambda h: (h.instance_number is None, h.instance_number or 0, str(h.path), h.frame or 0),
        )
        return StackGeometry(ordered, None, None, problems)
    ref = _majority([orientation_key(h.orientation) for h in slices])
    ref_slice = next(h for h in slices if orientation_key(h.orientation) == ref)
    f_r = np.asarray(ref_slice.orientation[:3], dtype=float)
    f_c = np.asarray(ref_slice.orientation[3:], dtype=float)
    normal = np.cross(f_r, f_c)
    normal = normal / np.linalg.norm(normal)
    positions_all = np.asarray([h.position for h in slices], dtype=float)
    along_all = positions_all @ normal
    order = sorted(
        range(len(slices)),
        key=lambda k: (along_all[k], slices[k].instance_number or 0, slices[k].frame or 0),
    )
    ordered = [slices[k] for k in order]
    positions, along = positions_all[order], along_all[order]
    if len(ordered) > 1:
        problems += _position_problems(ordered, along, positions, normal, root)
        step_vec = (positions[-1] - positions[0]) / (len(ordered) - 1)
    else:
        step_vec = normal * _single_slice_step(ordered[0])
    row_spacing, col_spacing = ref_slice.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = f_r * col_spacing
    lps[:3, 1] = f_c * row_spacing
    lps[:3, 2] = step_vec
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps
    spacing = (float(col_spacing), float(row_spacing), float(np.linalg.norm(step_vec)))
    return StackGeometry(ordered, affine, spacing, problems)
