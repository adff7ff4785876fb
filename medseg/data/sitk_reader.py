"""SimpleITK-backed reading for NRRD and MetaImage (.mha/.mhd) volumes.

SimpleITK works in LPS with arrays indexed (z, y, x); medseg's volumes are indexed (i, j, k) with a RAS affine,
so the array is transposed and the first two rows of the LPS affine are negated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from medseg.errors import InputError, ReasonCode

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_sitk_volume(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(SITK_SUFFIXES)


def lps_affine(spacing: Sequence[float], direction: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The 4x4 voxel-to-LPS affine of an ITK image (3D; 2D images are padded to 3D)."""
    ndim = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)
    aff = np.eye(4)
    aff[:ndim, :ndim] = d @ np.diag(np.asarray(spacing, dtype=np.float64))
    aff[:ndim, 3] = np.asarray(origin, dtype=np.float64)
    return aff


@dataclass
class SitkVolume:
    array: np.ndarray
    affine: np.ndarray
    path: Path


def read_sitk(path: str | os.PathLike, *, allow_nan: bool = False) -> SitkVolume:
    """Read a volume with SimpleITK and return it as an (i, j, k) array with a RAS affine."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(ReasonCode.FILE_NOT_FOUND, path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputError(ReasonCode.EMPTY_FILE, path, "file is empty (0 bytes)")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(ReasonCode.UNREADABLE, path, f"SimpleITK cannot read it ({first})") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            ReasonCode.WRONG_DIMENSIONS, path, f"{img.GetNumberOfComponentsPerPixel()} components per voxel; expected 1"
        )
    array = sitk.GetArrayFromImage(img)
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    affine = LPS_TO_RAS @ lps_affine(img.GetSpacing(), img.GetDirection(), img.GetOrigin())
    if not allow_nan and array.dtype.kind == "f":
        n_nan = int(np.isnan(array).sum())
        if n_nan:
            raise InputError(ReasonCode.NAN_VOXELS, path, f"{n_nan} of {array.size} voxels are NaN")
    return SitkVolume(array=array, affine=affine, path=path)


class SimpleITKReader(ImageReader):
    """MONAI reader for NRRD / MetaImage through SimpleITK, metadata keys as MONAI's readers."""

    def __init__(self, allow_nan: bool = False) -> None:
        super().__init__()
        self.allow_nan = allow_nan

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        names = filename if isinstance(filename, list | tuple) else [filename]
        return all(is_sitk_volume(n) for n in names)

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> SitkVolume | list[SitkVolume]:
        names = list(data) if isinstance(data, list | tuple) else [data]
        vols = [read_sitk(n, allow_nan=self.allow_nan) for n in names]
        return vols if len(vols) > 1 else vols[0]

    def get_data(self, img: SitkVolume | list[SitkVolume]) -> tuple[np.ndarray, dict]:
        vols = img if isinstance(img, list) else [img]
        first = vols[0]
        meta = {
            MetaKeys.AFFINE: first.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: first.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        if len(vols) > 1:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack([v.array for v in vols]), meta
        return first.array, meta
