"""Read one DICOM stack into a float32 volume (i, j, k) with its RAS affine.

Fast path: for uncompressed little-endian slices the scan already knows where each file's pixel values start, so
each slice is one ``seek`` + ``readinto`` into a reusable buffer, followed by the rescale written straight into a
preallocated ``(k, j, i)`` float32 array (the returned volume is its transposed view, Fortran-ordered like
nibabel's). A small thread pool overlaps file reads (I/O and numpy release the GIL). Compressed or big-endian
transfer syntaxes fall back to pydicom's ``pixel_array``.

Multi-frame files: frame ``k`` of an uncompressed file is read the same way, ``k`` frames after the start of the
pixel data; a compressed (or big-endian, or 1-bit) multi-frame file is decoded once by pydicom and its frames are
taken from that array.

Values: ``volume = stored * RescaleSlope + RescaleIntercept`` per slice, computed in float64 and rounded once to
float32. When BitsStored < BitsAllocated the unused high bits are masked (unsigned) or sign-extended (signed).

Plausibility (``INTENSITY_RANGE``, naming the slice): CT values must lie in ``CT_HU_RANGE`` = [-8192, 32767] HU
after rescale. Air is -1000 HU and scanners pad outside the field of view with values down to about -3024 HU (GE:
-2000 stored with intercept -1024; Siemens' extended scale uses intercept -8192); above 32767 HU nothing can be
represented in signed 16 bits, and such values are the mark of signed values read as unsigned (-1024 HU stored in
two's complement reads as 64512 when PixelRepresentation says 0). Values equal to the slice's PixelPaddingValue
are exempt, and so is one constant value below the range (an untagged padding value). Other modalities have no
fixed scale and are not checked.

Files without the Part 10 preamble (bare data sets, see :mod:`medseg.data.dicom.preamble`) are read like the others:
the fast path needs only the pixel offset, the pydicom path reads them with ``force``.

Decoder errors (a JPEG 2000 slice with garbage fragments, ...) are reported as one ``UNREADABLE`` error naming the
slice; pydicom's own error log records (with their tracebacks) are held back while medseg decodes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medseg.data.dicom.elements import UNDEFINED_LENGTH, quiet_pydicom
from medseg.data.dicom.records import SliceHeader, relative_name
from medseg.data.dicom.scan import scan_dicom_tree
from medseg.data.dicom.select import SeriesRule, select_series
from medseg.data.dicom.series import DicomScan, SeriesInfo, describe_problems
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["load_dicom_series", "read_dicom", "series_meta"]

_FAST_SYNTAXES = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}
_MAX_WORKERS = 4
CT_HU_RANGE = (-8192.0, 32767.0)


def _stored_dtype(h: SliceHeader) -> np.dtype | None:
    if h.bits_allocated not in (8, 16, 32):
        return None
    kind = "i" if h.pixel_representation == 1 else "u"
    return np.dtype(f"<{kind}{h.bits_allocated // 8}")


def _fix_unused_bits(raw: np.ndarray, h: SliceHeader) -> np.ndarray:
    unused = h.bits_allocated - h.bits_stored
    if unused <= 0:
        return raw
    if h.pixel_representation == 1:  # sign-extend from bit BitsStored-1
        return (raw << unused) >> unused
    return raw & ((1 << h.bits_stored) - 1)


def _is_fast(h: SliceHeader) -> bool:
    return (
        h.transfer_syntax in _FAST_SYNTAXES
        and h.pixel_offset is not None
        and h.pixel_length != UNDEFINED_LENGTH
        and _stored_dtype(h) is not None
    )


class _SliceReader:
    """Reads slices into ``out[k]``; one scratch buffer per worker thread."""

    def __init__(self, out: np.ndarray, root: Path) -> None:
        self.out = out
        self.root = root
        self.local = threading.local()
        # multi-frame files decoded by pydicom: path -> (frames, rows, columns)
        self.decoded: dict[Path, np.ndarray] = {}

    def _raw(self, dtype: np.dtype, n: int) -> np.ndarray:
        raw = getattr(self.local, "raw", None)
        if raw is None or raw.dtype != dtype or raw.size != n:
            self.local.raw = raw = np.empty(n, dtype=dtype)
        return raw

    def _f64(self, n: int) -> np.ndarray:
        buf = getattr(self.local, "f64", None)
        if buf is None or buf.size != n:
            self.local.f64 = buf = np.empty(n, dtype=np.float64)
        return buf

    def _error(self, h: SliceHeader, code: ReasonCode, detail: str) -> InputError:
        return InputError(code, relative_name(h.path, self.root), detail)

    def _read_fast(self, h: SliceHeader) -> np.ndarray:
        dtype = _stored_dtype(h)
        n = h.rows * h.columns
        raw = self._raw(dtype, n)
        offset = h.pixel_offset + (h.frame or 0) * raw.nbytes
        try:
            with open(h.path, "rb", buffering=0) as fh:
                fh.seek(offset)
                got = fh.readinto(memoryview(raw).cast("B"))
        except OSError as exc:
            raise self._error(h, ReasonCode.UNREADABLE, f"cannot read pixel data: {exc}") from exc
        if got != raw.nbytes:
            raise self._error(
                h,
                ReasonCode.TRUNCATED_PIXEL_DATA,
                f"pixel data is cut short: read {got} of {raw.nbytes} bytes",
            )
        return _fix_unused_bits(raw, h)

    def decode_multiframe(self, h: SliceHeader, frames: int) -> None:
        """Decode all frames of ``h``'s multi-frame file once (before the slices are read)."""
        try:
            pixels = _dataset(h).pixel_array
        except Exception as exc:  # decoders raise many types
            raise self._error(h, ReasonCode.UNREADABLE, f"cannot decode pixel data: {_one_line(exc)}") from exc
        if pixels.ndim == 2 and frames == 1:
            pixels = pixels[None]
        if pixels.shape[1:] != (h.rows, h.columns) or pixels.shape[0] < frames:
            raise self._error(
                h,
                ReasonCode.WRONG_DIMENSIONS,
                f"decoded pixels have shape {pixels.shape}, header says at least {frames} frames of "
                f"{(h.rows, h.columns)}",
            )
        self.decoded[h.path] = pixels

    def _read_pydicom(self, h: SliceHeader) -> np.ndarray:
        if h.frame is not None:
            return self.decoded[h.path][h.frame].reshape(-1)
        try:
            pixels = _dataset(h).pixel_array
        except Exception as exc:  # decoders raise many types
            raise self._error(h, ReasonCode.UNREADABLE, f"cannot decode pixel data: {_one_line(exc)}") from exc
        if pixels.shape != (h.rows, h.columns):
            raise self._error(
                h,
                ReasonCode.WRONG_DIMENSIONS,
                f"decoded pixels have shape {pixels.shape}, header says {(h.rows, h.columns)}",
            )
        return pixels.reshape(-1)

    def __call__(self, item: tuple[int, SliceHeader]) -> None:
        k, h = item
        values = self._read_fast(h) if _is_fast(h) else self._read_pydicom(h)
        target = self.out[k].reshape(-1)
        if h.rescale_slope == 1.0 and float(h.rescale_intercept).is_integer() and values.dtype.itemsize <= 2:
            np.add(values, np.float32(h.rescale_intercept), out=target, casting="unsafe")  # exact in float32
        else:
            f64 = self._f64(values.size)
            np.multiply(values, h.rescale_slope, out=f64, casting="unsafe")
            f64 += h.rescale_intercept
            target[...] = f64
        if h.modality == "CT":
            self._check_ct_range(h, target)

    def _check_ct_range(self, h: SliceHeader, values: np.ndarray) -> None:
        lo_ok, hi_ok = CT_HU_RANGE
        lo, hi = float(values.min()), float(values.max())
        if lo >= lo_ok and hi <= hi_ok:
            return
        if h.pixel_padding is not None:
            values = values[values != np.float32(h.pixel_padding * h.rescale_slope + h.rescale_intercept)]
            if values.size == 0:
                return
            lo, hi = float(values.min()), float(values.max())
        if lo < lo_ok and hi <= hi_ok and np.all(values[values < lo_ok] == lo):
            return  # one constant value below the range: padding without a PixelPaddingValue tag
        if hi > hi_ok:
            stored = (hi - h.rescale_intercept) / h.rescale_slope
            if h.pixel_representation == 0 and stored >= 2 ** (h.bits_stored - 1):
                wrapped = stored - 2**h.bits_stored
                detail = (
                    f"CT values up to {hi:.6g} HU (above {hi_ok:.0f}): signed values stored as unsigned? "
                    f"PixelRepresentation is 0 but stored value {stored:.0f} would be {wrapped:.0f} as a signed "
                    f"{h.bits_stored}-bit number (-1024 HU reads as 64512)"
                )
            else:
                detail = f"CT values up to {hi:.6g} HU, above the plausible {hi_ok:.0f} HU"
        else:
            detail = f"CT values down to {lo:.6g} HU, below the plausible {lo_ok:.0f} HU"
        raise self._error(h, ReasonCode.INTENSITY_RANGE, detail)


