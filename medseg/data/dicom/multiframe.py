"""Enhanced multi-frame images: per-frame geometry and rescale from the functional groups.

An Enhanced (or Legacy Converted Enhanced) CT / MR / PET image holds every slice of a series in one file. The
values medseg needs per frame live in functional group macros, each found in the frame's item of the Per-Frame
Functional Groups Sequence or, when it is the same for every frame, in the Shared Functional Groups Sequence (a
per-frame item wins, PS3.3 C.7.6.16):

==========================================  ======================================================================
PlanePositionSequence                       ImagePositionPatient
PlaneOrientationSequence                    ImageOrientationPatient
PixelMeasuresSequence                       PixelSpacing, SliceThickness, SpacingBetweenSlices
PixelValueTransformationSequence            RescaleSlope, RescaleIntercept (absent in most MR / some PET: the
                                            top-level values, else slope 1 intercept 0)
FrameContentSequence (per-frame only)       TemporalPositionIndex, StackID
MREchoSequence                              EffectiveEchoTime
==========================================  ======================================================================

:func:`expand_frames` turns such a file into one :class:`~medseg.data.dicom.header.SliceHeader` per frame, so that
stack grouping (orientation, echo, temporal position, stack), sorting and every geometry check treat the frames
exactly as the files of a classic series. :func:`frame_infos` is shared with the DICOM SEG writer, which has to map
the label's slices back to source frames.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medseg.data.dicom.records import (
    SkippedFile,
    SliceHeader,
    is_enhanced_class,
    relative_name,
    sop_class_name,
)
from medseg.errors import Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["FrameInfo", "MultiFrameError", "expand_frames", "frame_infos", "is_multiframe"]


class MultiFrameError(ValueError):
    """The functional groups of a multi-frame file cannot be used; ``code`` says why."""

    def __init__(self, code: ReasonCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What medseg needs from one frame's functional groups (``None`` / empty when absent)."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    rescale_slope: float | None
    rescale_intercept: float | None
    temporal_position: str
    stack: str
    echo: str


def is_multiframe(ds: Dataset) -> bool:
    """True for a dataset whose geometry lives in functional groups (several frames, or an Enhanced class)."""
    frames = _int(ds.get("NumberOfFrames")) or 1
    sop_class = str(ds.get("SOPClassUID", "") or "")
    return frames > 1 or is_enhanced_class(sop_class)  # the rule read_image_headers applies


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _macro(groups: Sequence[Dataset | None], keyword: str) -> Dataset | None:
    """First item of functional group ``keyword``, from the per-frame item, else the shared one."""
    for group in groups:
        if group is None:
            continue
        try:
            seq = group.get(keyword)
        except Exception:  # an undecodable sequence counts as absent
            continue
        if seq:
            return seq[0]
    return None


def _floats(item: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    if item is None:
        return None
    try:
        value = item.get(keyword)
    except Exception:
        return None
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def _number(item: Dataset | None, keyword: str) -> float | None:
    numbers = _floats(item, keyword, 1)
    return None if numbers is None else numbers[0]


def _text(item: Dataset | None, keyword: str) -> str:
    if item is None:
        return ""
    try:
        value = item.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def frame_infos(ds: Dataset) -> list[FrameInfo]:
    """Per-frame geometry, rescale and frame content of a multi-frame dataset (headers only are needed).

    Raises:
        MultiFrameError: UNSUPPORTED_FORMAT when the file has no Per-Frame Functional Groups (NM, US and other
            multi-frame images whose geometry is described otherwise), UNREADABLE when their number of items is
            not NumberOfFrames.
    """
    frames = _int(ds.get("NumberOfFrames")) or 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        sop_class = str(ds.get("SOPClassUID", "") or "")
        name = sop_class_name(sop_class)
        raise MultiFrameError(
            ReasonCode.UNSUPPORTED_FORMAT,
            f"multi-frame image without functional groups ({name}, {frames} frames) not supported",
        )
    if len(per_frame) != frames:
        raise MultiFrameError(
            ReasonCode.UNREADABLE,
            f"NumberOfFrames is {frames} but the Per-Frame Functional Groups Sequence has {len(per_frame)} items",
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    # not allowed at the top level of enhanced images, but harmless to honour when the groups lack them
    top_orientation = _floats(ds, "ImageOrientationPatient", 6)
    top_spacing = _floats(ds, "PixelSpacing", 2)
    out: list[FrameInfo] = []
    for item in per_frame:
        groups = (item, shared)
        measures = _macro(groups, "PixelMeasuresSequence")
        transform = _macro(groups, "PixelValueTransformationSequence")
        content = _macro((item,), "FrameContentSequence")
        echo = _number(_macro(groups, "MREchoSequence"), "EffectiveEchoTime")
        out.append(
            FrameInfo(
                position=_floats(_macro(groups, "PlanePositionSequence"), "ImagePositionPatient", 3),  # type: ignore[arg-type]
                orientation=_floats(  # type: ignore[arg-type]
                    _macro(groups, "PlaneOrientationSequence"), "ImageOrientationPatient", 6
                )
                or top_orientation,
                pixel_spacing=_floats(measures, "PixelSpacing", 2) or top_spacing,  # type: ignore[arg-type]
                slice_thickness=_number(measures, "SliceThickness"),
                spacing_between_slices=_number(measures, "SpacingBetweenSlices"),
                rescale_slope=_number(transform, "RescaleSlope"),
                rescale_intercept=_number(transform, "RescaleIntercept"),
                temporal_position=_text(content, "TemporalPositionIndex"),
                stack=_text(content, "StackID"),
                echo="" if echo is None else format(echo, "g"),
            )
        )
    return out


def _skipped(code: ReasonCode, template: SliceHeader, root: Path, detail: str, series: bool) -> SkippedFile:
    problem = Problem(code, relative_name(template.path, root), detail)
    return SkippedFile(problem, template.series_uid if series else "")


def expand_frames(
    template: SliceHeader, frames: int, root: Path, ds: Dataset
) -> list[SliceHeader] | SkippedFile:
    """One header per frame of a multi-frame file, or why the file is skipped.

    Args:
        template: the file's header from its top-level elements (pixel location, size, UIDs, top-level rescale).
        frames: NumberOfFrames.
        root: folder that problem paths are made relative to.
        ds: the file's header as :func:`medseg.data.dicom.header.read_image_headers` parsed it (with the
            functional groups).
    """
    try:
        infos = frame_infos(ds)
    except MultiFrameError as exc:
        return _skipped(
            exc.code, template, root, exc.detail, series=exc.code != ReasonCode.UNSUPPORTED_FORMAT
        )
    except Exception as exc:  # pydicom raises many types for corrupt sequences
        return _skipped(
            ReasonCode.UNREADABLE, template, root, f"cannot parse the functional groups: {exc}", series=True
        )
    headers = []
    for k, f in enumerate(infos):
        headers.append(
            replace(
                template,
                frame=k,
                position=f.position,
                orientation=f.orientation,  # frame_infos falls back to the top-level values itself
                pixel_spacing=f.pixel_spacing,
                slice_thickness=f.slice_thickness
                if f.slice_thickness is not None
                else template.slice_thickness,
                spacing_between_slices=(
                    f.spacing_between_slices
                    if f.spacing_between_slices is not None
                    else template.spacing_between_slices
                ),
                rescale_slope=f.rescale_slope or template.rescale_slope,  # 0 is invalid, as in header.py
                rescale_intercept=(
                    f.rescale_intercept if f.rescale_intercept is not None else template.rescale_intercept
                ),
                temporal_position=f.temporal_position or template.temporal_position,
                echo_number=f.echo or template.echo_number,
                stack=f.stack,
                # frames of one file: the rescale-presence check between slices is for separate files
                has_rescale=True,
            )
        )
    if all(h.position is None for h in headers) or all(h.orientation is None for h in headers):
        return _skipped(
            ReasonCode.MISSING_GEOMETRY,
            template,
            root,
            f"multi-frame image ({frames} frames) without patient geometry "
            "(no PlanePositionSequence / PlaneOrientationSequence)",
            series=True,
        )
    logger.debug("%s: %d frames", template.path.name, frames)
    return headers
