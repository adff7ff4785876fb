"""Read the header of one DICOM file (never its pixels) and classify it: usable image slice or skipped file.

``read_slice_header`` opens the file once, lets pydicom parse up to the Pixel Data element
(``stop_before_pixels=True``; ``force`` only for a bare data set, below) and then reads the Pixel Data element's own
tag and length. This gives, without touching the pixels:

* the byte offset of the pixel values, which the fast reader uses to take them with one ``readinto``;
* truncation checks. pydicom silently returns a partial dataset for a file cut inside its header (a value shorter
  than its declared length, or the file ending between elements), so the header is checked element by element
  against the file size; pixel data shorter than ``Rows * Columns * SamplesPerPixel * BitsAllocated / 8 * frames``
  (in the element's length or in the file) is flagged as ``TRUNCATED_PIXEL_DATA``.

Enhanced multi-frame images (Enhanced / Legacy Converted Enhanced CT, MR, PET, and any multi-frame image with
functional groups) become one *virtual* :class:`SliceHeader` per frame (``frame`` = 0-based frame index), with the
frame's geometry and rescale taken from the functional groups (:mod:`medseg.data.dicom.multiframe`); only these
files' functional groups are read in the same pass as the other elements. The single-frame path is unchanged.

A file without the Part 10 preamble and 'DICM' marker is read only when its first bytes look like a DICOM data set
and it passes every check here plus :func:`medseg.data.dicom.preamble.missing_required` (see that module).

The raw element access lives in :mod:`medseg.data.dicom.elements`, the pixel-value checks (rescale, pixel format,
padding) in :mod:`medseg.data.dicom.values`.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import warnings
from pathlib import Path

import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from medseg.data.dicom.elements import (
    FLOAT_PIXEL_DATA,
    PIXEL_DATA,
    TAG_LIST,
    TAGS,
    UNDEFINED_LENGTH,
    Elements,
    pixel_element,
    quiet_pydicom,
)
from medseg.data.dicom.multiframe import expand_frames
from medseg.data.dicom.preamble import (
    BARE_DETAIL,
    HEAD_BYTES,
    Head,
    cut_preamble,
    encoding_syntax,
    missing_required,
    sniff,
)
from medseg.data.dicom.records import (
    SkippedFile,
    SliceHeader,
    is_enhanced_class,
    is_image_class,
    relative_name,
    sop_class_name,
)
from medseg.data.dicom.values import padding_value, pixel_format, rescale
from medseg.errors import Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["read_image_headers", "read_slice_header"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_DICOMDIR_DETAIL = "DICOMDIR (media directory index), not an image; skipped"
_NOT_DICOM_DETAIL = "not a DICOM file (no 'DICM' marker after the preamble)"


def _problem(code: ReasonCode, path: Path, root: Path, detail: str, series_uid: str = "") -> SkippedFile:
    return SkippedFile(Problem(code, relative_name(path, root), detail), series_uid)


def _complete_series_uid(elements: Elements, size: int) -> str:
    """SeriesInstanceUID of a damaged file, or "" when that element itself is missing or cut."""
    elem = elements.raw.get(TAGS["SeriesInstanceUID"])
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
    if size <= 132 and cut_preamble(path):  # a DICOM file cut inside its preamble: it may be a lost slice
        return _problem(ReasonCode.UNREADABLE, path, root, f"file of {size} bytes: a DICOM preamble cut short")
    if path.name.upper() == "DICOMDIR":
        return _problem(ReasonCode.NO_PIXEL_DATA, path, root, _DICOMDIR_DETAIL)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings(), quiet_pydicom():
            warnings.simplefilter("ignore")
            kind, why = sniff(fh.read(HEAD_BYTES))
            if kind is Head.DAMAGED_MARKER:  # may be a slice beside it: UNREADABLE refuses that series
                return _problem(ReasonCode.UNREADABLE, path, root, why)
            if kind is Head.OTHER:
                return _problem(ReasonCode.NOT_DICOM, path, root, _NOT_DICOM_DETAIL)
            fh.seek(0)
            bare = kind is Head.BARE
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=bare, specific_tags=TAG_LIST)
            except InvalidDicomError:
                return _problem(ReasonCode.NOT_DICOM, path, root, _NOT_DICOM_DETAIL)
            except (EOFError, struct.error, BytesLengthException) as exc:
                return _problem(ReasonCode.TRUNCATED_HEADER, path, root, f"DICOM header ends early: {exc}")
            except Exception as exc:  # pydicom raises many types for corrupt headers
                return _problem(ReasonCode.UNREADABLE, path, root, f"cannot parse DICOM header: {exc}")
            # a bare data set without file meta: the transfer syntax of the encoding pydicom detected
            derived_syntax = bare and not ds.file_meta.get("TransferSyntaxUID")
            if derived_syntax:
                ds.file_meta.TransferSyntaxUID = encoding_syntax(ds)
            elements = Elements(ds)
            # skipped (non-requested) elements are seeked over: a position past the end means the file ended in one
            header_end = max(elements.end(), Elements(ds.file_meta).end(), fh.tell())
            if header_end > size:
                detail = (
                    f"file is cut inside its header: an element needs {header_end} bytes, the file has {size}"
                )
                return _problem(
                    ReasonCode.TRUNCATED_HEADER, path, root, detail, _complete_series_uid(elements, size)
                )
            tag, length, offset = pixel_element(fh, ds, size)
            result = _classify(elements, path, root, size, tag, length, offset)
            if bare and not isinstance(result, SkippedFile):
                result = _check_bare(elements, result, root, size, length, derived_syntax)
    except OSError as exc:
        return _problem(ReasonCode.UNREADABLE, path, root, f"cannot read file: {exc}")
    if isinstance(result, SkippedFile):
        return result
    header, frames = result
    if frames is None:
        return [header]
    return expand_frames(header, frames, root, ds)


def _check_bare(
    el: Elements,
    result: tuple[SliceHeader, int | None],
    root: Path,
    size: int,
    length: int,
    derived_syntax: bool,
) -> tuple[SliceHeader, int | None] | SkippedFile:
    """A bare data set (see :mod:`medseg.data.dicom.preamble`) that passed :func:`_classify`: kept as a slice only
    when every required tag is there and its pixel data's encoding is known."""
    header, frames = result
    series_uid = _complete_series_uid(el, size)
    if derived_syntax and length == UNDEFINED_LENGTH:
        detail = f"{BARE_DETAIL}: encapsulated (compressed) pixel data, and no file meta names the codec"
        return _problem(ReasonCode.UNREADABLE, header.path, root, detail, series_uid)
    missing = missing_required(el, header, multiframe=frames is not None)
    if missing:
        detail = f"{BARE_DETAIL} lacks required tag(s) {', '.join(missing)}; not read"
        return _problem(ReasonCode.UNREADABLE, header.path, root, detail, series_uid)
    return dataclasses.replace(header, part10=False), frames


