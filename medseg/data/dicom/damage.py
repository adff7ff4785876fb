"""Which damaged, unreadable or stray files make which stacks of a scan refuse to load.

A damaged file that can be attributed to a series (truncated header with a complete SeriesInstanceUID, pixel data
shorter than its header says, an impossible pixel format) makes that series refuse to load: silently dropping it
could remove an end slice that no geometry check would notice. A damaged DICOM file that cannot be attributed
(cut before its SeriesInstanceUID, unparseable, a damaged 'DICM' marker: ``MAY_BE_A_SLICE`` codes; or a 0-byte file
named like a slice) makes every series with files in the same folder refuse, for the same reason. A stack of fewer
than ``MIN_VOLUME_SLICES`` slices that looks like a member split off a volume in its folder refuses that volume
(:func:`stray_slices`). Junk that is clearly not a slice (non-DICOM files, DICOMDIR, reports, SEG objects) does not
affect any series.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.data.dicom.geometry import MIN_VOLUME_SLICES, ORIENTATION_TOL, same_orientation
from medseg.data.dicom.records import SkippedFile, SliceHeader, relative_name
from medseg.data.dicom.series import SeriesInfo
from medseg.errors import Problem, ReasonCode

__all__ = ["MAY_BE_A_SLICE", "SLICE_DAMAGE", "add_damage_problems", "folders_with_lost_slices", "stray_slices"]

# codes of unattributed skipped files that may be a lost slice of a series in their folder
MAY_BE_A_SLICE = frozenset({ReasonCode.TRUNCATED_HEADER, ReasonCode.UNREADABLE})
# names a 0-byte file may have as a slice whose copy has not started or was lost (other names: clearly not DICOM)
_SLICE_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".ima", ".img"})


def _may_be_a_slice(skipped: SkippedFile) -> bool:
    """A skipped file that may be a lost slice: damaged DICOM, or a 0-byte file named like a slice (a transfer
    that left the file empty); text, pictures and other junk are not."""
    if skipped.problem.code in MAY_BE_A_SLICE:
        return True
    if skipped.problem.code != ReasonCode.EMPTY_FILE or skipped.problem.path is None:
        return False
    suffix = Path(skipped.problem.path).suffix.lower()
    return suffix in _SLICE_SUFFIXES or suffix[1:].isdigit()


def folders_with_lost_slices(skipped: Sequence[tuple[Path, SkippedFile]]) -> set[Path]:
    """Folders holding a skipped file that may be a lost slice (:func:`_may_be_a_slice`)."""
    return {folder for folder, result in skipped if _may_be_a_slice(result)}


_VALID_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# problems of one slice's own header or pixel data: they refuse every stack of the slice's SeriesInstanceUID
SLICE_DAMAGE = frozenset(
    {ReasonCode.TRUNCATED_PIXEL_DATA, ReasonCode.INVALID_PIXEL_FORMAT, ReasonCode.INVALID_RESCALE}
)


def _on_slice_line(stack: SeriesInfo, header: SliceHeader, tol_mm: float = 0.05) -> bool:
    """True when ``header`` has the stack's slice grid (size, pixel spacing, orientation) and lies on its line of
    slice positions, at most 1.5 slice steps beyond either end: where a lost member of the stack would be."""
    first = stack.slices[0]
    if (header.rows, header.columns) != (first.rows, first.columns) or header.position is None:
        return False
    if header.pixel_spacing is None or first.pixel_spacing is None or first.orientation is None:
        return False
    if not np.allclose(header.pixel_spacing, first.pixel_spacing, atol=1e-3):
        return False
    if header.orientation is None or not same_orientation(first.orientation, header.orientation, ORIENTATION_TOL):
        return False
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    origin = np.asarray(first.position, dtype=np.float64)
    along = [float(np.dot(np.asarray(h.position) - origin, normal)) for h in stack.slices if h.position is not None]
    offset = np.asarray(header.position, dtype=np.float64) - origin
    t = float(np.dot(offset, normal))
    if np.linalg.norm(offset - t * normal) > tol_mm or len(along) < 2:
        return False
    step = (max(along) - min(along)) / (len(along) - 1)
    return min(along) - 1.5 * step <= t <= max(along) + 1.5 * step


def _occupied(stack: SeriesInfo, header: SliceHeader) -> bool:
    """True when the stack already has a slice at ``header``'s position (a re-acquisition, not a lost member)."""
    if header.position is None:
        return False
    positions = np.asarray([h.position for h in stack.slices if h.position is not None], dtype=np.float64)
    if len(positions) < 2:
        return False
    step = float(np.median(np.linalg.norm(np.diff(positions, axis=0), axis=1)))
    distance = np.linalg.norm(positions - np.asarray(header.position, dtype=np.float64), axis=1)
    return bool(distance.min() < 0.5 * step)


