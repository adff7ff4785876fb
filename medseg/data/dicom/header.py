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

import contextlib
import logging
import math
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from medseg.data.dicom.multiframe import expand_frames
from medseg.data.dicom.records import (
    SkippedFile,
    SliceHeader,
    is_enhanced_class,
    relative_name,
    sop_class_name,
)
from medseg.data.quiet import quiet_logger
from medseg.errors import Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["UNDEFINED_LENGTH", "quiet_pydicom", "read_image_headers", "read_slice_header"]

UNDEFINED_LENGTH = 0xFFFFFFFF
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
# Explicit VR elements whose length field is 4 bytes (PS3.5 table 7.1-1); the others use 2 bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def quiet_pydicom() -> contextlib.AbstractContextManager[None]:
    """Hold back pydicom's log records (decoder errors are logged with a traceback before being raised; medseg
    reports the raised error itself, as one line)."""
    return quiet_logger("pydicom")


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
    "PhotometricInterpretation": 0x00280004,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103,
    "PixelPaddingValue": 0x00280120,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
    # the functional groups of enhanced multi-frame images (absent from single-frame files)
    "SharedFunctionalGroupsSequence": 0x52009229,
    "PerFrameFunctionalGroupsSequence": 0x52009230,
}
_TAG_LIST = list(_TAGS.values())
# Decimal String / Integer String grammar (PS3.5 6.2); Python's float() / int() also take "1_0", "nan", "inf"
_DS = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"[+-]?\d+")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
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
        if not values or not _IS.fullmatch(values[0]):
            return None
        return int(values[0])

    def floats(self, keyword: str, count: int) -> tuple[float, ...] | None:
        texts = self.strings(keyword)
        if not all(_DS.fullmatch(v) for v in texts):
            return None
        numbers = tuple(float(v) for v in texts)
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
    if size <= 132 and _cut_preamble(path):  # a DICOM file cut inside its preamble: it may be a lost slice
        return _problem(ReasonCode.UNREADABLE, path, root, f"file of {size} bytes: a DICOM preamble cut short")
    if path.name.upper() == "DICOMDIR":
        return _problem(ReasonCode.NO_PIXEL_DATA, path, root, _DICOMDIR_DETAIL)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings(), quiet_pydicom():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=False, specific_tags=_TAG_LIST)
            except InvalidDicomError:
                damaged = _damaged_dicom(path)
                if damaged:
                    return _problem(ReasonCode.UNREADABLE, path, root, damaged)
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
    return expand_frames(header, frames, root, ds)


def _cut_preamble(path: Path) -> bool:
    """True for a file of at most 132 bytes that is a zero preamble, possibly followed by the start of 'DICM'."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return not data[:128].strip(b"\0") and b"DICM".startswith(data[128:])


def _damaged_dicom(path: Path) -> str | None:
    """Why a file without the 'DICM' marker still looks like DICOM (None when it does not).

    Such a file may be a slice of a series beside it (a damaged marker, or a data set written without the Part 10
    preamble), so it is reported as UNREADABLE (which makes the series in its folder refuse) rather than skipped as
    junk.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(140)
    except OSError:
        return None
    if len(head) >= 136 and head[132:134] == b"\x02\x00" and head[128:132] != b"DICM":
        return f"DICOM file whose 'DICM' marker is damaged ({head[128:132]!r}); not read"
    if len(head) >= 8 and head[0:2] in (b"\x02\x00", b"\x08\x00") and (
        head[4:6].isalpha() and head[4:6].isupper() or int.from_bytes(head[4:8], "little") < 1024
    ):
        return "DICOM data set without the Part 10 preamble and 'DICM' marker; not read"
    return None


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
    series_uid = _complete_series_uid(el, size)
    if not UID(transfer_syntax).is_transfer_syntax:
        return _problem(
            ReasonCode.UNREADABLE, path, root, f"unknown transfer syntax {transfer_syntax!r}", series_uid
        )
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
            ReasonCode.UNREADABLE,
            path,
            root,
            f"header parsing stopped at unexpected element {tag:08X}",
            series_uid,
        )
    if tag in _FLOAT_PIXEL_DATA:
        return _problem(
            ReasonCode.UNSUPPORTED_FORMAT, path, root, "float pixel data is not supported", series_uid
        )
    if sop_class == SEGMENTATION_SOP_CLASS:
        return _problem(ReasonCode.UNSUPPORTED_FORMAT, path, root, "DICOM SEG object, not an image; skipped")
    missing = [k for k in ("SeriesInstanceUID", "Rows", "Columns", "BitsAllocated") if not el.has(k)]
    if missing:
        return _problem(
            ReasonCode.UNREADABLE,
            path,
            root,
            f"image header lacks required tags: {', '.join(missing)}",
            series_uid,
        )
    frames = el.integer("NumberOfFrames") or 1
    samples = el.us("SamplesPerPixel") or 1
    if samples != 1:
        return _problem(
            ReasonCode.UNSUPPORTED_FORMAT,
            path,
            root,
            f"colour image ({samples} samples/pixel) not supported",
            series_uid,
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
            ReasonCode.UNREADABLE,
            path,
            root,
            f"invalid image size {rows}x{columns} / BitsAllocated {bits}",
            series_uid,
        )
    slope, intercept, has_rescale, rescale_problem = _rescale(el)
    pixel_format, format_problem = _pixel_format(el, bits)
    header_problem = None
    if rescale_problem:
        header_problem = (ReasonCode.INVALID_RESCALE.value, rescale_problem)
    elif format_problem:
        header_problem = (ReasonCode.INVALID_PIXEL_FORMAT.value, format_problem)
    pixel_problem = None
    if deflated:
        offset = None
    elif length != UNDEFINED_LENGTH and offset is not None:
        expected = (rows * columns * bits * frames + 7) // 8
        available = max(0, size - offset)
        what = f"{rows}x{columns}x{bits}-bit" + (f" x {frames} frames" if multiframe else "")
        if length < expected:
            pixel_problem = f"pixel data element holds {length} bytes, {what} needs {expected}"
        elif length > expected + 1:  # one padding byte makes an odd length even
            pixel_problem = f"pixel data element holds {length} bytes, {what} needs only {expected}"
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
        rescale_slope=slope,
        rescale_intercept=intercept,
        bits_allocated=bits,
        bits_stored=pixel_format[1] if format_problem is None and pixel_format[1] else bits,
        pixel_representation=pixel_format[3] or 0,
        transfer_syntax=transfer_syntax,
        pixel_offset=offset,
        pixel_length=length,
        pixel_problem=pixel_problem,
        pixel_format=pixel_format,
        has_rescale=has_rescale,
        header_problem=header_problem,
        pixel_padding=_padding(el),
    )
    return header, (frames if multiframe else None)


