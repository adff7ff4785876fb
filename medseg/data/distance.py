"""Signed distance maps of ground-truth labels, for the boundary loss.

Computed once per sample in the data pipeline (not in the loss), N-D and spacing-aware.

Convention, for each class ``c`` with mask ``G`` (the voxels of class ``c``)::

    phi_c(x) = +d(x, G)        for x outside G   (distance to the nearest voxel of G)
    phi_c(x) = -d(x, not G)    for x inside G    (distance to the nearest voxel not in G)

with ``d`` the Euclidean distance in millimetres between voxel centres
(``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``). So every voxel inside the object is strictly
negative and every voxel outside strictly positive; the zero level (the object surface) lies between voxel
centres: the first voxel layer on either side of the surface has magnitude equal to the spacing along the axis
that crosses it (e.g. -0.8 inside and +0.8 outside across an axis of spacing 0.8 mm). Unlike Kervadec et al.'s
``one_hot2dist`` (inside: ``-(d - 1)``, which puts the inner layer at 0 and mixes voxels with millimetres when a
spacing is given) this convention has no unit offset, so ``mean(p * phi)`` is minimised exactly by ``p = 1_G``.

A class absent from the image, and a class that fills the whole image, have no surface: their map is all zeros
(the boundary loss then ignores that class for that sample).

Spacing is the ``spacing`` argument, or, when it is None, the ``pixdim`` of a MONAI ``MetaTensor`` (derived from its
affine). A plain array with ``spacing=None`` is refused rather than silently measured in voxels: pass
``spacing=1.0`` for voxel units.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage

logger = logging.getLogger(__name__)


def _normalise_spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.ndim != 1:
        raise ValueError(f"spacing must be a number or a sequence of {ndim} numbers, got {spacing!r}")
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim:
        raise ValueError(f"spacing must have one value per spatial axis ({ndim}), got {spacing!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing values must be finite and > 0, got {spacing!r}")
    return tuple(float(v) for v in values)


def signed_distance(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Signed distance map (float32) of one boolean mask, in the convention of this module.

    All zeros if the mask is empty or fills the whole array.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return np.where(mask, -inside, outside).astype(np.float32)


class SignedDistanceMap(Transform):
    """Label map -> per-class signed distance maps (C, *spatial), float32, in millimetres.

    Args:
        num_classes: number of classes ``C`` (background included), >= 1.
        spacing: voxel spacing in mm per spatial axis (or one number for all); ``None`` reads the ``pixdim`` of
            a ``MetaTensor`` input.

    The input is channel-first:

    * ``(1, *spatial)`` class indices in ``[0, num_classes)`` (integer-valued), when ``num_classes >= 2``;
    * ``(num_classes, *spatial)`` one-hot / binary masks with values 0 and 1 (for ``num_classes == 1`` this is a
      single binary mask).

    The output has the input's type (numpy array, tensor, or MetaTensor keeping the input's metadata).
    See the module docstring for the sign convention and the all-zero maps of absent classes.
    """

    def __init__(self, num_classes: int, spacing: float | Sequence[float] | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.spacing = spacing

    def _spacing(self, label: Any, ndim: int) -> tuple[float, ...]:
        if self.spacing is not None:
            return _normalise_spacing(self.spacing, ndim)
        if isinstance(label, MetaTensor):
            return _normalise_spacing(np.asarray(label.pixdim, dtype=np.float64)[:ndim], ndim)
        raise ValueError(
            "spacing is None and the label is not a MetaTensor, so its voxel spacing is unknown; pass "
            "spacing=(...) in mm, or spacing=1.0 to measure distances in voxels"
        )

    def _masks(self, array: np.ndarray) -> np.ndarray:
        """Boolean masks (num_classes, *spatial) from class indices or one-hot input."""
        channels = array.shape[0]
        if channels == self.num_classes:
            if not np.isin(array, (0, 1)).all():
                raise ValueError(
                    f"a ({self.num_classes}, *spatial) label is read as one-hot masks and must hold only 0 and 1, "
                    f"found values {np.unique(array)[:10].tolist()}"
                )
            return array.astype(bool)
        if channels == 1:
            values = np.unique(array)
            bad = values[(values != np.round(values)) | (values < 0) | (values >= self.num_classes)]
            if bad.size:
                raise ValueError(
                    f"class indices must be integers in [0, {self.num_classes - 1}], found {bad[:10].tolist()}"
                )
            index = array[0].astype(np.int64)
            return np.stack([index == c for c in range(self.num_classes)])
        raise ValueError(
            f"label must have shape (1, *spatial) (class indices) or ({self.num_classes}, *spatial) (one-hot), "
            f"got {tuple(array.shape)}"
        )

    def __call__(self, label: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if label.ndim < 2:
            raise ValueError(f"label must be channel-first (C, *spatial), got shape {tuple(label.shape)}")
        spacing = self._spacing(label, label.ndim - 1)
        if isinstance(label, torch.Tensor):
            array = label.detach().cpu().numpy()
        else:
            array = np.asarray(label)
        masks = self._masks(array)
        out = np.stack([signed_distance(mask, spacing) for mask in masks])
        if not isinstance(label, torch.Tensor):
            return out
        result, *_ = convert_to_dst_type(out, label, dtype=torch.float32)
        return result


class SignedDistanceMapd(MapTransform):
    """Dictionary wrapper of :class:`SignedDistanceMap`: ``data[output_key] = SignedDistanceMap(...)(data[key])``.

    Args:
        keys: key(s) of the label map(s).
        output_key: where to store the maps; one key per input key (a single string for a single key).
        num_classes, spacing: as for :class:`SignedDistanceMap`.
        allow_missing_keys: skip absent keys instead of raising KeyError.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        output_key: str | Sequence[str] = "dist",
        spacing: float | Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        output_keys = (output_key,) if isinstance(output_key, str) else tuple(output_key)
        if len(output_keys) != len(self.keys):
            raise ValueError(
                f"output_key must give one key per input key: {len(self.keys)} keys {list(self.keys)} but "
                f"{len(output_keys)} output keys {list(output_keys)}"
            )
        clash = set(output_keys) & set(self.keys)
        if clash:
            raise ValueError(f"output_key must differ from the label keys, both contain {sorted(clash)}")
        self.output_keys = output_keys
        self.transform = SignedDistanceMap(num_classes=num_classes, spacing=spacing)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key])
        return d
