"""Reading one work item into the channel-first MetaTensor a :class:`~medseg.inference.Predictor` takes.

DICOM stacks are read from the headers discovery already parsed (no second scan of the folder); volume files with
:func:`medseg.data.io.load_volume`. Channels of a multimodal item must lie on the first channel's grid (within
``tol_mm``), or are resampled onto it when the model's config says ``data.resample_channels``. Errors name channels
and paths relative to the input root, never absolute paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys

from medseg.batch.discover import WorkItem
from medseg.data.channels import check_same_grid, grid_distance_mm
from medseg.data.dicom import DicomSeriesReader, SeriesInfo, load_dicom_series
from medseg.data.dicom.geometry import MIN_VOLUME_SLICES
from medseg.data.io import load_volume
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["LoadedItem", "load_item", "series_image", "stack_channels"]

CHANNEL_TOL_MM = 1e-3


@dataclass
class LoadedItem:
    """A work item read into memory: the (C, *spatial) image and the DICOM files a SEG should reference."""

    item: WorkItem
    image: MetaTensor
    source_dicom_files: list[Path] | None
    seconds: float = 0.0
    fingerprint: str | None = None  # the input files' fingerprint taken just before they were read


def _squeeze_2d(img: MetaTensor, where: str) -> MetaTensor:
    """A (1, X, Y, 1) single-slice volume as a 2D (1, X, Y) image with its 3x3 affine."""
    if img.ndim != 4 or img.shape[-1] != 1:
        raise InputError(
            ReasonCode.WRONG_DIMENSIONS,
            where,
            f"volume of shape {tuple(img.shape[1:])} where a 2D image is expected",
        )
    a = torch.as_tensor(img.affine, dtype=torch.float64)
    affine = torch.eye(3, dtype=torch.float64)
    affine[:2, :2] = a[:2, :2]
    affine[:2, 2] = a[:2, 3]
    out = MetaTensor(img.as_tensor()[..., 0], meta=dict(img.meta))
    out.affine = affine
    return out


def series_image(series: SeriesInfo, *, spatial_dims: int = 3, where: str = "") -> MetaTensor:
    """One scanned DICOM stack as a (1, i, j, k) float32 MetaTensor with its RAS affine (no rescan)."""
    volume, affine, meta = load_dicom_series(series, min_slices=MIN_VOLUME_SLICES if spatial_dims == 3 else 1)
    array, meta = DicomSeriesReader().get_data((volume, affine, meta))
    meta = dict(meta)
    meta[MetaKeys.AFFINE] = torch.as_tensor(np.asarray(meta[MetaKeys.AFFINE], dtype=np.float64))
    meta[MetaKeys.ORIGINAL_AFFINE] = torch.as_tensor(
        np.asarray(meta[MetaKeys.ORIGINAL_AFFINE], dtype=np.float64)
    )
    img = MetaTensor(torch.from_numpy(array).unsqueeze(0), meta=meta)
    if spatial_dims == 2:
        img = _squeeze_2d(img, where)
    return img


def stack_channels(
    images: dict[str, MetaTensor], *, resample: bool = False, tol_mm: float = CHANNEL_TOL_MM, where: str = ""
) -> MetaTensor:
    """Concatenate single-channel images (in the dict's order) on the first one's grid.

    Raises:
        InputError: CHANNEL_GEOMETRY_MISMATCH when a channel is off the reference grid and ``resample`` is False.
    """
    names = list(images)
    ref = images[names[0]]
    parts = [ref.as_tensor().float()]
    for name in names[1:]:
        img = images[name]
        dist = grid_distance_mm(ref.affine, ref.shape[1:], img.affine, img.shape[1:])
        if dist <= tol_mm:
            parts.append(img.as_tensor().float())
        elif resample:
            from monai.transforms import ResampleToMatch

            logger.info(
                "resampling channel %s onto the grid of %s (offset up to %.3g mm)", name, names[0], dist
            )
            moved = ResampleToMatch(mode="bilinear", padding_mode="border")(img, img_dst=ref)
            parts.append(torch.as_tensor(moved).float())
        else:
            check_same_grid(
                ref,
                img,
                tol_mm,
                code=ReasonCode.CHANNEL_GEOMETRY_MISMATCH,
                ref_path=f"channel {names[0]}",
                other_path=f"{where}: channel {name}" if where else f"channel {name}",
            )
    out = MetaTensor(torch.cat(parts, dim=0), meta={**ref.meta, "affine": ref.affine.clone()})
    out.meta["channel_names"] = names
    return out


def _relative_error(exc: InputError, root: Path, fallback: str) -> InputError:
    """The same error with its path made relative to the input root (absolute paths can hold patient folders)."""
    path = exc.path
    if path is not None and Path(path).is_absolute():
        try:
            path = Path(path).relative_to(root).as_posix()
        except ValueError:
            path = fallback
    detail = exc.detail.replace(str(root), "<input>")
    return InputError(exc.code, path if path is not None else fallback, detail)


def load_item(item: WorkItem, spec: Any, root: Path) -> LoadedItem:
    """Read every channel of ``item`` and stack them in the spec's channel order.

    Args:
        item: a work item that is not quarantined.
        spec: the model's :class:`~medseg.checkpoint.ModelSpec` (its contract's channels, file dims, resampling).
        root: the input root (for relative paths in errors).

    Raises:
        InputError: unreadable or inconsistent input, with a path relative to ``root``.
    """
    if item.quarantined:
        raise item.problem.to_error()
    fingerprint = item.input_fingerprint()  # before reading: a change after this is caught before publishing
    data = spec.contract.data
    names = data.channel_names
    loaded: dict[str, MetaTensor] = {}
    for name in names:
        source = item.sources[name]
        try:
            if isinstance(source, SeriesInfo):
                loaded[name] = series_image(source, spatial_dims=data.file_dims, where=item.relative_path)
            else:
                loaded[name] = load_volume(source, spatial_dims=data.file_dims)
        except InputError as exc:
            raise _relative_error(exc, root, item.relative_path) from None
    if len(names) == 1:
        image = loaded[names[0]]
    else:
        image = stack_channels(loaded, resample=data.resample_channels, where=item.relative_path)
    image.meta["filename_or_obj"] = item.key  # never the input path: it may name the patient
    image.meta["channel_names"] = names
    return LoadedItem(item=item, image=image, source_dicom_files=item.source_dicom_files, fingerprint=fingerprint)
