"""Invertible preprocessing: reorient, resample to a target spacing, normalize per channel, and go back.

:func:`build_preprocess` returns a dictionary-based MONAI ``Compose`` for channel-first MetaTensors:

1. :class:`CheckGeometryd` refuses inputs without an affine or whose labels are on another grid than the image;
2. :class:`ChannelNormalized` (optional) on the native grid, so statistics do not depend on the target spacing;
3. ``Orientationd`` to ``orientation`` (a pure flip/permutation of voxels, no interpolation);
4. ``Spacingd`` to ``target_spacing``: bilinear for images, nearest for labels.

Orientation and spacing record themselves in each MetaTensor's ``applied_operations``. :func:`invert_to_original`
replays them backwards (``monai.transforms.Invertd``, nearest interpolation) on a prediction made on the
preprocessed grid, so it lands on exactly the original shape and affine.

Oblique inputs: ``Orientationd`` only flips/permutes to the *closest* orientation, and ``Spacingd`` keeps the
rotation (``diagonal=False``), so the preprocessed grid of an oblique scan is still oblique (rotation preserved, no
interpolation just to straighten it). Inversion is exact in shape and affine in every case.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, MapTransform, Orientationd, Spacingd, SpatialResample

from medseg.data.normalization import ChannelNormalized, NormalizerLike
from medseg.errors import InputError, MedsegError, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["CheckGeometryd", "Preprocess", "build_preprocess", "invert_to_original", "resample_label_to"]

AFFINE_ATOL = 1e-4  # mm; two grids closer than this are "the same grid"


def _as_list(keys: Hashable | Sequence[Hashable] | None) -> list[Hashable]:
    if keys is None:
        return []
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        return [keys]
    return list(keys)


class CheckGeometryd(MapTransform):
    """Refuse data that the spatial transforms would silently mishandle.

    Every key must hold a channel-first MetaTensor with ``spatial_dims`` spatial axes; label keys must share the
    first image's spatial shape and affine (else ``InputError(LABEL_GEOMETRY_MISMATCH)``), other images too (else
    ``CHANNEL_GEOMETRY_MISMATCH``). Leaves no trace, so inversion ignores it.
    """

    def __init__(
        self, keys_image: Sequence[Hashable], keys_label: Sequence[Hashable], spatial_dims: int
    ) -> None:
        super().__init__(list(keys_image) + list(keys_label), allow_missing_keys=False)
        self.keys_image = list(keys_image)
        self.keys_label = list(keys_label)
        self.spatial_dims = spatial_dims

    def _check_one(self, key: Hashable, value: Any) -> None:
        if not isinstance(value, MetaTensor):
            raise InputError(
                ReasonCode.MISSING_GEOMETRY,
                None,
                f"{key!r} must be a MetaTensor carrying its affine, got {type(value).__name__}",
            )
        if value.ndim != self.spatial_dims + 1:
            raise InputError(
                ReasonCode.WRONG_DIMENSIONS,
                None,
                f"{key!r} must be channel-first with {self.spatial_dims} spatial dims "
                f"(shape (C, {', '.join('...' for _ in range(self.spatial_dims))})), got shape {tuple(value.shape)}",
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check_one(key, d[key])
        ref_key = self.keys_image[0]
        ref = d[ref_key]
        ref_affine = np.asarray(ref.affine, dtype=np.float64)
        for key in self.keys_image[1:] + self.keys_label:
            other = d[key]
            same_shape = tuple(other.shape[1:]) == tuple(ref.shape[1:])
            same_affine = np.allclose(
                np.asarray(other.affine, dtype=np.float64), ref_affine, atol=AFFINE_ATOL
            )
            if not (same_shape and same_affine):
                code = (
                    ReasonCode.LABEL_GEOMETRY_MISMATCH
                    if key in self.keys_label
                    else ReasonCode.CHANNEL_GEOMETRY_MISMATCH
                )
                raise InputError(
                    code,
                    None,
                    f"{key!r} (shape {tuple(other.shape[1:])}) is not on the grid of {ref_key!r} "
                    f"(shape {tuple(ref.shape[1:])})"
                    + (
                        ""
                        if same_affine
                        else f"; affines differ:\n{np.asarray(other.affine)}\nvs\n{ref_affine}"
                    ),
                )
        return d


def _own_error(err: BaseException) -> BaseException | None:
    """The first medseg or ValueError in the ``__cause__`` chain of MONAI's RuntimeError wrapper, if any."""
    seen = err.__cause__
    while seen is not None:
        if isinstance(seen, (MedsegError, ValueError)):
            return seen
        seen = seen.__cause__
    return None


