"""Read the header of one DICOM file (never its pixels) and classify it: usable image slice or skipped file.

``read_slice_header`` opens the file once, lets pydicom parse up to the Pixel Data element
(``stop_before_pixels=True``, ``force=False``) and then reads the Pixel Data element's own tag and length. This gives,
without touching the pixels:

* the byte offset of the pixel values, which the fast reader uses to take them with one ``readinto``;
* truncation checks. pydicom silently returns a partial dataset for a file cut inside its header (a value shorter
  than its declared length, or the file ending between elements), so the header is checked element by element
  against the file size; pixel data shorter than ``Rows * Columns * SamplesPerPixel * BitsAllocated / 8 * frames``
  (in the element's length or in the file) is flagged as ``TRUNCATED_PIXEL_DATA``.

Enhanced multi-frame images (Enhanced / Legacy Converted Enhanced CT, MR, PET, and any multi-frame image with
functional groups) become one *virtual* :class:`SliceHeader` per frame (``frame`` = 0-based frame index), with the
frame's geometry and rescale taken from the functional groups (:mod:`medseg.data.dicom.multiframe`); only these
files' functional groups are read in the same pass as the other elements. The single-frame path is unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from medseg.errors import Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = [
    "SkippedFile",
    "SliceHeader",
    "read_image_headers",
    "read_slice_header",
    "relative_name",
    "UNDEFINED_LENGTH",
]

UNDEFINED_LENGTH = 0xFFFFFFFF
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
# Explicit VR elements whose length field is 4 bytes (PS3.5 table 7.1-1); the others use 2 bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


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


# Tags read from each file (pydicom skips the others without storing them). Their values are decoded here from the
# raw bytes where the VR is plain ASCII (UI, CS, DS, IS) or US; this is several times faster than pydicom's
# general value conversion and matters when scanning thousands of files. Text in a character set
# (SeriesDescription) goes through pydicom.
_TAGS = {
    "SpecificCharacterSet": 0x00080005,
    "ImageType": 0x00080008,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "Modality": 0x00080060,
    "SeriesDescription": 0x0008103E,
    "SliceThickness": 0x00180050,
    "EchoNumbers": 0x00180086,
    "SpacingBetweenSlices": 0x00180088,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "AcquisitionNumber": 0x00200012,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "FrameOfReferenceUID": 0x00200052,
    "TemporalPositionIdentifier": 0x00200100,
    "SamplesPerPixel": 0x00280002,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "PixelRepresentation": 0x00280103,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
    # the functional groups of enhanced multi-frame images (absent from single-frame files)
    "SharedFunctionalGroupsSequence": 0x52009229,
    "PerFrameFunctionalGroupsSequence": 0x52009230,
}
_TAG_LIST = list(_TAGS.values())
_ASCII_VRS = {None, "UI", "CS", "DS", "IS"}
_DICOMDIR_DETAIL = "DICOMDIR (media directory index), not an image; skipped"


class _Elements:
    """Typed access to the parsed top-level elements of one header, decoding simple values from raw bytes."""

    __slots__ = ("ds", "raw")

    def __init__(self, ds: pydicom.Dataset) -> None:
        self.ds = ds
        self.raw = dict(ds.items())  # tag -> RawDataElement (unconverted) or DataElement

    def has(self, keyword: str) -> bool:
        return _TAGS[keyword] in self.raw

    def strings(self, keyword: str) -> list[str]:
        """Values of a UI / CS / DS / IS element as stripped strings ([] when absent or empty)."""
        tag = _TAGS[keyword]
        elem = self.raw.get(tag)
        if elem is None:
            return []
        if isinstance(elem, RawDataElement) and elem.VR in _ASCII_VRS:
            text = (elem.value or b"").decode("latin-1").strip(" \0")
            return [v.strip(" \0") for v in text.split("\\")] if text else []
        try:
            value = self.ds[tag].value
        except Exception:  # an undecodable value counts as absent (e.g. MISSING_GEOMETRY later)
            return []
        if value is None or value == "":
            return []
        items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        return [str(v).strip() for v in items]

    def text(self, keyword: str) -> str:
        if keyword == "SeriesDescription":  # character-set dependent: let pydicom decode it
            try:
                value = self.ds.get(keyword)
            except Exception:
                return ""
            return "" if value is None else str(value).strip()
        return "\\".join(self.strings(keyword))

    def us(self, keyword: str) -> int | None:
        tag = _TAGS[keyword]
        elem = self.raw.get(tag)
        if elem is None:
            return None
        if (
            isinstance(elem, RawDataElement)
            and elem.VR in (None, "US")
            and elem.value
            and len(elem.value) == 2
        ):
            return struct.unpack("<H" if elem.is_little_endian else ">H", elem.value)[0]
        try:
            return int(self.ds[tag].value)
        except Exception:
            return None

    def integer(self, keyword: str) -> int | None:
        values = self.strings(keyword)
        try:
            return int(values[0]) if values else None
        except ValueError:
            return None

    def floats(self, keyword: str, count: int) -> tuple[float, ...] | None:
        try:
            numbers = tuple(float(v) for v in self.strings(keyword))
        except ValueError:
            return None
        if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
            return None
        return numbers

    def number(self, keyword: str) -> float | None:
        numbers = self.floats(keyword, 1)
        return None if numbers is None else numbers[0]

    def end(self) -> int:
        """Largest byte offset the parsed elements claim to reach (value start + declared length)."""
        end = 0
        for elem in self.raw.values():
            tell = getattr(elem, "value_tell", None)
            length = getattr(elem, "length", None)
            if tell is not None and length is not None and length != UNDEFINED_LENGTH:
                end = max(end, tell + length)
        return end


def _pixel_element(fh: Any, ds: pydicom.FileDataset, size: int) -> tuple[int | None, int, int | None]:
    """Read the tag/length of the element where pydicom stopped; return (tag, length, value offset)."""
    start = fh.tell()
    if start >= size:
        return None, 0, None
    head = fh.read(12)
    if len(head) < 8:
        return _PIXEL_DATA, 0, size  # cut inside the Pixel Data element's own header
    endian = "<" if ds.is_little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if ds.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        return tag, length, start + 8
    if head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return tag, 0, size
        (length,) = struct.unpack(f"{endian}L", head[8:12])
        return tag, length, start + 12
    (length,) = struct.unpack(f"{endian}H", head[6:8])
    return tag, length, start + 8


def _is_image_class(sop_class: str) -> bool:
    return "Image Storage" in UID(sop_class).name if sop_class else False


def _problem(code: ReasonCode, path: Path, root: Path, detail: str, series_uid: str = "") -> SkippedFile:
    return SkippedFile(Problem(code, relative_name(path, root), detail), series_uid)


def _complete_series_uid(elements: _Elements, size: int) -> str:
    """SeriesInstanceUID of a damaged file, or "" when that element itself is missing or cut."""
    elem = elements.raw.get(_TAGS["SeriesInstanceUID"])
    tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", 0)
    if elem is None or tell is None or tell + length > size:
        return ""
    return elements.text("SeriesInstanceUID")


def read_slice_header(path: Path, root: Path) -> SliceHeader | SkippedFile:
    """Read one file's header; return a :class:`SliceHeader` or a :class:`SkippedFile` saying why it is skipped.

    For a multi-frame file this is its first frame's header; :func:`read_image_headers` gives every frame.

    Args:
        path: absolute file path.
        root: folder the problem paths are made relative to.
    """
    result = read_image_headers(path, root)
    return result if isinstance(result, SkippedFile) else result[0]


def read_image_headers(path: Path, root: Path) -> list[SliceHeader] | SkippedFile:
    """Read one file's header: one :class:`SliceHeader` per frame (one for a single-frame file), or a
    :class:`SkippedFile` saying why the file is skipped.

    Args:
        path: absolute file path.
        root: folder the problem paths are made relative to.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        return _problem(ReasonCode.UNREADABLE, path, root, f"cannot stat file: {exc}")
    if size == 0:
        return _problem(ReasonCode.EMPTY_FILE, path, root, "empty file (0 bytes)")
    if path.name.upper() == "DICOMDIR":
        return _problem(ReasonCode.NO_PIXEL_DATA, path, root, _DICOMDIR_DETAIL)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=False, specific_tags=_TAG_LIST)
            except InvalidDicomError:
                return _problem(
                    ReasonCode.NOT_DICOM, path, root, "not a DICOM file (no 'DICM' marker after the preamble)"
                )
            except (EOFError, struct.error, BytesLengthException) as exc:
                return _problem(ReasonCode.TRUNCATED_HEADER, path, root, f"DICOM header ends early: {exc}")
            except Exception as exc:  # pydicom raises many types for corrupt headers
                return _problem(ReasonCode.UNREADABLE, path, root, f"cannot parse DICOM header: {exc}")
            elements = _Elements(ds)
            # skipped (non-requested) elements are seeked over: a position past the end means the file ended in one
            header_end = max(elements.end(), _Elements(ds.file_meta).end(), fh.tell())
            if header_end > size:
                detail = (
                    f"file is cut inside its header: an element needs {header_end} bytes, the file has {size}"
                )
                return _problem(
                    ReasonCode.TRUNCATED_HEADER, path, root, detail, _complete_series_uid(elements, size)
                )
            tag, length, offset = _pixel_element(fh, ds, size)
            result = _classify(elements, path, root, size, tag, length, offset)
    except OSError as exc:
        return _problem(ReasonCode.UNREADABLE, path, root, f"cannot read file: {exc}")
    if isinstance(result, SkippedFile):
        return result
    header, frames = result
    if frames is None:
        return [header]
    from medseg.data.dicom.multiframe import expand_frames  # the module imports this one

    return expand_frames(header, frames, root, ds)


