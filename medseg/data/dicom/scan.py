"""Discover DICOM image series under a folder: read headers only, skip junk with a reason, group into stacks.

Slices: a single-frame file is one slice; an enhanced multi-frame file is one slice per frame, with the frame's
geometry from its functional groups (:mod:`medseg.data.dicom.multiframe`), so the rules below apply to frames
exactly as to files.

The steps have their own modules: the grouping of slices into stacks, split by size, stack, orientation, echo and
time or acquisition (:mod:`medseg.data.dicom.stacks`); each stack's sorting and geometry checks
(:mod:`medseg.data.dicom.geometry`, giving a :class:`~medseg.data.dicom.series.SeriesInfo`); and the damaged or
stray files that make a stack refuse to load (:mod:`medseg.data.dicom.damage`). A folder that repeats slices of
another byte for byte (a study exported twice) is read once (:mod:`medseg.data.dicom.copies`). Junk that is
clearly not a slice (empty files, non-DICOM files, DICOMDIR, reports, SEG objects) is skipped with its reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from medseg.data.dicom.copies import drop_copied_folders
from medseg.data.dicom.damage import add_damage_problems, folders_with_lost_slices
from medseg.data.dicom.header import read_image_headers
from medseg.data.dicom.records import SkippedFile, SliceHeader, relative_name
from medseg.data.dicom.series import DicomScan, series_info
from medseg.data.dicom.stacks import group_stacks
from medseg.errors import InputError, Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["scan_dicom_files", "scan_dicom_tree"]


def _iter_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file():
                files.append(path)
    return files


def scan_dicom_files(
    files: Sequence[str | Path], root: str | Path, *, split_stacks: bool = True
) -> DicomScan:
    """Scan an explicit list of files (problem paths relative to ``root``); see :func:`scan_dicom_tree`."""
    root = Path(root).absolute()
    headers: list[SliceHeader] = []
    problems: list[Problem] = []
    skipped: list[tuple[Path, SkippedFile]] = []
    for f in files:
        result = read_image_headers(Path(f).absolute(), root)
        if isinstance(result, SkippedFile):
            problems.append(result.problem)
            skipped.append((Path(f).absolute().parent, result))
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
    headers = drop_copied_folders(headers, keep_folders=folders_with_lost_slices(skipped))
    series = [
        series_info(stack_id, group, root)
        for stack_id, group in group_stacks(headers, split_stacks=split_stacks)
    ]
    add_damage_problems(series, skipped, root)
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
        split_stacks: split one SeriesInstanceUID holding several stacks (:mod:`medseg.data.dicom.stacks`); when
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