def _rescale(el: _Elements) -> tuple[float, float, bool, str | None]:
    """(slope, intercept, present, problem): both tags absent means 1 / 0 (e.g. MR); one without the other, a
    value that is not a DICOM decimal string, a non-finite value or a zero slope is a problem."""
    texts = {name: el.strings(name) for name in ("RescaleSlope", "RescaleIntercept")}
    present = [name for name, text in texts.items() if text]
    if not present:
        return 1.0, 0.0, False, None
    if len(present) == 1:
        other = "RescaleIntercept" if present[0] == "RescaleSlope" else "RescaleSlope"
        return 1.0, 0.0, True, f"{present[0]} is given but {other} is missing (they come as a pair)"
    values: dict[str, float] = {}
    for name, text in texts.items():
        shown = "\\".join(text)[:32]
        if len(text) != 1 or not _DS.fullmatch(text[0]):
            return 1.0, 0.0, True, f"{name} {shown!r} is not a decimal number"
        values[name] = float(text[0])
        if not math.isfinite(values[name]):
            return 1.0, 0.0, True, f"{name} {shown!r} is not finite"
    if values["RescaleSlope"] == 0.0:
        return 1.0, 0.0, True, "RescaleSlope is 0 (every pixel would get the same value)"
    return values["RescaleSlope"], values["RescaleIntercept"], True, None


def _pixel_format(
    el: _Elements, bits: int
) -> tuple[tuple[int | None, int | None, int | None, int | None, str], str | None]:
    """The slice's pixel format as written, and what is impossible about it (None when it is consistent)."""
    stored, high, sign = el.us("BitsStored"), el.us("HighBit"), el.us("PixelRepresentation")
    photometric = el.text("PhotometricInterpretation").upper()
    fmt = (bits, stored, high, sign, photometric)
    if stored is not None and not 1 <= stored <= bits:
        return fmt, f"BitsStored {stored} is not between 1 and BitsAllocated {bits}"
    if high is not None and high != (stored if stored is not None else bits) - 1:
        return fmt, f"HighBit {high} is not BitsStored - 1 ({(stored if stored is not None else bits) - 1})"
    if sign not in (None, 0, 1):
        return fmt, f"PixelRepresentation {sign} is neither 0 (unsigned) nor 1 (signed)"
    if photometric and photometric not in MONOCHROME:
        return fmt, f"PhotometricInterpretation {photometric[:20]!r} is not a grey-scale image (MONOCHROME1/2)"
    return fmt, None


def _padding(el: _Elements) -> float | None:
    """PixelPaddingValue (US or SS) as a number, None when absent or unreadable."""
    tag = _TAGS["PixelPaddingValue"]
    if tag not in el.raw:
        return None
    try:
        value = el.ds[tag].value
        return float(value[0] if isinstance(value, (list, MultiValue)) else value)
    except Exception:  # a damaged optional value only loses the padding exception of the range check
        return None
