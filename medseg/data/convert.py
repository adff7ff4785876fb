"""Conversion of any readable volume (DICOM series, NRRD, MHA, NIfTI) to NIfTI with its exact geometry."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from medseg.data.io import load_volume, save_image
from medseg.errors import InputError

logger = logging.getLogger(__name__)


def input_root(path: str | os.PathLike) -> Path:
    """The folder that errors about ``path`` are made relative to: ``path`` itself for a folder, else its folder."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def convert_to_nifti(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    series_rule: Any = None,
    overwrite: bool = False,
    min_slices: int | None = None,
) -> Path:
    """Read ``path`` and write it to ``output`` (.nii/.nii.gz) with the same voxels and RAS affine.

    Integer-valued images (e.g. CT in HU after RescaleSlope/Intercept) are stored as int16, others as float32.
    An existing ``output`` is only replaced with ``overwrite=True``; the write is atomic either way.

    Args:
        min_slices: fewest slices of a DICOM series (``NOT_VOLUME`` below); default
            :data:`medseg.data.dicom.geometry.MIN_VOLUME_SLICES`.

    Raises:
        InputError: the input is refused; its path is relative to the input folder (``path`` itself, or the
            file's folder), never absolute: folder names above it often carry patient names.
    """
    output = Path(output)
    if not str(output).lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{output}: output must end with .nii or .nii.gz")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite (--force) to replace it")
    try:
        img = load_volume(path, series_rule=series_rule, min_slices=min_slices)
    except InputError as exc:
        raise exc.relative_to(input_root(path)) from None
    out = save_image(img, output, dtype=None)
    logger.info("converted %s -> %s, shape %s", Path(path).name, output.name, tuple(img.shape[1:]))
    return out
