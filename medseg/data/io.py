"""Reading any supported volume as a channel-first MONAI MetaTensor, and writing NIfTI results atomically.

``load_volume`` picks the reader from the path (NIfTI, NRRD/MetaImage, DICOM file tree) and returns a MetaTensor
of shape (C, *spatial) whose ``affine`` maps voxel indices to RAS world millimetres. ``save_label`` and
``save_image`` write NIfTI files with exactly the given affine and shape, via a temp file and a rename.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.utils import MetaKeys

from medseg.atomic import atomic_path
from medseg.data.nifti import NIFTI_SUFFIXES, NiftiReader, is_nifti
from medseg.data.sitk_reader import SITK_SUFFIXES, SimpleITKReader, is_sitk_volume
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), or a folder of DICOM files"


VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES)


def is_volume_file(path: str | os.PathLike) -> bool:
    """True for the volume formats medseg reads from a single file (NIfTI, NRRD, MetaImage)."""
    return is_nifti(path) or is_sitk_volume(path)


def volume_stem(name: str) -> str:
    """``"CT.nii.gz"`` -> ``"CT"``: the file name without its volume suffix (unchanged when it has none)."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def reader_for(
    path: str | os.PathLike, *, series_rule: Any = None, allow_nan: bool = False, min_slices: int = 1
) -> ImageReader:
    """Choose the MONAI reader for ``path``; a folder (or a single .dcm file's folder) is read as DICOM."""
    p = Path(path)
    if p.is_dir():
        from medseg.data.dicom import DicomSeriesReader

        return DicomSeriesReader(rule=series_rule, min_slices=min_slices)
    if not p.exists():
        raise InputError(ReasonCode.FILE_NOT_FOUND, p, "no such file or folder")
    if is_nifti(p):
        return NiftiReader(allow_nan=allow_nan)
    if is_sitk_volume(p):
        return SimpleITKReader(allow_nan=allow_nan)
    raise InputError(ReasonCode.UNSUPPORTED_FORMAT, p, f"unsupported file type; medseg reads {SUPPORTED}")


def load_volume(
    path: str | os.PathLike,
    *,
    series_rule: Any = None,
    spatial_dims: int = 3,
    allow_channels: bool = False,
    allow_nan: bool = False,
    dtype: np.dtype | type | None = np.float32,
    min_slices: int | None = None,
) -> MetaTensor:
    """Load a volume as a channel-first MetaTensor with a RAS affine.

    Args:
        path: a NIfTI/NRRD/MetaImage file or a DICOM folder (a series or a study tree).
        series_rule: a :class:`medseg.data.dicom.SeriesRule` choosing the DICOM series when a tree has several.
        spatial_dims: 3 for volumes; 2 for images (a trailing singleton third axis is dropped).
        allow_channels: accept a 4D file (its last axis becomes channels); otherwise it is refused.
        allow_nan: accept NaN voxels.
        dtype: output dtype (``None`` keeps the stored dtype, e.g. for label maps).
        min_slices: a DICOM series with fewer slices is refused (``NOT_VOLUME``); default
            :data:`medseg.data.dicom.geometry.MIN_VOLUME_SLICES` for a 3D read, 1 for 2D.

    Raises:
        InputError: unreadable, truncated or inconsistent input, with its reason code and file.
    """
    if min_slices is None:
        from medseg.data.dicom.geometry import MIN_VOLUME_SLICES

        min_slices = MIN_VOLUME_SLICES if spatial_dims == 3 else 1
    reader = reader_for(path, series_rule=series_rule, allow_nan=allow_nan, min_slices=min_slices)
    img = _to_metatensor(*reader.get_data(reader.read(str(path))), dtype=dtype)
    spatial = tuple(img.shape[1:])
    if img.shape[0] != 1 and not allow_channels:
        raise InputError(
            ReasonCode.WRONG_DIMENSIONS,
            path,
            f"{len(spatial) + 1}D volume of shape {spatial + (img.shape[0],)} where a {spatial_dims}D volume is expected",
        )
    if spatial_dims == 2 and len(spatial) == 3 and spatial[2] == 1:
        img = img[..., 0]
        img.affine = _drop_axis(img.affine)
        spatial = spatial[:2]
    elif spatial_dims == 2 and len(spatial) == 2 and tuple(img.affine.shape) == (4, 4):
        img.affine = _drop_axis(img.affine)  # a 2D NIfTI still carries a 4x4 affine
    if len(spatial) != spatial_dims:
        raise InputError(
            ReasonCode.WRONG_DIMENSIONS, path, f"{len(spatial)}D volume of shape {spatial}; expected {spatial_dims}D"
        )
    img.meta["filename_or_obj"] = str(path)
    return img


