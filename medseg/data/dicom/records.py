"""The records of a DICOM scan: one usable image slice (:class:`SliceHeader`) or a skipped file
(:class:`SkippedFile`), and small helpers on them.

A leaf module: the header reader (:mod:`medseg.data.dicom.header`), the multi-frame expansion
(:mod:`medseg.data.dicom.multiframe`) and the series grouping all use these types, so none of them imports another
for them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID

from medseg.errors import Problem

__all__ = [
    "SkippedFile",
    "SliceHeader",
    "is_enhanced_class",
    "is_image_class",
    "relative_name",
    "sop_class_name",
]


@dataclass(frozen=True, slots=True)
class SliceHeader:
    """What medseg needs from one image slice: a single-frame file, or one frame of a multi-frame file.

    ``path`` is absolute. ``pixel_offset``/``pixel_length`` locate the file's Pixel Data value (``pixel_offset`` is
    ``None`` when it cannot be located without decoding, e.g. deflated files). ``pixel_problem`` is set when the
    pixel data is shorter than the header says; the slice stays in its series so that the series refuses to load
    instead of losing a slice.

    Multi-frame files: ``frame`` is the 0-based frame index (``None`` for a single-frame file) and the geometry,
    rescale, ``temporal_position`` (TemporalPositionIndex), ``echo_number`` (EffectiveEchoTime) and ``stack``
    (StackID) are the frame's, from its functional groups; ``pixel_offset`` is still the start of the file's pixel
    data (frame ``k`` starts ``k * rows * columns * bits_allocated / 8`` bytes later).
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    series_description: str
    image_type: tuple[str, ...]
    series_number: int | None
    instance_number: int | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    echo_number: str
    temporal_position: str
    acquisition_number: str
    slice_thickness: float | None
    spacing_between_slices: float | None
    rescale_slope: float
    rescale_intercept: float
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    transfer_syntax: str
    pixel_offset: int | None
    pixel_length: int
    pixel_problem: str | None = None
    frame: int | None = None
    stack: str = ""
    # the pixel format as written (None: tag absent): (BitsAllocated, BitsStored, HighBit, PixelRepresentation,
    # PhotometricInterpretation); every slice of a stack must have the same
    pixel_format: tuple[int | None, int | None, int | None, int | None, str] = (None, None, None, None, "")
    # True when the slice has RescaleSlope and RescaleIntercept, False when it has neither (then 1 / 0)
    has_rescale: bool = True
    # (reason code, detail) when one of the slice's own values is impossible (e.g. RescaleSlope "ab" or 0,
    # BitsStored > BitsAllocated); the slice stays in its stack so that the stack refuses to load
    header_problem: tuple[str, str] | None = None
    pixel_padding: float | None = None  # PixelPaddingValue (stored value), when given
    # False for a bare data set (no preamble / 'DICM'; see medseg.data.dicom.preamble): pydicom reads it with force
    part10: bool = True


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file that is not a usable slice. ``series_uid`` is set when a damaged file can still be attributed to a
    series (its SeriesInstanceUID element is complete), so that series can refuse to load."""

    problem: Problem
    series_uid: str = ""


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (falls back to a ``..`` relative path)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


@functools.lru_cache(maxsize=256)
def is_enhanced_class(sop_class: str) -> bool:
    """Enhanced / Legacy Converted Enhanced image classes: geometry lives in the functional groups."""
    return "Enhanced" in UID(sop_class).name if sop_class else False


def is_image_class(sop_class: str) -> bool:
    """True for an image storage SOP class (by its registered name)."""
    return "Image Storage" in UID(sop_class).name if sop_class else False


def sop_class_name(sop_class: str) -> str:
    """The SOP class's name for messages (``"unknown SOP class"`` when empty)."""
    return UID(sop_class).name if sop_class else "unknown SOP class"
