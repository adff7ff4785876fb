"""Training and validation transform chains built from the config.

Deterministic part (cached once per case by the dataset)::

    LoadCased -> ForegroundMaskd -> CheckGeometryd, ChannelNormalized, Orientationd, Spacingd
      -> CropForegroundd -> SpatialPadd (to the patch) -> SignedDistanceMapd (if the loss needs it) -> FgBgToIndicesd

Normalization runs on the native, uncropped image, exactly as at inference; the foreground mask for the crop is
taken from the raw intensities before it. Distance maps are computed on the whole preprocessed case, before
caching, and then cropped, flipped, rotated and scaled together with image and label.

Random part (every epoch): RandCropByPosNegLabeld (foreground oversampling) -> [SqueezeDimd for slice-wise 2D]
-> flips -> :class:`RandRotateScaled` -> intensity scale / shift / noise -> plain tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Affine,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
    SqueezeDimd,
)

from medseg.data.distance import SignedDistanceMapd
from medseg.data.normalization import ChannelNormalized
from medseg.data.preprocess import CheckGeometryd, build_preprocess
from medseg.training.datalist import load_case

logger = logging.getLogger(__name__)

IMAGE, LABEL, DIST, FOREGROUND = "image", "label", "dist", "foreground"


class LoadCased(MapTransform):
    """``{"channels": {name: path}, "label": path}`` -> ``{"image": (C, *spatial), "label": (1, *spatial)}``.

    Channels are assembled in the order of the data contract (:func:`medseg.data.channels.assemble_channels`),
    the label is checked against the image grid and the declared labels (:func:`medseg.data.channels.load_label`).
    The label comes out as float32 holding class indices. Other keys (``case_id``) are kept.
    """

    def __init__(self, data: Any) -> None:
        super().__init__(keys=["channels"])
        self.data = data

    def __call__(self, item: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = {k: v for k, v in item.items() if k != "channels"}
        d[IMAGE], label = load_case(self.data, item["channels"], item.get(LABEL))
        if label is not None:
            d[LABEL] = label.float()
        return d


class ForegroundMaskd(MapTransform):
    """``data[FOREGROUND]`` = voxels where any channel of the raw image exceeds ``threshold`` (all voxels if none)."""

    def __init__(self, threshold: float, key: str = IMAGE, output_key: str = FOREGROUND) -> None:
        super().__init__(keys=[key])
        self.threshold = float(threshold)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.keys[0]]
        mask = torch.as_tensor(image > self.threshold).any(dim=0, keepdim=True)
        if not bool(mask.any()):
            logger.warning(
                "case %s: no voxel above %g; the foreground crop keeps the whole image",
                d.get("case_id"),
                self.threshold,
            )
            mask = torch.ones_like(mask)
        d[self.output_key] = MetaTensor(mask.float(), meta={**image.meta, "affine": image.affine.clone()})
        return d


class RandRotateScaled(RandomizableTransform, MapTransform):
    """Random rotation and isotropic zoom of image, label and distance maps with one shared affine.

    The parameters are drawn from this transform's own generator (``set_random_state``), then the deterministic
    ``monai.transforms.Affine`` applies them. ``zoom`` is the apparent size factor of the content (> 1 enlarges);
    distance maps (in mm on an unchanged voxel grid) are multiplied by it so they stay distances.

    Args:
        keys: keys to transform; ``modes`` gives one interpolation mode per key.
        spatial_dims: 2 or 3.
        rotate_deg: maximum absolute angle per rotation axis (MONAI's order; 2D uses the first).
        rotate_prob, scale_prob: probabilities of rotating and of zooming.
        scale_range: (low, high) of the zoom factor.
        dist_keys: keys holding distance maps (rescaled by the zoom).
    """

    def __init__(
        self,
        keys: Sequence[str],
        modes: Sequence[str],
        spatial_dims: int,
        rotate_deg: Sequence[float],
        rotate_prob: float,
        scale_range: Sequence[float],
        scale_prob: float,
        dist_keys: Sequence[str] = (),
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys)
        if len(modes) != len(self.keys):
            raise ValueError(f"one mode per key: {list(self.keys)} vs {list(modes)}")
        self.modes = list(modes)
        self.spatial_dims = spatial_dims
        self.rotate_rad = np.deg2rad(
            np.asarray(rotate_deg[: 1 if spatial_dims == 2 else 3], dtype=np.float64)
        )
        self.rotate_prob, self.scale_prob = float(rotate_prob), float(scale_prob)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.dist_keys = set(dist_keys)
        self.angles: list[float] | None = None
        self.zoom = 1.0

    def randomize(self, data: Any = None) -> None:
        rotate = self.R.rand() < self.rotate_prob
        angles = self.R.uniform(-self.rotate_rad, self.rotate_rad)
        scale = self.R.rand() < self.scale_prob
        zoom = self.R.uniform(*self.scale_range)
        self.angles = [float(a) for a in angles] if rotate and np.any(self.rotate_rad > 0) else None
        self.zoom = float(zoom) if scale else 1.0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if self.angles is None and self.zoom == 1.0:
            return d
        for key, mode in self.key_iterator(d, self.modes):
            affine = Affine(
                rotate_params=self.angles,
                scale_params=[1.0 / self.zoom] * self.spatial_dims,
                mode=mode,
                padding_mode="border",
                image_only=True,
            )
            out = affine(d[key])
            d[key] = out * self.zoom if key in self.dist_keys else out
        return d


def patch_roi(data: Any, patch_size: Sequence[int]) -> list[int]:
    """The crop size in the files' dims: the patch, with size 1 inserted at ``slice_axis`` for slice-wise 2D."""
    roi = [int(p) for p in patch_size]
    if data.slice_axis is not None:
        roi.insert(data.slice_axis, 1)
    return roi


def _preprocess_steps(data: Any, labels: list[str]) -> list[Any]:
    normalizers = [c.normalization for c in data.channels]
    if data.spacing is not None:
        pre = build_preprocess(IMAGE, labels, data.spacing, data.axcodes, normalizers, data.channel_names)
        return list(pre.transforms)  # flattened: a nested Compose would count as random and stop caching
    return [
        CheckGeometryd([IMAGE], labels, spatial_dims=data.file_dims),
        ChannelNormalized(IMAGE, normalizers, channel_names=data.channel_names),
        Orientationd(keys=[IMAGE, *labels], axcodes=data.axcodes, labels=None),
    ]


def build_val_transforms(config: Any) -> Compose:
    """Load and preprocess whole cases (no crop, no augmentation): training's view of a whole case.

    Validation does not use it (it runs the inference engine on the case's own grid,
    :mod:`medseg.training.validation`); tests check the engine's preprocessing and the training crop against it.
    """
    steps: list[Any] = [LoadCased(config.data), *_preprocess_steps(config.data, [LABEL])]
    steps.append(EnsureTyped(keys=[IMAGE, LABEL], dtype=torch.float32))
    return Compose(steps)


def build_train_transforms(config: Any, *, needs_dist: bool) -> Compose:
    """The training chain (see the module docstring); ``needs_dist`` adds signed distance maps."""
    data, train = config.data, config.train
    crop = train.crop_foreground
    steps: list[Any] = [LoadCased(data)]
    if crop:
        steps.append(ForegroundMaskd(train.foreground_threshold))
    steps += _preprocess_steps(data, [LABEL, FOREGROUND] if crop else [LABEL])
    if crop:
        steps.append(
            CropForegroundd(
                keys=[IMAGE, LABEL],
                source_key=FOREGROUND,
                margin=train.foreground_margin,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
            )
        )
        steps.append(DeleteItemsd(keys=FOREGROUND))
    roi = patch_roi(data, train.patch_size)
    steps.append(SpatialPadd(keys=[IMAGE, LABEL], spatial_size=roi, mode="constant"))
    keys, modes = [IMAGE, LABEL], ["bilinear", "nearest"]
    if needs_dist:
        steps.append(SignedDistanceMapd(keys=LABEL, num_classes=data.num_classes, output_key=DIST))
        keys.append(DIST)
        modes.append("bilinear")
    steps.append(FgBgToIndicesd(keys=LABEL))
    # ---- random from here on (CacheDataset caches everything above)
    steps.append(
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=LABEL,
            spatial_size=roi,
            pos=train.pos_fraction,
            neg=1.0 - train.pos_fraction,
            num_samples=train.samples_per_case,
            fg_indices_key=f"{LABEL}_fg_indices",
            bg_indices_key=f"{LABEL}_bg_indices",
        )
    )
    steps.append(DeleteItemsd(keys=[f"{LABEL}_fg_indices", f"{LABEL}_bg_indices"]))
    if data.slice_axis is not None:
        steps.append(SqueezeDimd(keys=keys, dim=data.slice_axis + 1))
    steps += augmentation_steps(config, keys, modes)
    steps.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False))
    return Compose(steps)


