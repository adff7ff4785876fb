"""A MONAI ``ImageReader`` for DICOM series folders, on top of medseg's scan / select / read.

``LoadImage(reader=DicomSeriesReader(rule=...), image_only=True, ensure_channel_first=True)(folder)`` returns a
channel-first MetaTensor whose ``.affine`` is the series' RAS affine. Several folders given together become
channels and must share shape and affine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medseg.data.dicom.preamble import looks_like_dicom
from medseg.data.dicom.reader import read_dicom
from medseg.data.dicom.select import SeriesRule
from medseg.errors import InputError, ReasonCode

__all__ = ["DicomSeriesReader", "looks_like_dicom"]

_AFFINE_TOL_MM = 1e-4
_PROBE_FILES = 16


def _folder_has_dicom(folder: Path) -> bool:
    """Probe up to ``_PROBE_FILES`` files under ``folder`` for a DICOM file (see :func:`looks_like_dicom`)."""
    probed = 0
    for sub, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if looks_like_dicom(Path(sub) / name):
                return True
            probed += 1
            if probed >= _PROBE_FILES:
                return False
    return False


class DicomSeriesReader(ImageReader):
    """Read DICOM series folders with exact geometry (see :func:`medseg.data.dicom.reader.read_dicom`).

    Args:
        rule: series rule (a :class:`SeriesRule` or a mapping) used when a folder holds several series.
        min_slices: refuse series with fewer slices (``NOT_VOLUME``; default 1).
    """

    def __init__(self, rule: SeriesRule | Mapping[str, Any] | None = None, min_slices: int = 1) -> None:
        super().__init__()
        self.rule = rule if rule is None or isinstance(rule, SeriesRule) else SeriesRule.from_dict(rule)
        self.min_slices = min_slices

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """True when every name is a folder holding DICOM files or a DICOM file (Part 10, or a bare data set)."""
        names = [Path(f) for f in ensure_tuple(filename)]
        return bool(names) and all(
            _folder_has_dicom(p) if p.is_dir() else (p.is_file() and looks_like_dicom(p)) for p in names
        )

    def read(
        self, data: Sequence[str | Path] | str | Path, **kwargs: Any
    ) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """Read each folder (or slice file) as one series; returns a list of ``(volume, affine, meta)``."""
        if kwargs:
            raise TypeError(f"DicomSeriesReader.read got unexpected options: {', '.join(kwargs)}")
        return [read_dicom(p, rule=self.rule, min_slices=self.min_slices) for p in ensure_tuple(data)]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return ``(array, meta)``; several images are stacked on a new first (channel) axis."""
        images = img if isinstance(img, list) else [img]
        volume0, affine0, meta0 = images[0]
        for volume, affine, meta in images[1:]:
            if volume.shape != volume0.shape or not np.allclose(affine, affine0, atol=_AFFINE_TOL_MM, rtol=0):
                raise InputError(
                    ReasonCode.CHANNEL_GEOMETRY_MISMATCH,
                    meta.get("stack_id"),
                    f"series {meta.get('stack_id')} has shape {volume.shape} / affine differing from "
                    f"{meta0.get('stack_id')} ({volume0.shape}); channels must share one grid",
                )
        meta: dict[str, Any] = dict(meta0)
        meta[MetaKeys.AFFINE] = affine0.copy()
        meta[MetaKeys.ORIGINAL_AFFINE] = affine0.copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(volume0.shape)
        meta[MetaKeys.SPACE] = SpaceKeys.RAS
        if len(images) == 1:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
            return volume0, meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack([im[0] for im in images], axis=0), meta