def stray_slices(info: SeriesInfo, series: Sequence[SeriesInfo], root: Path) -> list[Problem]:
    """Problems for a volume-sized stack when a stack of fewer than ``MIN_VOLUME_SLICES`` slices in the same folder
    looks like a member that split off: the same SeriesInstanceUID (a damaged orientation, size or echo tag moved
    it to a stack of its own), or another one (a damaged UID) with the stack's exact slice grid and a position on
    its slice line; a slice at a position the stack already has is a re-acquisition, not a lost member. Segmenting
    the rest would silently lose that slice (undetectable when it is an end slice). Localizers are not caught: they
    have other orientations, sizes or positions."""
    if info.n_slices < MIN_VOLUME_SLICES or not info.slices:
        return []
    folders = {f.parent for f in info.files}
    found = []
    for other in series:
        if other is info or other.n_slices >= MIN_VOLUME_SLICES or not folders & {f.parent for f in other.files}:
            continue
        stray = [
            h for h in other.slices
            if not _occupied(info, h) and (other.series_uid == info.series_uid or _on_slice_line(info, h))
        ]  # fmt: skip
        if stray:
            how = "same SeriesInstanceUID" if other.series_uid == info.series_uid else "another UID, on its slice line"
            found.append(Problem(
                ReasonCode.STRAY_SLICE,
                relative_name(stray[0].path, root),
                f"split off from the {info.n_slices}-slice stack in its folder ({how}): a damaged header? The "
                "stack is not segmented without it",
            ))  # fmt: skip
    return found


def add_damage_problems(
    series: Sequence[SeriesInfo], skipped: Sequence[tuple[Path, SkippedFile]], root: Path
) -> None:
    """Prepend to each stack's ``problems`` the damage that refuses it (module docstring).

    Args:
        series: every stack of the scan.
        skipped: ``(folder, skipped file)`` of every file that did not become a slice, in scan order.
        root: the scan's root (problem paths are relative to it).
    """
    damaged: dict[str, list[Problem]] = {}
    damaged_in_folder: dict[Path, list[Problem]] = {}
    for folder, result in skipped:
        if result.series_uid:
            damaged.setdefault(result.series_uid, []).append(result.problem)
        # a damaged file whose SeriesInstanceUID is missing or not a UID (a damaged length swallowed other bytes)
        # may be a slice of any series in its folder
        if _may_be_a_slice(result) and not _VALID_UID.fullmatch(result.series_uid[:65]):
            damaged_in_folder.setdefault(folder, []).append(result.problem)
    # a damaged slice that ended up in a stack of its own (e.g. its Rows changed) still refuses its series' others
    for info in series:
        for p in info.problems:
            if p.code in SLICE_DAMAGE and p not in damaged.get(info.series_uid, []):
                damaged.setdefault(info.series_uid, []).append(p)
    for info in series:
        found = [p for p in damaged.get(info.series_uid, []) if p not in info.problems]
        for folder in dict.fromkeys(f.parent for f in info.files):
            found += [p for p in damaged_in_folder.get(folder, []) if p not in found]
        found += [p for p in stray_slices(info, series, root) if p not in found]
        info.problems[:0] = found