class Preprocess(Compose):
    """A ``Compose`` that lets validation errors through unwrapped.

    MONAI wraps every exception raised inside a transform into ``RuntimeError("applying transform ...")``; this
    re-raises the original :class:`~medseg.errors.InputError` / ``ValueError`` so callers can catch it (and read
    its reason code). Wrapped again by an outer ``Compose`` or dataset, the original stays in ``__cause__``.
    """

    def __call__(
        self,
        input_: Any,
        start: int = 0,
        end: int | None = None,
        threading: bool = False,
        lazy: bool | None = None,
    ) -> Any:
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as err:
            own = _own_error(err)
            if own is None:
                raise
            raise own from None


def build_preprocess(
    keys_image: Hashable | Sequence[Hashable],
    keys_label: Hashable | Sequence[Hashable] | None,
    target_spacing: Sequence[float],
    orientation: str = "RAS",
    normalizers: Sequence[NormalizerLike] | None = None,
    channel_names: Sequence[str] | None = None,
) -> Preprocess:
    """The invertible preprocessing chain for channel-first MetaTensors.

    Args:
        keys_image: image key(s); several images must share one grid.
        keys_label: label key(s) on the image grid, or None (inference).
        target_spacing: output voxel size in mm, one value per spatial axis (2 or 3 values).
        orientation: target axis codes, e.g. "RAS" (3D) or "RA" (2D).
        normalizers: one normalizer (or spec / dict, see :mod:`medseg.data.normalization`) per image channel,
            applied to every image key; None skips normalization.
        channel_names: optional channel names for error messages of the normalization step.

    Labels come out as float32 holding integer values (MONAI's resampling output type); cast them as needed.
    Inputs are validated on call: :class:`~medseg.errors.InputError` for a missing affine, a missing channel axis or
    labels/images on different grids, ``ValueError`` for a channel count that differs from ``normalizers``.

    Raises:
        ValueError: on an empty key list, a bad spacing or an orientation that does not match the spacing's rank.
    """
    images = _as_list(keys_image)
    labels = _as_list(keys_label)
    if not images:
        raise ValueError("build_preprocess needs at least one image key")
    if set(images) & set(labels):
        raise ValueError(f"keys {sorted(map(str, set(images) & set(labels)))} are both image and label keys")
    spacing = [float(s) for s in target_spacing]
    if len(spacing) not in (2, 3) or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"target_spacing must be 2 or 3 positive numbers (mm), got {tuple(target_spacing)}")
    codes = orientation.upper()
    if len(codes) != len(spacing):
        raise ValueError(
            f"orientation {orientation!r} has {len(codes)} axis codes but target_spacing has {len(spacing)} values"
        )
    axes = []
    for c in codes:
        pair = [i for i, p in enumerate(("LR", "PA", "IS")) if c in p]
        axes.append(pair[0] if pair else -1)
    if sorted(axes) != list(range(len(codes))):
        raise ValueError(
            f"orientation must name each of the first {len(codes)} of the R/L, A/P, S/I axes once, got {orientation!r}"
        )

    all_keys = images + labels
    transforms: list[Any] = [CheckGeometryd(images, labels, spatial_dims=len(spacing))]
    if normalizers is not None:
        transforms.append(ChannelNormalized(images, normalizers, channel_names=channel_names))
    transforms.append(Orientationd(keys=all_keys, axcodes=codes, labels=None))
    transforms.append(
        Spacingd(
            keys=all_keys,
            pixdim=spacing,
            mode=["bilinear"] * len(images) + ["nearest"] * len(labels),
            padding_mode=["border"] * len(images) + ["zeros"] * len(labels),
        )
    )
    return Preprocess(transforms)


