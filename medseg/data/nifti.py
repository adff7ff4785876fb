"""NIfTI reading that refuses bad files instead of returning a silently wrong volume.

The header is checked first (:mod:`medseg.data.nifti_header`: raw fields, datatype, geometry, transforms, scaling);
the voxel payload is then read here so that it can be checked before and while it is read:

- a header whose voxel count cannot fit in the file (e.g. 2000^3 voxels in a few kB) is refused *before* any
  memory is allocated (``HEADER_SIZE_MISMATCH``);
- a truncated file, compressed or not, is detected (``TRUNCATED_FILE``) instead of being zero-filled;
- scaled values beyond ``MAX_PLAUSIBLE`` in magnitude (e.g. ``scl_slope`` 1e20) are refused (``INTENSITY_RANGE``);
- NaN and infinite voxels are refused unless the caller allows them (``NAN_VOXELS``).

The payload of a ``.nii.gz`` is inflated straight into a preallocated buffer, so a read costs one copy.
:class:`NiftiReader` serves :func:`read_nifti` to MONAI's ``LoadImage``.
"""

from __future__ import annotations

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

from medseg.data.nifti_header import check_transforms, load_header, voxel_scaling
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# deflate cannot compress better than ~1032:1; a header promising more bytes than that is lying.
MAX_DEFLATE_RATIO = 1032
MAX_PLAUSIBLE = 1e12
_CHUNK = 1 << 22


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
    img, (scl_slope, scl_inter) = load_header(path)
    hdr = img.header
    affine = check_transforms(img, path)
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
    slope, inter = voxel_scaling(scl_slope, scl_inter, path)
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
