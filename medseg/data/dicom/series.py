"""The result of a DICOM scan: one stack of slices that can become a volume (:class:`SeriesInfo`), the whole scan
(:class:`DicomScan`), and the short problem listing used in error messages.

Discovery itself is :mod:`medseg.data.dicom.scan`; this module holds only the records it returns, so that series
selection (:mod:`medseg.data.dicom.select`) and reading (:mod:`medseg.data.dicom.reader`) use them without importing
the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.dicom.geometry import analyse_stack, axis_codes
from medseg.data.dicom.records import SliceHeader
from medseg.errors import Problem

__all__ = ["DicomScan", "SeriesInfo", "describe_problems", "series_info"]


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


def series_info(stack_id: str, headers: list[SliceHeader], root: Path) -> SeriesInfo:
    """The :class:`SeriesInfo` of one stack: its slices sorted and checked by
    :func:`medseg.data.dicom.geometry.analyse_stack`."""
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


def describe_problems(problems: Sequence[Problem], limit: int = 5) -> str:
    """Short text listing the first problems, for error messages."""
    shown = "; ".join(f"[{p.code.value}] {p.path}: {p.detail}" for p in problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return shown + more
