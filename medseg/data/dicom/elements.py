"""Raw access to the elements of one DICOM header: the tags medseg reads, their values decoded from raw bytes, and
the location of the Pixel Data element.

Ours rather than pydicom's value conversion: decoding the plain ASCII (UI, CS, DS, IS) and US values from the raw
bytes is several times faster, which matters when scanning thousands of files (the scan is part of the
``read_dicom`` time that ``benchmarks/io_read.py`` compares with SimpleITK); text in a character set
(SeriesDescription) still goes through pydicom. Decimal and integer strings follow the DICOM grammar (PS3.5 6.2),
not Python's ``float()`` / ``int()``, which also take "1_0", "nan" or "inf".
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue

from medseg.data.quiet import quiet_logger

__all__ = [
    "DS_PATTERN",
    "FLOAT_PIXEL_DATA",
    "IS_PATTERN",
    "MONOCHROME",
    "PIXEL_DATA",
    "TAGS",
    "TAG_LIST",
    "UNDEFINED_LENGTH",
    "Elements",
    "pixel_element",
    "quiet_pydicom",
]

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
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
TAGS = {
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
TAG_LIST = list(TAGS.values())
# Decimal String / Integer String grammar (PS3.5 6.2); Python's float() / int() also take "1_0", "nan", "inf"
DS_PATTERN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
IS_PATTERN = re.compile(r"[+-]?\d+")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_ASCII_VRS = {None, "UI", "CS", "DS", "IS"}


class Elements:
    """Typed access to the parsed top-level elements of one header, decoding simple values from raw bytes."""

    __slots__ = ("ds", "raw")

    def __init__(self, ds: pydicom.Dataset) -> None:
        self.ds = ds
        self.raw = dict(ds.items())  # tag -> RawDataElement (unconverted) or DataElement

    def has(self, keyword: str) -> bool:
        return TAGS[keyword] in self.raw

    def strings(self, keyword: str) -> list[str]:
        """Values of a UI / CS / DS / IS element as stripped strings ([] when absent or empty)."""
        tag = TAGS[keyword]
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
        tag = TAGS[keyword]
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
        if not values or not IS_PATTERN.fullmatch(values[0]):
            return None
        return int(values[0])

    def floats(self, keyword: str, count: int) -> tuple[float, ...] | None:
        texts = self.strings(keyword)
        if not all(DS_PATTERN.fullmatch(v) for v in texts):
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


def pixel_element(fh: Any, ds: pydicom.FileDataset, size: int) -> tuple[int | None, int, int | None]:
    """Read the tag/length of the element where pydicom stopped; return (tag, length, value offset)."""
    start = fh.tell()
    if start >= size:
        return None, 0, None
    head = fh.read(12)
    if len(head) < 8:
        return PIXEL_DATA, 0, size  # cut inside the Pixel Data element's own header
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
