"""Preprocessing for inference: the training preprocessing of a study, computed only where the windows need it.

Training (:mod:`medseg.training.transforms`) normalizes each channel on the native grid, reorients, resamples to the
model spacing (bilinear, border padding) and, with ``train.crop_foreground``, crops to the bounding box of the voxels
where any *raw* channel exceeds ``train.foreground_threshold``, plus ``train.foreground_margin`` voxels (stored in
the model's contract as :class:`medseg.contract.CropRule`). Here

* :func:`model_grid` takes the target grid (shape and affine) from MONAI's own ``Orientation``/``Spacing`` run
  lazily, so it is exactly the training grid, without touching voxels;
* :func:`foreground_box` finds the crop box from per-axis projections of the threshold mask, computed slab by slab;
* :func:`resample_box` normalizes and resamples (separably, :mod:`medseg.inference.resample`) only the voxels of a
  box of the model grid, a chunk at a time. Point-wise normalizers (CT window, none) run per chunk, on the stored
  dtype; normalizers with image statistics (z-score, percentiles) run once on the whole native image first, exactly
  as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor

from medseg.contract import CropRule
from medseg.data.normalization import ChannelNormalize, Normalizer
from medseg.inference.resample import AxisMap, Stencil, axis_maps, index_range, lerp_axis, stencil

logger = logging.getLogger(__name__)

__all__ = [
    "ModelGrid",
    "foreground_box",
    "model_grid",
    "resample_box",
]

CHUNK_VOXELS = 1 << 18  # study voxels per channel read, normalized and resampled at a time


@dataclass(frozen=True)
class ModelGrid:
    """The preprocessed (model) grid of a study.

    Attributes:
        affine: its affine (float64).
        shape: its spatial shape.
        maps: per model axis, the study axis it reads and the index map (model index -> study index).
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    maps: tuple[AxisMap, ...]

    @property
    def whole(self) -> tuple[tuple[int, int], ...]:
        return tuple((0, n) for n in self.shape)


def model_grid(image: MetaTensor, orientation: str, spacing: Sequence[float]) -> ModelGrid:
    """The model grid of ``image``, from MONAI's ``Orientation`` + ``Spacing`` run lazily (no voxel is touched).

    Raises:
        ValueError: the model grid is not axis-aligned with the study grid (cannot happen for a reorientation
            followed by a change of spacing; the message names the axes).
    """
    from monai.transforms import Orientation, Spacing

    nd = image.ndim - 1
    stand_in = MetaTensor(torch.zeros(1).expand(1, *image.shape[1:]), affine=image.affine.clone())
    oriented = Orientation(axcodes=orientation, labels=None, lazy=True)(stand_in)
    spaced = Spacing(pixdim=list(spacing), lazy=True)(oriented)
    affine = np.asarray(spaced.peek_pending_affine(), dtype=np.float64)
    shape = tuple(int(s) for s in spaced.peek_pending_shape())
    if affine.shape != (nd + 1, nd + 1) or len(shape) != nd:
        raise ValueError(f"unexpected preprocessed geometry {affine.shape} / {shape} for a {nd}D image")
    return ModelGrid(affine, shape, axis_maps(np.asarray(image.affine, dtype=np.float64), affine))


def _slowest_axis(x: torch.Tensor) -> int:
    """The spatial axis of ``(C, *spatial)`` with the largest stride (slabs along it are contiguous)."""
    strides = x.stride()[1:]
    return int(np.argmax([s if n > 1 else -1 for s, n in zip(strides, x.shape[1:], strict=True)]))