def _to_metatensor(array: np.ndarray, meta: dict, dtype: np.dtype | type | None) -> MetaTensor:
    """What ``monai.transforms.LoadImage(ensure_channel_first=True)`` returns, without its C-order copy.

    NIfTI and DICOM volumes arrive as Fortran-ordered (i, j, k) arrays; they are wrapped as strided tensors (as
    nibabel returns them) instead of being transposed in memory. The channel axis is put first as a view.
    """
    if dtype is not None:
        array = array.astype(dtype, copy=False)  # one pass, memory order kept
    if any(st < 0 for st in array.strides) or not array.flags.writeable:
        array = np.ascontiguousarray(array)
    tensor = torch.from_numpy(array)
    channel_dim = meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM, float("nan"))
    if isinstance(channel_dim, float) and np.isnan(channel_dim):
        tensor = tensor.unsqueeze(0)
    elif int(channel_dim) != 0:
        tensor = tensor.movedim(int(channel_dim), 0)
    meta = dict(meta)
    meta[MetaKeys.AFFINE] = torch.as_tensor(np.asarray(meta[MetaKeys.AFFINE], dtype=np.float64))
    meta[MetaKeys.ORIGINAL_AFFINE] = torch.as_tensor(np.asarray(meta[MetaKeys.ORIGINAL_AFFINE], dtype=np.float64))
    return MetaTensor(tensor, meta=meta)


def _drop_axis(affine: torch.Tensor) -> torch.Tensor:
    """Affine of a 2D slice (i, j) taken from a 3D affine at k = 0 (world z kept in the translation)."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    out = torch.eye(3, dtype=torch.float64)
    out[:2, :2] = a[:2, :2]
    out[:2, 2] = a[:2, 3]
    return out


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _affine_4x4(affine: Any) -> np.ndarray:
    a = _as_numpy(affine).astype(np.float64)
    if a.shape == (4, 4):
        return a
    if a.shape == (3, 3):  # 2D affine -> 3D with unit third axis
        out = np.eye(4)
        out[:2, :2] = a[:2, :2]
        out[:2, 3] = a[:2, 2]
        return out
    raise ValueError(f"affine must be 4x4 (3D) or 3x3 (2D), got shape {a.shape}")


def label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype that holds every label value."""
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(array.min()), int(array.max())
    for dt in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _spatial_array(data: Any) -> np.ndarray:
    arr = _as_numpy(data)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:  # drop a channel axis
        arr = arr[0]
    return arr


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output must end with .nii or .nii.gz")
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    orthogonal = np.allclose(rot.T @ rot, np.eye(3), atol=1e-5)
    img.set_sform(affine, code=1)
    if orthogonal:
        img.set_qform(affine, code=1)
    else:  # a qform cannot hold a sheared affine; leave only the sform
        img.set_qform(None, code=0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def save_label(
    label: Any,
    path: str | os.PathLike,
    *,
    reference: MetaTensor | None = None,
    affine: Any = None,
) -> Path:
    """Write a label map as NIfTI with an integer dtype, atomically.

    The affine is taken from ``affine``, else ``reference``, else ``label`` itself (a MetaTensor). When a reference
    is given its spatial shape must equal the label's, so a result is never written on a different grid.
    """
    arr = _spatial_array(label)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{path}: label map holds non-integer values")
    src = affine if affine is not None else (reference.affine if reference is not None else getattr(label, "affine", None))
    if src is None:
        raise ValueError(f"{path}: no affine given (pass affine= or reference=, or a MetaTensor label)")
    if reference is not None:
        ref_shape = tuple(reference.shape[1:])
        if tuple(arr.shape) != ref_shape:
            raise ValueError(f"{path}: label shape {tuple(arr.shape)} differs from the reference shape {ref_shape}")
    out = arr.astype(label_dtype(arr), copy=False)
    return _write_nifti(np.asarray(out), _affine_4x4(src), path)


def lossless_dtype(array: np.ndarray) -> np.dtype:
    """int16 when every value is an integer in int16's range (CT in HU, most MR), else float32."""
    if array.dtype.kind in "iu" or (
        array.size and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))
    ):
        if array.size == 0 or (array.min() >= -32768 and array.max() <= 32767):
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def save_image(
    image: Any, path: str | os.PathLike, *, affine: Any = None, dtype: np.dtype | type | None = np.float32
) -> Path:
    """Write an image as NIfTI atomically: single channel as 3D, several channels as 4D (channels last).

    ``dtype=None`` picks :func:`lossless_dtype` (int16 for integer-valued images).
    """
    arr = _as_numpy(image)
    if arr.ndim == 4 and arr.shape[0] > 1:
        arr = np.moveaxis(arr, 0, -1)
    else:
        arr = _spatial_array(arr)
    src = affine if affine is not None else getattr(image, "affine", None)
    if src is None:
        raise ValueError(f"{path}: no affine given (pass affine= or a MetaTensor image)")
    out_dtype = lossless_dtype(arr) if dtype is None else np.dtype(dtype)
    return _write_nifti(arr.astype(out_dtype, copy=False), _affine_4x4(src), path)
