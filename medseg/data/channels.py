"""Multimodal cases: named channels (files or DICOM series) assembled into one channel-first volume.

The channel spec (``medseg.config.DataConfig.channels``) fixes the names and their order. Every channel must lie on
the reference (first) channel's grid within a tolerance in millimetres, or is resampled onto it when the config
says so. A label map must lie on the same grid and hold only declared label values.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from medseg.data.io import load_volume
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)


def grid_distance_mm(affine_a: Any, shape_a: Sequence[int], affine_b: Any, shape_b: Sequence[int]) -> float:
    """Largest world distance (mm) between the same corner voxel of two grids; ``inf`` if the shapes differ."""
    a = np.asarray(affine_a, dtype=np.float64)
    b = np.asarray(affine_b, dtype=np.float64)
    if tuple(shape_a) != tuple(shape_b) or a.shape != b.shape or a.shape[0] != len(shape_a) + 1:
        return float("inf")
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in shape_a])), dtype=np.float64)
    homog = np.concatenate([corners, np.ones((len(corners), 1))], axis=1).T
    return float(np.abs((a - b) @ homog).max())


def _describe(img: MetaTensor) -> str:
    spacing = np.linalg.norm(np.asarray(img.affine)[:-1, :-1], axis=0)
    return f"shape {tuple(img.shape[1:])}, spacing {np.round(spacing, 4).tolist()}"


def check_same_grid(
    ref: MetaTensor, other: MetaTensor, tol_mm: float, *, code: ReasonCode, ref_path: Any, other_path: Any
) -> None:
    """Raise ``code`` naming both files when ``other`` is not on ``ref``'s grid (within ``tol_mm``)."""
    dist = grid_distance_mm(ref.affine, ref.shape[1:], other.affine, other.shape[1:])
    if dist > tol_mm:
        how = "different shape" if np.isinf(dist) else f"grids differ by up to {dist:.4g} mm (tolerance {tol_mm} mm)"
        raise InputError(
            code,
            other_path,
            f"not on the grid of {ref_path}: {how}; {_describe(other)} vs {_describe(ref)}",
        )


def assemble_channels(
    sources: Mapping[str, str | os.PathLike],
    channels: Sequence[Any],
    *,
    resample: bool = False,
    tol_mm: float = 1e-3,
    spatial_dims: int = 3,
) -> MetaTensor:
    """Load each named channel and stack them in spec order into a (C, *spatial) MetaTensor.

    Args:
        sources: channel name -> file or DICOM folder (several channels may share a study folder; each channel's
            series rule then picks its series).
        channels: the channel spec, ``ChannelConfig`` objects (``name`` and ``series_rule()``) or plain names.
        resample: resample channels onto the first channel's grid instead of refusing a mismatch.
        tol_mm: geometry tolerance in millimetres.
        spatial_dims: 2 or 3.
    """
    names = [c if isinstance(c, str) else c.name for c in channels]
    missing = [n for n in names if n not in sources]
    if missing:
        raise InputError(
            ReasonCode.MISSING_CHANNEL,
            None,
            f"channel(s) {missing} missing; the model expects {names}, the case has {sorted(sources)}",
        )
    extra = sorted(set(sources) - set(names))
    if extra:
        logger.warning("ignoring channels not in the spec: %s", extra)
    loaded: list[MetaTensor] = []
    for ch, name in zip(channels, names, strict=True):
        rule = None if isinstance(ch, str) else ch.series_rule()
        loaded.append(load_volume(sources[name], series_rule=rule, spatial_dims=spatial_dims))
    ref = loaded[0]
    out = [ref]
    for name, img in zip(names[1:], loaded[1:], strict=True):
        dist = grid_distance_mm(ref.affine, ref.shape[1:], img.affine, img.shape[1:])
        if dist <= tol_mm:
            out.append(img)
        elif resample:
            logger.info("resampling channel %s onto the grid of %s (offset up to %.3g mm)", name, names[0], dist)
            out.append(ResampleToMatch(mode="bilinear", padding_mode="border")(img, img_dst=ref))
        else:
            check_same_grid(
                ref, img, tol_mm, code=ReasonCode.CHANNEL_GEOMETRY_MISMATCH,
                ref_path=sources[names[0]], other_path=sources[name],
            )
    stacked = torch.cat([torch.as_tensor(o, dtype=torch.float32) for o in out], dim=0)
    result = MetaTensor(stacked, meta={**ref.meta, "affine": ref.affine.clone()})
    result.meta["channel_names"] = list(names)
    return result


def load_label(
    path: str | os.PathLike,
    reference: MetaTensor,
    labels: Mapping[int, str] | Sequence[int],
    *,
    reference_path: Any = None,
    tol_mm: float = 1e-3,
) -> MetaTensor:
    """Load a label map that must share ``reference``'s grid and hold only the declared label values."""
    spatial_dims = reference.ndim - 1
    label = load_volume(path, spatial_dims=spatial_dims, dtype=None)
    check_same_grid(
        reference, label, tol_mm, code=ReasonCode.LABEL_GEOMETRY_MISMATCH,
        ref_path=reference_path or reference.meta.get("filename_or_obj"), other_path=path,
    )
    arr = label.numpy()
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise InputError(ReasonCode.LABEL_VALUES, path, "label map holds non-integer values")
    values = set(np.unique(arr).astype(np.int64).tolist())
    allowed = set(int(k) for k in labels)
    bad = sorted(values - allowed)
    if bad:
        raise InputError(
            ReasonCode.LABEL_VALUES,
            path,
            f"label values {bad} are not declared (declared: {sorted(allowed)}); image: {reference_path}",
        )
    return MetaTensor(torch.as_tensor(arr.astype(np.int64)), meta={**label.meta, "affine": reference.affine.clone()})