def _planes_per_chunk(x: torch.Tensor, axis: int) -> int:
    plane = max(1, int(np.prod(x.shape[1:])) // max(1, x.shape[1 + axis]))
    return max(1, CHUNK_VOXELS // plane)


def foreground_projections(image: torch.Tensor, threshold: float) -> list[np.ndarray]:
    """Per spatial axis, which planes hold a voxel where any channel exceeds ``threshold`` (slab by slab)."""
    nd = image.ndim - 1
    axis = _slowest_axis(image)
    step = _planes_per_chunk(image, axis)
    proj = [np.zeros(n, dtype=bool) for n in image.shape[1:]]
    for a0 in range(0, image.shape[1 + axis], step):
        idx = [slice(None)] * (nd + 1)
        idx[1 + axis] = slice(a0, a0 + step)
        mask = (image[tuple(idx)] > threshold).any(dim=0)
        for d in range(nd):
            others = tuple(e for e in range(nd) if e != d)
            p = (mask.any(dim=others) if others else mask).cpu().numpy()
            if d == axis:
                proj[d][a0 : a0 + p.shape[0]] |= p
            else:
                proj[d] |= p
    return proj


def foreground_box(image: torch.Tensor, grid: ModelGrid, rule: CropRule) -> tuple[tuple[int, int], ...]:
    """The crop box on the model grid of the raw ``(C, *spatial)`` study voxels ``image``.

    Training takes the bounding box of the threshold mask after nearest-neighbour resampling, plus the margin.
    Here a model plane counts as foreground when the study planes on either side of its coordinate hold
    foreground, so the box contains the training box (and is at most one voxel larger per side). No voxel above
    the threshold keeps the whole grid, as training does.
    """
    proj = foreground_projections(image, rule.threshold)
    if not all(p.any() for p in proj):
        logger.warning(
            "no voxel above the foreground threshold %g; the whole image is segmented", rule.threshold
        )
        return grid.whole
    box = []
    for d, mp in enumerate(grid.maps):
        fg = np.flatnonzero(proj[mp.src_axis])
        lo, hi = int(fg[0]), int(fg[-1])
        u = mp.coords(np.arange(grid.shape[d]))
        hit = np.flatnonzero((np.floor(u) <= hi) & (np.ceil(u) >= lo))
        if hit.size == 0:
            logger.warning("the foreground lies outside the model grid along axis %d; no crop", d)
            return grid.whole
        box.append((max(int(hit[0]) - rule.margin, 0), min(int(hit[-1]) + rule.margin + 1, grid.shape[d])))
    return tuple(box)


def resample_box(
    image: MetaTensor, normalizers: Sequence[Normalizer], grid: ModelGrid, box: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Normalized, reoriented, resampled voxels ``(C, *box)`` of the model grid inside ``box``.

    Equal (to float rounding) to the same box of :func:`medseg.data.preprocess.build_preprocess`'s output.
    """
    native = image.as_tensor()
    normalize = ChannelNormalize(list(normalizers))
    pointwise = all(n.pointwise for n in normalize.normalizers)  # else: statistics of the whole image, as in training
    if not pointwise:
        native = normalize(native)
    maps, nd = grid.maps, len(grid.shape)
    sten = [
        stencil(mp.coords(np.arange(box[d][0], box[d][1])), native.shape[1 + mp.src_axis])
        for d, mp in enumerate(maps)
    ]
    out = torch.empty((native.shape[0], *(b1 - b0 for b0, b1 in box)), dtype=torch.float32)
    # chunks along the model axis that reads the study axis with the largest stride (contiguous reads), sized by
    # the study voxels one model plane reads
    slow = _slowest_axis(native)
    d_chunk = next(d for d, mp in enumerate(maps) if mp.src_axis == slow)
    reads = [index_range(st) for st in sten]
    per_plane = max(1.0, abs(maps[d_chunk].scale)) * float(
        np.prod([b - a for d, (a, b) in enumerate(reads) if d != d_chunk])
    )
    step = max(1, int(CHUNK_VOXELS // per_plane))
    for v0 in range(0, out.shape[1 + d_chunk], step):
        v1 = min(v0 + step, out.shape[1 + d_chunk])
        part = list(sten)
        part[d_chunk] = Stencil(sten[d_chunk].lo[v0:v1], sten[d_chunk].hi[v0:v1], sten[d_chunk].weight[v0:v1])
        ranges = [index_range(st) for st in part]  # per model axis, the study index range it reads
        src: list[slice] = [slice(None)] * (nd + 1)
        for d, mp in enumerate(maps):
            src[1 + mp.src_axis] = slice(*ranges[d])
        block = native[tuple(src)]
        block = normalize(block) if pointwise else block.to(torch.float32)
        block = block.permute(0, *[1 + mp.src_axis for mp in maps])  # study axes -> model axis order
        for d in range(nd):
            block = lerp_axis(block, 1 + d, part[d].shifted(ranges[d][0]))
        dst: list[slice] = [slice(None)] * (nd + 1)
        dst[1 + d_chunk] = slice(v0, v1)
        out[tuple(dst)] = block
    return out