@functools.lru_cache(maxsize=256)
def is_enhanced_class(sop_class: str) -> bool:
    """Enhanced / Legacy Converted Enhanced image classes: geometry lives in the functional groups."""
    return "Enhanced" in UID(sop_class).name if sop_class else False


def sop_class_name(sop_class: str) -> str:
    """The SOP class's name for messages (``"unknown SOP class"`` when empty)."""
    return UID(sop_class).name if sop_class else "unknown SOP class"


def _classify(
    el: _Elements, path: Path, root: Path, size: int, tag: int | None, length: int, offset: int | None
) -> tuple[SliceHeader, int | None] | SkippedFile:
    """The file's header (top-level values) and, for a multi-frame file, its number of frames; or why it is
    skipped."""
    meta = el.ds.file_meta
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    sop_class = el.text("SOPClassUID") or str(meta.get("MediaStorageSOPClassUID", "") or "")
    if sop_class == DICOMDIR_SOP_CLASS:
        return _problem(ReasonCode.NO_PIXEL_DATA, path, root, _DICOMDIR_DETAIL)
    if not transfer_syntax or (not el.raw and tag is None):
        return _problem(
            ReasonCode.TRUNCATED_HEADER,
            path,
            root,
            "file ends inside or right after its file meta information",
        )
    if not UID(transfer_syntax).is_transfer_syntax:
        return _problem(ReasonCode.UNREADABLE, path, root, f"unknown transfer syntax {transfer_syntax!r}")
    deflated = UID(transfer_syntax).is_deflated
    if tag is None and not deflated:
        if _is_image_class(sop_class) or el.has("Rows") or not el.has("SeriesInstanceUID"):
            return _problem(
                ReasonCode.TRUNCATED_HEADER,
                path,
                root,
                "file ends before its pixel data (header cut short)",
                _complete_series_uid(el, size),
            )
        name = sop_class_name(sop_class)
        return _problem(ReasonCode.NO_PIXEL_DATA, path, root, f"non-image object ({name}); skipped")
    if tag is not None and tag != _PIXEL_DATA and tag not in _FLOAT_PIXEL_DATA:
        return _problem(
            ReasonCode.UNREADABLE, path, root, f"header parsing stopped at unexpected element {tag:08X}"
        )
    if tag in _FLOAT_PIXEL_DATA:
        return _problem(ReasonCode.UNSUPPORTED_FORMAT, path, root, "float pixel data is not supported")
    if sop_class == SEGMENTATION_SOP_CLASS:
        return _problem(ReasonCode.UNSUPPORTED_FORMAT, path, root, "DICOM SEG object, not an image; skipped")
    missing = [k for k in ("SeriesInstanceUID", "Rows", "Columns", "BitsAllocated") if not el.has(k)]
    if missing:
        return _problem(
            ReasonCode.UNREADABLE, path, root, f"image header lacks required tags: {', '.join(missing)}"
        )
    frames = el.integer("NumberOfFrames") or 1
    samples = el.us("SamplesPerPixel") or 1
    if samples != 1:
        return _problem(
            ReasonCode.UNSUPPORTED_FORMAT, path, root, f"colour image ({samples} samples/pixel) not supported"
        )
    multiframe = frames > 1 or is_enhanced_class(sop_class)
    if multiframe and not _is_image_class(sop_class):
        name = sop_class_name(sop_class)
        return _problem(
            ReasonCode.UNSUPPORTED_FORMAT,
            path,
            root,
            f"multi-frame non-image object ({name}, {frames} frames) not supported",
        )
    rows, columns, bits = el.us("Rows"), el.us("Columns"), el.us("BitsAllocated")
    if not rows or not columns or bits not in (1, 8, 16, 32):
        return _problem(
            ReasonCode.UNREADABLE, path, root, f"invalid image size {rows}x{columns} / BitsAllocated {bits}"
        )
    pixel_problem = None
    if deflated:
        offset = None
    elif length != UNDEFINED_LENGTH and offset is not None:
        expected = (rows * columns * bits * frames + 7) // 8
        available = max(0, size - offset)
        what = f"{rows}x{columns}x{bits}-bit" + (f" x {frames} frames" if multiframe else "")
        if length < expected:
            pixel_problem = f"pixel data element holds {length} bytes, {what} needs {expected}"
        elif available < expected:
            pixel_problem = f"pixel data is cut short: file holds {available} of {expected} bytes ({what})"
    header = SliceHeader(
        path=path,
        sop_class_uid=sop_class,
        sop_instance_uid=el.text("SOPInstanceUID"),
        series_uid=el.text("SeriesInstanceUID"),
        study_uid=el.text("StudyInstanceUID"),
        frame_of_reference_uid=el.text("FrameOfReferenceUID"),
        modality=el.text("Modality").upper(),
        series_description=el.text("SeriesDescription"),
        image_type=tuple(v.strip().upper() for v in el.text("ImageType").split("\\") if v.strip()),
        series_number=el.integer("SeriesNumber"),
        instance_number=el.integer("InstanceNumber"),
        rows=rows,
        columns=columns,
        pixel_spacing=el.floats("PixelSpacing", 2),  # type: ignore[arg-type]
        position=el.floats("ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=el.floats("ImageOrientationPatient", 6),  # type: ignore[arg-type]
        echo_number=el.text("EchoNumbers"),
        temporal_position=el.text("TemporalPositionIdentifier"),
        acquisition_number=el.text("AcquisitionNumber"),
        slice_thickness=el.number("SliceThickness"),
        spacing_between_slices=el.number("SpacingBetweenSlices"),
        rescale_slope=el.number("RescaleSlope") or 1.0,
        rescale_intercept=el.number("RescaleIntercept") or 0.0,
        bits_allocated=bits,
        bits_stored=el.us("BitsStored") or bits,
        pixel_representation=el.us("PixelRepresentation") or 0,
        transfer_syntax=transfer_syntax,
        pixel_offset=offset,
        pixel_length=length,
        pixel_problem=pixel_problem,
    )
    return header, (frames if multiframe else None)