def _dataset(h: SliceHeader) -> pydicom.Dataset:
    """The slice's file as pydicom reads it for decoding. A bare data set (no preamble / 'DICM', accepted by the scan
    only when its required tags validate) is read with ``force`` and given the transfer syntax the scan found."""
    ds = pydicom.dcmread(h.path, force=not h.part10)
    if not h.part10 and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = h.transfer_syntax
    return ds


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (decoders list each plugin's failure on its own line)."""
    return " ".join(str(exc).split())


def series_meta(series: SeriesInfo) -> dict[str, Any]:
    """Metadata of a stack without patient identifiers (no name, ID, birth date, accession number)."""
    return {
        "modality": series.modality,
        "series_uid": series.series_uid,
        "stack_id": series.stack_id,
        "study_uid": series.study_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "series_description": series.series_description,
        "series_number": series.series_number,
        "image_type": list(series.image_type),
        "sop_instance_uids": [h.sop_instance_uid for h in series.slices],
        "spacing": tuple(float(v) for v in series.spacing) if series.spacing else None,
        "shape": tuple(int(v) for v in series.shape),
        "orientation": series.orientation,
    }


def load_dicom_series(
    series: SeriesInfo, *, workers: int | None = None, min_slices: int = 1
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a scanned stack.

    Args:
        series: a :class:`SeriesInfo` from a scan.
        workers: reader threads (default ``min(4, cpu count)``).
        min_slices: refuse stacks with fewer slices (``NOT_VOLUME``); a 3D read asks for
            :data:`medseg.data.dicom.geometry.MIN_VOLUME_SLICES`.

    Returns:
        ``(volume, affine, meta)``: float32 volume indexed (i, j, k) after RescaleSlope/Intercept, the 4x4 RAS affine,
        and :func:`series_meta`.

    Raises:
        InputError: the first of ``series.problems`` (geometry or integrity), or a read error, with the file path
            relative to the scan root.
    """
    if series.problems:
        raise series.problems[0].to_error()
    if series.affine is None:
        raise InputError(ReasonCode.MISSING_GEOMETRY, series.stack_id, "series has no usable geometry")
    if series.n_slices < min_slices:
        raise InputError(
            ReasonCode.NOT_VOLUME,
            relative_name(series.files[0], series.root),
            f"the series has {series.n_slices} slice(s); a 3D volume needs at least {min_slices} (a single image "
            "or a pair has no verifiable slice spacing)",
        )
    n, rows, cols = series.n_slices, series.rows, series.columns
    out = np.empty((n, rows, cols), dtype=np.float32)
    reader = _SliceReader(out, series.root)
    slow_frames: dict[Path, tuple[SliceHeader, int]] = {}
    for h in series.slices:
        if h.frame is not None and not _is_fast(h):
            first, count = slow_frames.get(h.path, (h, 0))
            slow_frames[h.path] = (first, max(count, h.frame + 1))
    workers = workers or min(_MAX_WORKERS, os.cpu_count() or 1)
    items = list(enumerate(series.slices))
    with quiet_pydicom():
        for h, frames in slow_frames.values():
            reader.decode_multiframe(h, frames)
        if workers > 1 and n > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medseg-dicom") as pool:
                list(pool.map(reader, items))
        else:
            for item in items:
                reader(item)
    volume = out.transpose(2, 1, 0)  # (k, j, i) -> (i, j, k) view, no copy
    return volume, series.affine.copy(), series_meta(series)


def _series_of_file(scan: DicomScan, file: Path) -> SeriesInfo:
    target = file.absolute()
    for s in scan.series:
        if target in s.files:
            return s
    for p in scan.problems:
        if p.path == relative_name(target, scan.root):
            raise p.to_error()
    raise InputError(ReasonCode.NO_SERIES, str(file), "file is not part of any DICOM image series")


def read_dicom(
    path: str | Path, rule: SeriesRule | Mapping[str, Any] | None = None, *, min_slices: int = 1
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one DICOM series from a series folder, a study tree, or one of the series' files.

    Args:
        path: folder to scan (the rule picks the series when it holds several) or a single slice file (its folder
            is scanned and that file's stack is read; ``rule`` is ignored).
        rule: :class:`SeriesRule` or a mapping for :meth:`SeriesRule.from_dict`.
        min_slices: refuse a series with fewer slices (``NOT_VOLUME``).

    Returns:
        ``(volume, affine, meta)`` as :func:`load_dicom_series`.
    """
    p = Path(path)
    if p.is_file():
        scan = scan_dicom_tree(p.parent)
        series = _series_of_file(scan, p)
    elif p.is_dir():
        scan = scan_dicom_tree(p)
        series = select_series(scan, rule, root=p)
    else:
        raise InputError(ReasonCode.FILE_NOT_FOUND, str(p), "DICOM path does not exist")
    result = load_dicom_series(series, min_slices=min_slices)
    if scan.problems:
        # folder names often carry patient names: the log says what was skipped, not where (DEBUG has the paths)
        codes = sorted({pr.code.value for pr in scan.problems})
        logger.warning("DICOM read skipped %d file(s): %s", len(scan.problems), ", ".join(codes))
        logger.debug("skipped files: %s", describe_problems(scan.problems))
    return result
