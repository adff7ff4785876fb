"""NIfTI reading that refuses bad files instead of returning a silently wrong volume.

nibabel parses the header; the voxel payload is read here so that it can be checked before and while it is read:

- a header whose voxel count cannot fit in the file (e.g. 2000^3 voxels in a few kB) is refused *before* any
  memory is allocated (``HEADER_SIZE_MISMATCH``);
- a truncated file, compressed or not, is detected (``TRUNCATED_FILE``) instead of being zero-filled;
- the qform and sform must agree when both are set (``QFORM_SFORM_MISMATCH``);
- NaN and infinite voxels are refused unless the caller allows them (``NAN_VOXELS``).

The raw header is checked before nibabel parses it, because nibabel "fixes" some fields with only a log message:

- ``sizeof_hdr`` must be 348 (NIfTI-1) or 540 (NIfTI-2) and the magic ``n+1`` / ``n+2`` (a ``.nii`` holds its
  voxels), else the file is not a (single-file) NIfTI (``UNREADABLE``); ``dim[0]`` must be 1..7 and ``pixdim`` of
  the spatial axes finite and non-zero (``INVALID_HEADER``);
- complex, RGB and unknown ``datatype`` codes are refused (``UNSUPPORTED_DTYPE``): dropping an imaginary part or
  reading colour as grey would be silently wrong;
- ``qform_code = sform_code = 0`` means the file carries no spatial information (``MISSING_GEOMETRY``): medseg
  does not invent an affine from ``pixdim``;
- the affine must be finite, non-singular and not sheared (``INVALID_AFFINE``; the columns of a scanner grid are
  orthogonal within ``SHEAR_TOL``);
- ``scl_slope`` 0 or NaN means "no scaling" (NIfTI standard; nibabel writes NaN when unset); a finite slope with a
  non-finite ``scl_inter``, or scaled values beyond ``MAX_PLAUSIBLE`` in magnitude (e.g. ``scl_slope`` 1e20), are
  refused (``INVALID_HEADER`` / ``INTENSITY_RANGE``);
- more than 4 dimensions is ``WRONG_DIMENSIONS``.

The payload of a ``.nii.gz`` is inflated straight into a preallocated buffer, so a read costs one copy.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from medseg.data.quiet import quiet_logger
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# deflate cannot compress better than ~1032:1; a header promising more bytes than that is lying.
MAX_DEFLATE_RATIO = 1032
QFORM_SFORM_TOL_MM = 1e-3
SHEAR_TOL = 1e-4
MAX_PLAUSIBLE = 1e12
_CHUNK = 1 << 22
# NIfTI datatype codes medseg reads as scalar voxels (nibabel's names in the comments)
_SCALAR_CODES = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 1536}  # uint8 int16 int32 float32 float64 int8 ...
_NAMED_CODES = {1: "binary (1 bit)", 32: "complex64", 128: "RGB", 1792: "complex128", 2048: "complex256",
                2304: "RGBA"}


def is_nifti(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


@dataclass
class NiftiVolume:
    """A checked NIfTI volume: ``array`` indexed (i, j, k[, t...]) and its RAS ``affine``."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path


