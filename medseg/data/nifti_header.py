"""The checks of a NIfTI header, made before any voxel is read: refuse what nibabel would "fix" or misread.

The raw header is checked before nibabel parses it (:func:`load_header`), because nibabel "fixes" some fields with
only a log message:

- ``sizeof_hdr`` must be 348 (NIfTI-1) or 540 (NIfTI-2) and the magic ``n+1`` / ``n+2`` (a ``.nii`` holds its
  voxels), else the file is not a (single-file) NIfTI (``UNREADABLE``); ``dim[0]`` must be 1..7 and ``pixdim`` of
  the spatial axes finite and non-zero (``INVALID_HEADER``);
- complex, RGB and unknown ``datatype`` codes are refused (``UNSUPPORTED_DTYPE``): dropping an imaginary part or
  reading colour as grey would be silently wrong;
- ``qform_code = sform_code = 0`` means the file carries no spatial information (``MISSING_GEOMETRY``): medseg
  does not invent an affine from ``pixdim``;
- more than 4 dimensions is ``WRONG_DIMENSIONS``.

The parsed header's transforms (:func:`check_transforms`): the qform and sform must agree when both are set
(``QFORM_SFORM_MISMATCH``), and the affine must be finite, non-singular and not sheared (``INVALID_AFFINE``; the
columns of a scanner grid are orthogonal within ``SHEAR_TOL``).

Scaling (:func:`voxel_scaling`): ``scl_slope`` 0 or NaN means "no scaling" (NIfTI standard; nibabel writes NaN when
unset); a finite slope with a non-finite ``scl_inter`` is refused (``INVALID_HEADER``).

Reading the voxels is :func:`medseg.data.nifti.read_nifti`'s job.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.data.quiet import quiet_logger
from medseg.errors import InputError, ReasonCode

__all__ = ["QFORM_SFORM_TOL_MM", "SHEAR_TOL", "check_transforms", "load_header", "voxel_scaling"]

QFORM_SFORM_TOL_MM = 1e-3
SHEAR_TOL = 1e-4
# NIfTI datatype codes medseg reads as scalar voxels (nibabel's names in the comments)
_SCALAR_CODES = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 1536}  # uint8 int16 int32 float32 float64 int8 ...
_NAMED_CODES = {1: "binary (1 bit)", 32: "complex64", 128: "RGB", 1792: "complex128", 2048: "complex256",
                2304: "RGBA"}


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


def load_header(path: Path) -> tuple[nib.Nifti1Image, tuple[float, float]]:
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


def check_transforms(img: nib.Nifti1Image, path: Path) -> np.ndarray:
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


def voxel_scaling(slope: float, inter: float, path: Path) -> tuple[float, float]:
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