def _orig_key(transform: Compose, key: Hashable | None) -> Hashable:
    """The data key whose recorded operations are replayed: ``key``, else the first key of ``Orientationd``."""
    spatial = [t for t in transform.flatten().transforms if isinstance(t, (Orientationd, Spacingd))]
    if not spatial:
        raise ValueError("the transform has no Orientationd/Spacingd step; was it made by build_preprocess?")
    known = list(spatial[0].keys)
    if key is None:
        return known[0]
    if key not in known:
        raise ValueError(f"key {key!r} was not preprocessed by this transform; its keys are {known}")
    return key


def invert_to_original(
    pred: torch.Tensor | np.ndarray,
    preprocessed: MetaTensor,
    transform: Compose,
    key: Hashable | None = None,
    nearest: bool = True,
) -> MetaTensor:
    """Bring a prediction made on the preprocessed grid back to the original grid of the input.

    Args:
        pred: channel-first ``(C, *spatial)`` label map or probabilities on the grid of ``preprocessed``
            (decollate batches first).
        preprocessed: the preprocessed image (a MetaTensor carrying its ``applied_operations``).
        transform: the ``Compose`` returned by :func:`build_preprocess` that produced ``preprocessed``.
        key: the data key ``preprocessed`` was stored under; default the first preprocessed key.
        nearest: nearest-neighbour inversion (labels); False reuses each step's own mode (probabilities).

    Returns:
        A MetaTensor with the original spatial shape and affine (and ``pred``'s dtype for label maps).
    """
    if not isinstance(preprocessed, MetaTensor) or not preprocessed.applied_operations:
        raise ValueError(
            "preprocessed must be the MetaTensor output of the preprocessing, with its applied_operations"
        )
    if preprocessed.is_batch:
        raise ValueError(
            "preprocessed is a batch; decollate it (monai.data.decollate_batch) and invert each item"
        )
    pred_t = torch.as_tensor(pred) if isinstance(pred, np.ndarray) else pred
    if pred_t.ndim != preprocessed.ndim or tuple(pred_t.shape[1:]) != tuple(preprocessed.shape[1:]):
        raise ValueError(
            f"pred must be channel-first (C, *spatial) on the preprocessed grid {tuple(preprocessed.shape[1:])}, "
            f"got shape {tuple(pred_t.shape)} (decollate a batch first)"
        )
    orig_key = _orig_key(transform, key)
    out_dtype = pred_t.dtype
    pred_key = "__medseg_pred__"
    if not isinstance(pred_t, MetaTensor):  # Invertd reads the trace from the original key only for MetaTensors
        pred_t = MetaTensor(pred_t.detach(), meta={"affine": preprocessed.affine.clone()})
    data = {orig_key: preprocessed, pred_key: pred_t.detach()}
    inverter = Invertd(keys=pred_key, transform=transform, orig_keys=orig_key, nearest_interp=nearest)
    with warnings.catch_warnings():
        # Orientation.inverse derives 3 axis codes from the 4x4 affine of a 2D image and warns about it; harmless
        warnings.filterwarnings("ignore", message=r"axcodes .* length is smaller", category=UserWarning)
        inverted = inverter(data)[pred_key]
    if not isinstance(inverted, MetaTensor):
        inverted = MetaTensor(inverted)
    if nearest and not out_dtype.is_floating_point:
        inverted = inverted.round().to(out_dtype)
    return inverted


def resample_label_to(
    label: MetaTensor,
    reference_affine: np.ndarray | torch.Tensor,
    reference_shape: Sequence[int],
) -> MetaTensor:
    """Nearest-neighbour resampling of a channel-first label MetaTensor onto another grid (zeros outside).

    Use it to compare a label with a reference on a different grid; it records no inversion trace.
    """
    if not isinstance(label, MetaTensor):
        raise ValueError(f"label must be a MetaTensor carrying its affine, got {type(label).__name__}")
    shape = [int(s) for s in reference_shape]
    if len(shape) != label.ndim - 1:
        raise ValueError(
            f"reference_shape {tuple(shape)} must have {label.ndim - 1} spatial sizes (label {tuple(label.shape)})"
        )
    affine = torch.as_tensor(np.asarray(reference_affine, dtype=np.float64))
    resample = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float64)
    with resample.trace_transform(False):
        out = resample(label, dst_affine=affine, spatial_size=shape)
    if not label.dtype.is_floating_point:
        out = out.round().to(label.dtype)
    return out