def _raw_header(path: Path) -> bytes:
    """The first 540 bytes of the (decompressed) file, fewer when it is shorter."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read(540)
        with open(path, "rb") as fh:
            return fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(ReasonCode.TRUNCATED_FILE, path, f"cannot read the NIfTI header ({exc})") from exc


def _check_raw_header(path: Path) -> tuple[float, float]:
    """Refuse headers that nibabel would "fix" or misread (see the module docstring); return the raw
    (scl_slope, scl_inter), which nibabel hides from the loaded image's header."""
    raw = _raw_header(path)
    if len(raw) < 348:
        raise InputError(ReasonCode.TRUNCATED_FILE, path, f"file ends after {len(raw)} bytes, inside its header")
    for endian in "<>":
        sizeof_hdr = int(np.frombuffer(raw[:4], f"{endian}i4")[0])
        if sizeof_hdr in (348, 540):
            break
    else:
        raise InputError(
            ReasonCode.UNREADABLE,
            path,
            f"not a NIfTI file: sizeof_hdr is {int(np.frombuffer(raw[:4], '<i4')[0])}; a NIfTI-1 header has 348, "
            "NIfTI-2 540",
        )
    if sizeof_hdr == 540:
        if len(raw) < 540:
            raise InputError(ReasonCode.TRUNCATED_FILE, path, "file ends inside its NIfTI-2 header")
        hdr = np.frombuffer(raw[:540], nib.Nifti2Header.template_dtype.newbyteorder(endian))[0]
        magic_ok = bytes(hdr["magic"]).startswith(b"n+2")
    else:
        hdr = np.frombuffer(raw[:348], nib.Nifti1Header.template_dtype.newbyteorder(endian))[0]
        magic_ok = bytes(hdr["magic"]).rstrip(b"\0") == b"n+1"
    if not magic_ok:
        raise InputError(
            ReasonCode.UNREADABLE,
            path,
            f"not a single-file NIfTI: magic is {bytes(hdr['magic'])[:4]!r}, not 'n+1' / 'n+2'",
        )
    ndim = int(hdr["dim"][0])
    if not 1 <= ndim <= 7:
        raise InputError(ReasonCode.INVALID_HEADER, path, f"dim[0] is {ndim}; it must be 1..7")
    if ndim > 4:
        raise InputError(
            ReasonCode.WRONG_DIMENSIONS,
            path,
            f"{ndim}D image of shape {tuple(int(d) for d in hdr['dim'][1 : ndim + 1])}; medseg reads 2D, 3D "
            "and 4D (channels) images",
        )
    code = int(hdr["datatype"])
    if code not in _SCALAR_CODES:
        name = _NAMED_CODES.get(code, "unknown to NIfTI")
        raise InputError(
            ReasonCode.UNSUPPORTED_DTYPE, path, f"voxel datatype code {code} ({name}); medseg reads scalar voxels"
        )
    pixdim = [float(v) for v in hdr["pixdim"][1 : min(ndim, 3) + 1]]
    bad = [i + 1 for i, v in enumerate(pixdim) if not np.isfinite(v) or v == 0.0]
    if bad:
        raise InputError(
            ReasonCode.INVALID_HEADER,
            path,
            f"pixdim[{bad[0]}] is {pixdim[bad[0] - 1]}: the voxel size is unknown (nibabel would assume 1 mm)",
        )
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        raise InputError(
            ReasonCode.MISSING_GEOMETRY,
            path,
            "no spatial information (qform_code = sform_code = 0): where the voxels lie in the patient is "
            "unknown, and medseg does not invent an affine from pixdim",
        )
    return float(hdr["scl_slope"]), float(hdr["scl_inter"])


