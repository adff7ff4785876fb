"""Discover DICOM image series under a folder: read headers only, skip junk with a reason, group into stacks.

Slices: a single-frame file is one slice; an enhanced multi-frame file is one slice per frame, with the frame's
geometry from its functional groups (:mod:`medseg.data.dicom.multiframe`), so the rules below apply to frames
exactly as to files.

Grouping: slices are grouped by SeriesInstanceUID, then one UID that holds several stacks is split (when
``split_stacks=True``, the default) by, in this order: image size (Rows/Columns), StackID (multi-frame files),
orientation (ImageOrientationPatient within ``geometry.ORIENTATION_TOL``), EchoNumbers (EffectiveEchoTime for
multi-frame files), and, only when the group still has slices at the same position, TemporalPositionIdentifier
(TemporalPositionIndex) or else AcquisitionNumber. Each resulting stack gets a ``stack_id``
``"<series uid>#<suffixes>"`` (e.g. ``"1.2.3#echo2"``, ``"1.2.3#axial"``); an unsplit series' ``stack_id`` is its
UID. With ``split_stacks=False`` such mixtures are reported as problems of the series instead.

A damaged file that can be attributed to a series (truncated header with a complete SeriesInstanceUID, pixel data
shorter than its header says, an impossible pixel format) makes that series refuse to load: silently dropping it
could remove an end slice that no geometry check would notice. A damaged DICOM file that cannot be attributed
(cut before its SeriesInstanceUID, unparseable, a damaged 'DICM' marker: ``MAY_BE_A_SLICE`` codes) makes every
series with files in the same folder refuse, for the same reason. Junk that is clearly not a slice (empty files,
non-DICOM files, DICOMDIR, reports, SEG objects) is skipped with its reason and does not affect the series.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.dicom.geometry import (
    MIN_VOLUME_SLICES,
    ORIENTATION_TOL,
    analyse_stack,
    axis_codes,
    plane_name,
    same_orientation,
)
from medseg.data.dicom.header import read_image_headers
from medseg.data.dicom.records import SkippedFile, SliceHeader, relative_name
from medseg.errors import InputError, Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = [
    "DicomScan",
    "SeriesInfo",
    "describe_problems",
    "group_stacks",
    "scan_dicom_files",
    "scan_dicom_tree",
]


@dataclass(eq=False)
class SeriesInfo:
    """One stack of slices that can become one 3D volume.

    ``files`` (absolute) and ``slices`` are in spatial order (ascending along the slice normal); for a multi-frame
    source ``files`` repeats the file once per slice (``slices[k].frame`` is the frame) and ``source_files`` lists
    each file once. ``shape`` and ``spacing`` are (i, j, k) = (columns, rows, slices); ``affine`` is the RAS affine
    (``None`` when geometry tags are missing); ``orientation`` its axis codes (e.g. ``"LPS"``). ``problems`` are the geometry / integrity
    problems that make :func:`medseg.data.dicom.reader.load_dicom_series` refuse the stack.
    """

    series_uid: str
    stack_id: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    series_description: str
    image_type: tuple[str, ...]
    series_number: int | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    files: list[Path]
    n_slices: int
    orientation: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    affine: np.ndarray | None
    root: Path
    problems: list[Problem] = field(default_factory=list)
    slices: list[SliceHeader] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def multiframe(self) -> bool:
        """True when the slices are frames of multi-frame file(s)."""
        return any(h.frame is not None for h in self.slices)

    @property
    def source_files(self) -> list[Path]:
        """The stack's files, each once, in order of first appearance along the stack."""
        return list(dict.fromkeys(self.files))

    def summary(self) -> str:
        """One line for listings: uid tail, modality, series number, image type, slices, shape, problems.

        SeriesDescription is left out: it is free text that can hold identifiers (``medseg info
        --show-descriptions`` shows it on request)."""
        uid_tail = "..." + self.stack_id[-24:] if len(self.stack_id) > 27 else self.stack_id
        text = (
            f"{uid_tail} modality={self.modality or '?'} series_number={self.series_number} "
            f"image_type={'/'.join(self.image_type) or '?'} "
            f"n_slices={self.n_slices} shape={'x'.join(str(s) for s in self.shape)}"
        )
        if self.problems:
            text += f" problems={[p.code.value for p in self.problems][:3]}"
        return text