def augmentation_steps(config: Any, keys: list[str], modes: list[str]) -> list[Any]:
    """Flips, rotation/zoom and intensity augmentation of training patches (empty when disabled)."""
    aug, dims = config.augmentation, config.data.spatial_dims
    if not aug.enabled:
        return []
    steps: list[Any] = []
    axes = range(dims) if aug.flip_axes is None else aug.flip_axes
    if aug.flip_prob > 0:
        steps += [RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=int(a)) for a in axes]
    if aug.rotate_prob > 0 or aug.scale_prob > 0:
        steps.append(
            RandRotateScaled(
                keys,
                modes,
                dims,
                aug.rotate_deg,
                aug.rotate_prob,
                aug.scale_range,
                aug.scale_prob,
                dist_keys=[DIST] if DIST in keys else [],
            )
        )
    if aug.intensity_scale_prob > 0:
        steps.append(
            RandScaleIntensityd(keys=IMAGE, factors=aug.intensity_scale, prob=aug.intensity_scale_prob)
        )
    if aug.intensity_shift_prob > 0:
        steps.append(
            RandShiftIntensityd(keys=IMAGE, offsets=aug.intensity_shift, prob=aug.intensity_shift_prob)
        )
    if aug.noise_prob > 0:
        steps.append(RandGaussianNoised(keys=IMAGE, prob=aug.noise_prob, std=aug.noise_std))
    return steps