def _classify(
    el: Elements, path: Path, root: Path, size: int, tag: int | None, length: int, offset: int | None
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
        if is_image_class(sop_class) or el.has("Rows") or not el.has("SeriesInstanceUID"):
            return _problem(
                ReasonCode.TRUNCATED_HEADER,
                path,
                root,
                "file ends before its pixel data (header cut short)",
                _complete_series_uid(el, size),
            )
        name = sop_class_name(sop_class)
        return _problem(ReasonCode.NO_PIXEL_DATA, path, root, f"non-image object ({name}); skipped")
    if tag is not None and tag != PIXEL_DATA and tag not in FLOAT_PIXEL_DATA:
        return _problem(
            ReasonCode.UNREADABLE,
            path,
            root,
            f"header parsing stopped at unexpected element {tag:08X}",
            series_uid,
        )
    if tag in FLOAT_PIXEL_DATA:
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
    if multiframe and not is_image_class(sop_class):
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
    slope, intercept, has_rescale, rescale_problem = rescale(el)
    fmt, format_problem = pixel_format(el, bits)
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
        bits_stored=fmt[1] if format_problem is None and fmt[1] else bits,
        pixel_representation=fmt[3] or 0,
        transfer_syntax=transfer_syntax,
        pixel_offset=offset,
        pixel_length=length,
        pixel_problem=pixel_problem,
        pixel_format=fmt,
        has_rescale=has_rescale,
        header_problem=header_problem,
        pixel_padding=padding_value(el),
    )
    return header, (frames if multiframe else None)