@dataclass
class DicomScan:
    """Result of a scan: the image stacks found and the files skipped (paths relative to ``root``)."""

    root: Path
    series: list[SeriesInfo]
    problems: list[Problem]

    def find(self, stack_id: str) -> SeriesInfo:
        for s in self.series:
            if s.stack_id == stack_id:
                return s
        raise KeyError(stack_id)


def _split(
    groups: list[tuple[str, list[SliceHeader]]],
    key: Callable[[SliceHeader], object],
    label: Callable[[object], str],
) -> list[tuple[str, list[SliceHeader]]]:
    out: list[tuple[str, list[SliceHeader]]] = []
    for suffix, headers in groups:
        buckets: dict[object, list[SliceHeader]] = {}
        for h in headers:
            buckets.setdefault(key(h), []).append(h)
        if len(buckets) == 1:
            out.append((suffix, headers))
            continue
        for value in sorted(buckets, key=lambda v: (len(str(v)), str(v))):  # "2" before "10"
            out.append((suffix + label(value), buckets[value]))
    return out


def _split_orientation(groups: list[tuple[str, list[SliceHeader]]]) -> list[tuple[str, list[SliceHeader]]]:
    out: list[tuple[str, list[SliceHeader]]] = []
    for suffix, headers in groups:
        clusters: list[list[SliceHeader]] = []
        unoriented: list[SliceHeader] = []
        for h in headers:
            if h.orientation is None:
                unoriented.append(h)
                continue
            for cluster in clusters:
                if same_orientation(cluster[0].orientation, h.orientation, ORIENTATION_TOL):
                    cluster.append(h)
                    break
            else:
                clusters.append([h])
        if len(clusters) <= 1:
            out.append((suffix, headers))
            continue
        clusters.sort(key=len, reverse=True)
        clusters[0].extend(unoriented)  # keep them in a stack so it reports MISSING_GEOMETRY
        seen: dict[str, int] = {}
        for cluster in clusters:
            plane = plane_name(cluster[0].orientation)
            seen[plane] = seen.get(plane, 0) + 1
            name = plane if seen[plane] == 1 else f"{plane}{seen[plane]}"
            out.append((f"{suffix}#{name}", cluster))
    return out


def _has_duplicate_positions(headers: Sequence[SliceHeader]) -> bool:
    positions = [tuple(round(v, 3) for v in h.position) for h in headers if h.position is not None]
    return len(set(positions)) < len(positions)