def _load_header(path: Path) -> tuple[nib.Nifti1Image, tuple[float, float]]:
    if not path.exists():
        raise InputError(ReasonCode.FILE_NOT_FOUND, path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputError(ReasonCode.EMPTY_FILE, path, "file is empty (0 bytes)")
    scaling = _check_raw_header(path)
    try:
        with quiet_logger("nibabel"):
            return nib.load(str(path)), scaling
    except Exception as exc:  # nibabel raises many types for broken headers
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        if isinstance(exc, EOFError | zlib.error) or "gzip" in reason.lower():
            raise InputError(ReasonCode.TRUNCATED_FILE, path, f"cannot read the NIfTI header ({reason})") from exc
        raise InputError(ReasonCode.UNREADABLE, path, f"not a readable NIfTI file ({reason})") from exc


def _check_transforms(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Return the RAS affine, refusing files whose qform and sform disagree."""
    hdr = img.header
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    if qcode > 0 and scode > 0:
        diff = np.abs(np.asarray(qform) - np.asarray(sform))
        # compare directions*spacing (mm per voxel) and origins (mm) on the same scale
        if float(diff.max()) > QFORM_SFORM_TOL_MM:
            raise InputError(
                ReasonCode.QFORM_SFORM_MISMATCH,
                path,
                f"qform and sform disagree by up to {float(diff.max()):.4g} mm; the world position of the voxels "
                "is ambiguous (fix the header, e.g. copy the intended one over the other)",
            )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(
            ReasonCode.INVALID_AFFINE,
            path,
            f"the voxel-to-world affine is singular or not finite: {np.round(affine[:3], 4).tolist()}",
        )
    unit = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.abs(unit.T @ unit - np.eye(3))
    if float(cosines.max()) > SHEAR_TOL:
        i, j = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
        raise InputError(
            ReasonCode.INVALID_AFFINE,
            path,
            f"the affine is sheared: voxel axes {i} and {j} are not orthogonal (cosine {cosines[i, j]:.3g}); "
            "a scanner grid has orthogonal axes (resample it explicitly if the shear is intended)",
        )
    return affine


def _expected_nbytes(hdr: nib.Nifti1Header) -> tuple[tuple[int, ...], np.dtype, int]:
    shape = tuple(int(s) for s in hdr.get_data_shape())
    dtype = np.dtype(hdr.get_data_dtype())
    return shape, dtype, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _read_plain(path: Path, offset: int, nbytes: int) -> bytearray:
    size = path.stat().st_size
    if size < offset + nbytes:
        raise InputError(
            ReasonCode.TRUNCATED_FILE,
            path,
            f"file has {size} bytes but the header needs {offset + nbytes} (offset {offset} + {nbytes} of voxels)",
        )
    buf = bytearray(nbytes)
    with open(path, "rb") as fh:
        fh.seek(offset)
        got = fh.readinto(buf)
    if got != nbytes:
        raise InputError(ReasonCode.TRUNCATED_FILE, path, f"read {got} of {nbytes} voxel bytes")
    return buf


def _read_gzip(path: Path, offset: int, nbytes: int) -> bytearray:
    """Inflate a (possibly multi-member) gzip file into a buffer, keeping bytes [offset, offset + nbytes)."""
    buf = bytearray(nbytes)
    view = memoryview(buf)
    filled = 0
    skip = offset
    pending = b""
    eof_ok = False
    with open(path, "rb") as fh:
        inflater = zlib.decompressobj(wbits=31)
        while filled < nbytes:
            data = pending or fh.read(_CHUNK)
            pending = b""
            if not data:
                break
            try:
                out = inflater.decompress(data, max(nbytes - filled + skip, 1))
            except zlib.error as exc:
                raise InputError(ReasonCode.TRUNCATED_FILE, path, f"corrupt gzip stream ({exc})") from exc
            pending = inflater.unconsumed_tail
            if skip:
                cut = min(skip, len(out))
                out = out[cut:]
                skip -= cut
            take = min(len(out), nbytes - filled)
            view[filled : filled + take] = out[:take]
            filled += take
            if inflater.eof:
                rest = inflater.unused_data
                if filled < nbytes and rest:  # next gzip member
                    inflater = zlib.decompressobj(wbits=31)
                    pending = rest
                else:
                    eof_ok = True
        if filled == nbytes and not inflater.eof:
            # the voxels are complete; the stream must still end properly (its CRC proves the payload is intact)
            tail = inflater.unconsumed_tail + fh.read()
            try:
                inflater.decompress(tail)
            except zlib.error as exc:
                raise InputError(ReasonCode.TRUNCATED_FILE, path, f"corrupt gzip stream ({exc})") from exc
            eof_ok = inflater.eof
    if filled < nbytes:
        raise InputError(
            ReasonCode.TRUNCATED_FILE,
            path,
            f"compressed data ends after {filled + offset - skip} bytes; the header needs {offset + nbytes}",
        )
    if not eof_ok:
        raise InputError(ReasonCode.TRUNCATED_FILE, path, "gzip stream is cut short (no end-of-stream marker)")
    return buf


def read_nifti(
    path: str | os.PathLike,
    *,
    allow_nan: bool = False,
    max_bytes: int | None = None,
) -> NiftiVolume:
    """Read and check a NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Args:
        path: the file.
        allow_nan: accept NaN voxels (refused by default: they poison normalization and metrics).
        max_bytes: refuse volumes whose voxel payload is larger than this (``None``: no limit other than the file).

    Returns:
        the scaled voxel array (float32 when the header has a scale, else the stored dtype) and RAS affine.

    Raises:
        InputError: with the reason code and the file.
    """
    path = Path(path)
    img, (scl_slope, scl_inter) = _load_header(path)
    hdr = img.header
    affine = _check_transforms(img, path)
    shape, dtype, nbytes = _expected_nbytes(hdr)
    if any(s <= 0 for s in shape):
        raise InputError(ReasonCode.WRONG_DIMENSIONS, path, f"header declares an empty shape {shape}")
    offset = int(img.dataobj.offset)  # the header reads 0 when nibabel computes it
    compressed = path.name.lower().endswith(".gz")
    on_disk = path.stat().st_size
    limit = (on_disk * MAX_DEFLATE_RATIO) if compressed else on_disk
    if not compressed and limit < offset + nbytes <= 2 * limit:
        raise InputError(
            ReasonCode.TRUNCATED_FILE,
            path,
            f"file has {on_disk} bytes but the header needs {offset + nbytes} (offset {offset} + {nbytes} of voxels)",
        )
    if offset + nbytes > limit:
        raise InputError(
            ReasonCode.HEADER_SIZE_MISMATCH,
            path,
            f"header declares shape {shape} of {dtype} ({nbytes / 2**20:.1f} MiB) but the file has only "
            f"{on_disk} bytes{' compressed' if compressed else ''}; refused before allocating memory",
        )
    if max_bytes is not None and nbytes > max_bytes:
        raise InputError(
            ReasonCode.HEADER_SIZE_MISMATCH, path, f"volume of {nbytes / 2**20:.1f} MiB exceeds the limit of {max_bytes / 2**20:.1f} MiB"
        )
    raw = _read_gzip(path, offset, nbytes) if compressed else _read_plain(path, offset, nbytes)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F")
    slope, inter = _scaling(scl_slope, scl_inter, path)
    if slope != 1.0 or inter != 0.0:
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(np.float32) * np.float32(slope) + np.float32(inter)
        finite = array[np.isfinite(array)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        if finite.size < array.size or peak > MAX_PLAUSIBLE:
            raise InputError(
                ReasonCode.INTENSITY_RANGE,
                path,
                f"scl_slope {slope:.6g} / scl_inter {inter:.6g} scale the voxels to "
                f"{'non-finite values' if finite.size < array.size else f'magnitudes up to {peak:.3g}'}; "
                f"no image quantity exceeds {MAX_PLAUSIBLE:.0e}",
            )
    if not allow_nan and array.dtype.kind == "f":
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        if n_nan or n_inf:
            what = "; ".join(
                f"{n} of {array.size} voxels are {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n
            )
            raise InputError(ReasonCode.NAN_VOXELS, path, what)
    return NiftiVolume(array=array, affine=affine, header=hdr, path=path)


def _scaling(slope: float, inter: float, path: Path) -> tuple[float, float]:
    """(slope, intercept) from scl_slope / scl_inter: a slope of 0 or NaN means no scaling (1, 0)."""
    if slope == 0.0 or np.isnan(slope):
        return 1.0, 0.0
    if not np.isfinite(slope) or not np.isfinite(inter):
        raise InputError(
            ReasonCode.INVALID_HEADER,
            path,
            f"scl_slope {slope} / scl_inter {inter}: a scaling with a non-finite value is not usable",
        )
    return slope, inter


class NiftiReader(ImageReader):
    """MONAI reader over :func:`read_nifti`: same metadata keys as MONAI's ``NibabelReader``, plus the checks.

    Args:
        allow_nan: accept NaN voxels.
        max_bytes: refuse payloads larger than this.
    """

    def __init__(self, allow_nan: bool = False, max_bytes: int | None = None) -> None:
        super().__init__()
        self.allow_nan = allow_nan
        self.max_bytes = max_bytes

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        names = filename if isinstance(filename, list | tuple) else [filename]
        return all(is_nifti(n) for n in names)

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> list[NiftiVolume] | NiftiVolume:
        names = list(data) if isinstance(data, list | tuple) else [data]
        vols = [read_nifti(n, allow_nan=self.allow_nan, max_bytes=self.max_bytes) for n in names]
        return vols if len(vols) > 1 else vols[0]

    def get_data(self, img: NiftiVolume | list[NiftiVolume]) -> tuple[np.ndarray, dict]:
        vols = img if isinstance(img, list) else [img]
        arrays = [v.array for v in vols]
        first = vols[0]
        spatial_rank = min(first.array.ndim, 3)
        meta: dict = {
            MetaKeys.AFFINE: first.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: first.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.array.shape[:spatial_rank]),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "pixdim": np.asarray(first.header["pixdim"], dtype=np.float64),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if first.array.ndim <= 3 else -1,
        }
        if len(vols) > 1:
            for v in vols[1:]:
                if v.array.shape != first.array.shape:
                    raise InputError(
                        ReasonCode.CHANNEL_GEOMETRY_MISMATCH,
                        v.path,
                        f"shape {v.array.shape} differs from {first.path.name} {first.array.shape}",
                    )
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays, axis=0), meta
        return arrays[0], meta
