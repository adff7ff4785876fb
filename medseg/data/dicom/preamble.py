"""Files without the Part 10 preamble and 'DICM' marker: junk, a damaged DICOM file, or a bare data set.

A DICOM file (PS3.10 7.1) starts with a 128-byte preamble, ``DICM`` and the file meta information, which names the
transfer syntax. Some archives and older modalities store the bare data set instead (PS3.5 encoding only, often
without file meta). pydicom reads those with ``dcmread(force=True)``, but ``force`` also "reads" text, pictures or
NIfTI files as garbage elements. So medseg looks at the first bytes (:func:`sniff`) and reads a file without the
marker only when it starts like a data set (group 0002 or 0008 with a plausible VR or length); anything else stays
``NOT_DICOM``.

Without the marker nothing else vouches for the bytes, so such a file becomes a slice only when the header
reader's usual checks pass **and** every tag medseg needs from the SOP Common, General Series, Image Pixel and
Image Plane modules is present with a valid value (:func:`missing_required`); the transfer syntax comes from the
file meta when the file has one, else from the encoding pydicom detected (native pixel data only: encapsulated
pixel data without a transfer syntax has no known codec). A file that fails is ``UNREADABLE``, attributed to its
series when its SeriesInstanceUID is readable (so that series refuses instead of losing a slice).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medseg.data.dicom.elements import Elements
from medseg.data.dicom.records import SliceHeader, is_image_class

__all__ = [
    "HEAD_BYTES",
    "Head",
    "cut_preamble",
    "encoding_syntax",
    "looks_like_dicom",
    "missing_required",
    "sniff",
]

# (group bytes, byte order) a data set may start with: file meta (0002) or the identifying group (0008), which
# every image has (SOPClassUID); big endian only with explicit VR
_LITTLE_GROUPS = (b"\x02\x00", b"\x08\x00")
_BIG_GROUPS = (b"\x00\x02", b"\x00\x08")
BARE_DETAIL = "DICOM data set without the Part 10 preamble and 'DICM' marker"


class Head(Enum):
    """What a file's first bytes say it is."""

    PART10 = "part10"  # the 'DICM' marker at byte 128
    DAMAGED_MARKER = "damaged marker"  # file meta at byte 132 but no 'DICM' before it
    BARE = "bare data set"  # starts like a DICOM data set (no preamble)
    OTHER = "other"  # not DICOM


HEAD_BYTES = 140  # what :func:`sniff` needs to see


def sniff(head: bytes) -> tuple[Head, str]:
    """``(kind, detail)`` from a file's first :data:`HEAD_BYTES` bytes."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return Head.PART10, ""
    if len(head) >= 8:  # before the marker check: bytes 132.. of a bare data set may hold anything
        vr_like = head[4:6].isalpha() and head[4:6].isupper()
        if head[0:2] in _LITTLE_GROUPS and (vr_like or int.from_bytes(head[4:8], "little") < 1024):
            return Head.BARE, BARE_DETAIL
        if head[0:2] in _BIG_GROUPS and vr_like:
            return Head.BARE, BARE_DETAIL
    if len(head) >= 136 and head[132:134] == b"\x02\x00":
        return Head.DAMAGED_MARKER, f"DICOM file whose 'DICM' marker is damaged ({head[128:132]!r}); not read"
    return Head.OTHER, ""


def looks_like_dicom(path: Path) -> bool:
    """True for a Part 10 file or a file that starts like a bare DICOM data set (False when unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return False
    return sniff(head)[0] in (Head.PART10, Head.BARE)


def cut_preamble(path: Path) -> bool:
    """True for a file of at most 132 bytes that is a zero preamble, possibly followed by the start of 'DICM'."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return not data[:128].strip(b"\0") and b"DICM".startswith(data[128:])


def encoding_syntax(ds: pydicom.Dataset) -> str:
    """The native transfer syntax of the encoding pydicom detected in a data set read without file meta."""
    if ds.is_implicit_VR:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if ds.is_little_endian else ExplicitVRBigEndian)


# the tags a bare data set must have (type 1 in PS3.3 C.12.1, C.7.3.1, C.7.6.3, C.7.6.2), in module order
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)
_PLANE = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")


def missing_required(el: Elements, header: SliceHeader, multiframe: bool) -> list[str]:
    """The required tags a bare data set lacks (or holds no valid value for; SOPClassUID must name an image
    storage class), in module order.

    ``header`` is what the usual header checks made of the file; its fields are ``None`` / empty where a value was
    absent or unparsable. The Image Plane tags of a multi-frame image are in its functional groups, which
    :func:`medseg.data.dicom.multiframe.expand_frames` checks.
    """
    bits_stored, high_bit, sign, photometric = header.pixel_format[1:]
    valid = {
        "SOPClassUID": is_image_class(header.sop_class_uid),
        "SOPInstanceUID": bool(header.sop_instance_uid),
        "SeriesInstanceUID": bool(header.series_uid),
        "Modality": bool(header.modality),
        "SamplesPerPixel": el.has("SamplesPerPixel"),
        "PhotometricInterpretation": bool(photometric),
        "Rows": bool(header.rows),
        "Columns": bool(header.columns),
        "BitsAllocated": bool(header.bits_allocated),
        "BitsStored": bits_stored is not None,
        "HighBit": high_bit is not None,
        "PixelRepresentation": sign is not None,
        "PixelSpacing": header.pixel_spacing is not None,
        "ImageOrientationPatient": header.orientation is not None,
        "ImagePositionPatient": header.position is not None,
    }
    names = _REQUIRED if multiframe else _REQUIRED + _PLANE
    return [name for name in names if not valid[name]]