def group_stacks(
    headers: Sequence[SliceHeader], *, split_stacks: bool = True
) -> list[tuple[str, list[SliceHeader]]]:
    """Group slice headers into stacks: ``[(stack_id, headers), ...]`` (see the module docstring)."""
    by_uid: dict[str, list[SliceHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, []).append(h)
    stacks: list[tuple[str, list[SliceHeader]]] = []
    for uid, members in by_uid.items():
        groups = [("", members)]
        if split_stacks:
            groups = _split(groups, lambda h: (h.columns, h.rows), lambda v: f"#{v[0]}x{v[1]}")
            groups = _split(groups, lambda h: h.stack, lambda v: f"#stack{v or 'none'}")
            groups = _split_orientation(groups)
            groups = _split(groups, lambda h: h.echo_number, lambda v: f"#echo{v or 'none'}")
            split_groups = []
            for suffix, group in groups:
                parts = [(suffix, group)]
                if _has_duplicate_positions(group):
                    if len({h.temporal_position for h in group}) > 1:
                        parts = _split(parts, lambda h: h.temporal_position, lambda v: f"#t{v or 'none'}")
                    elif len({h.acquisition_number for h in group}) > 1:
                        parts = _split(parts, lambda h: h.acquisition_number, lambda v: f"#acq{v or 'none'}")
                split_groups.extend(parts)
            groups = split_groups
        stacks.extend((uid + suffix, group) for suffix, group in groups)
    return stacks


def _series_info(stack_id: str, headers: list[SliceHeader], root: Path) -> SeriesInfo:
    geom = analyse_stack(headers, root)
    first = geom.slices[0]
    orientation = axis_codes(geom.affine) if geom.affine is not None else ""
    return SeriesInfo(
        series_uid=first.series_uid,
        stack_id=stack_id,
        study_uid=first.study_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        modality=first.modality,
        series_description=first.series_description,
        image_type=first.image_type,
        series_number=first.series_number,
        rows=first.rows,
        columns=first.columns,
        pixel_spacing=first.pixel_spacing,
        files=[h.path for h in geom.slices],
        n_slices=len(geom.slices),
        orientation=orientation,
        shape=(first.columns, first.rows, len(geom.slices)),
        spacing=geom.spacing,
        affine=geom.affine,
        root=root,
        problems=geom.problems,
        slices=geom.slices,
    )


def _iter_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file():
                files.append(path)
    return files


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


def _stray_slices(info: SeriesInfo, series: Sequence[SeriesInfo], root: Path) -> list[Problem]:
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


def scan_dicom_files(
    files: Sequence[str | Path], root: str | Path, *, split_stacks: bool = True
) -> DicomScan:
    """Scan an explicit list of files (problem paths relative to ``root``); see :func:`scan_dicom_tree`."""
    root = Path(root).absolute()
    headers: list[SliceHeader] = []
    problems: list[Problem] = []
    damaged: dict[str, list[Problem]] = {}
    damaged_in_folder: dict[Path, list[Problem]] = {}
    skipped: list[tuple[Path, SkippedFile]] = []
    for f in files:
        result = read_image_headers(Path(f).absolute(), root)
        if isinstance(result, SkippedFile):
            problems.append(result.problem)
            skipped.append((Path(f).absolute().parent, result))
            if result.series_uid:
                damaged.setdefault(result.series_uid, []).append(result.problem)
            logger.debug("skipped a file: %s", result.problem.code.value)  # no path: folders may name patients
        elif any(not h.series_uid.strip() for h in result):  # a damaged or absent UID: no series to join
            lost = SkippedFile(Problem(
                ReasonCode.UNREADABLE, relative_name(Path(f).absolute(), root),
                "no SeriesInstanceUID: the slice cannot be placed in a series",
            ))  # fmt: skip
            problems.append(lost.problem)
            skipped.append((Path(f).absolute().parent, lost))
        else:
            headers.extend(result)
    series = [
        _series_info(stack_id, group, root)
        for stack_id, group in group_stacks(headers, split_stacks=split_stacks)
    ]
    # a damaged file whose SeriesInstanceUID is missing or not a UID (a damaged length swallowed other bytes) may
    # be a slice of any series in its folder
    for folder, result in skipped:
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
        found += [p for p in _stray_slices(info, series, root) if p not in found]
        info.problems[:0] = found
    series.sort(
        key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else -1, s.stack_id)
    )
    if problems:
        logger.info("%d file(s) skipped during DICOM discovery", len(problems))
    return DicomScan(root=root, series=series, problems=problems)


def scan_dicom_tree(root: str | Path, *, split_stacks: bool = True) -> DicomScan:
    """Walk ``root`` and group every DICOM image file into stacks, reading headers only.

    Args:
        root: folder (a series folder or a whole study / patient tree).
        split_stacks: split one SeriesInstanceUID holding several stacks (see the module docstring); when
            ``False`` such a mixture is reported as INCONSISTENT_SHAPE / MIXED_ORIENTATION / DUPLICATE_SLICE.

    Returns:
        A :class:`DicomScan`; skipped files (empty, not DICOM, DICOMDIR, non-image objects, damaged) are in
        ``scan.problems`` with paths relative to ``root``.

    Raises:
        InputError: FILE_NOT_FOUND when ``root`` is not a folder.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise InputError(ReasonCode.FILE_NOT_FOUND, str(root), "DICOM folder not found (or not a folder)")
    return scan_dicom_files(_iter_files(root_path), root_path, split_stacks=split_stacks)


def describe_problems(problems: Sequence[Problem], limit: int = 5) -> str:
    """Short text listing the first problems, for error messages."""
    shown = "; ".join(f"[{p.code.value}] {p.path}: {p.detail}" for p in problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return shown + more
