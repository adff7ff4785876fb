"""Separable resampling between two axis-aligned voxel grids (the native grid and the preprocessed grid).

``Orientation`` only permutes and flips the voxel axes and ``Spacing(diagonal=False)`` only rescales them, so the
voxel-index map between a study's grid and its preprocessed grid is, per destination axis, ``u = scale * v + offset``
on a single source axis. Linear interpolation on such a map is a product of 1-D interpolations: it needs no
coordinate grid (MONAI's resampling allocates one of ``3 x`` the output size) and can run on any sub-block.
Coordinates outside the source are clamped to its border, as MONAI's ``padding_mode="border"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "AxisMap",
    "Stencil",
    "axis_maps",
    "contiguous_range",
    "index_range",
    "lerp_axis",
    "nearest_inside",
    "stencil",
]

#: shear between the two grids (off-axis displacement in mm per mm along a destination axis) treated as rounding
#: of the headers and ignored. The DICOM reader accepts up to 1e-3 of shear (its gantry-tilt tolerance) and scanners
#: write orientations to about 6 digits; MONAI's ``Spacing`` removes that shear from the preprocessed grid, so the
#: two grids then differ by it. Ignoring it moves a model voxel by at most ``AXIS_TOL`` x its distance from the
#: origin voxel (0.6 mm across 300 mm); the label still lands on exactly the study grid.
AXIS_TOL = 2e-3


@dataclass(frozen=True)
class AxisMap:
    """Destination index ``v`` along one axis sits at source coordinate ``scale * v + offset`` on ``src_axis``."""

    src_axis: int
    scale: float
    offset: float

    def coords(self, indices: np.ndarray) -> np.ndarray:
        """Source coordinates (float64) of destination indices."""
        return self.scale * np.asarray(indices, dtype=np.float64) + self.offset


def axis_maps(
    src_affine: np.ndarray | torch.Tensor, dst_affine: np.ndarray | torch.Tensor
) -> tuple[AxisMap, ...]:
    """Per destination axis, the source axis and the linear index map from ``dst`` voxels to ``src`` voxels.

    Raises:
        ValueError: the grids are not axis-aligned with each other (a rotation between them).
    """
    src = np.asarray(src_affine, dtype=np.float64)
    dst = np.asarray(dst_affine, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] != src.shape[1]:
        raise ValueError(f"affines must be square and of one size, got {src.shape} and {dst.shape}")
    nd = src.shape[0] - 1
    m = np.linalg.solve(src, dst)  # dst index -> src index
    lin = m[:nd, :nd]
    src_mm = np.linalg.norm(src[:nd, :nd], axis=0)  # mm per source voxel, per source axis
    maps = []
    for d in range(nd):
        col = lin[:, d]
        s = int(np.argmax(np.abs(col) * src_mm))
        step_mm = float(np.linalg.norm(dst[:nd, d]))
        off_axis_mm = np.delete(np.abs(col) * src_mm, s)
        if off_axis_mm.size and off_axis_mm.sum() > AXIS_TOL * step_mm:
            raise ValueError(
                f"the grids are not axis-aligned (destination axis {d} mixes source axes: "
                f"{np.round(col, 6).tolist()}; shear {off_axis_mm.sum() / step_mm:.2g} > {AXIS_TOL})"
            )
        maps.append(AxisMap(src_axis=s, scale=float(col[s]), offset=float(m[s, nd])))
    if sorted(mp.src_axis for mp in maps) != list(range(nd)):
        raise ValueError("the grids are not axis-aligned (two destination axes map to one source axis)")
    return tuple(maps)


@dataclass(frozen=True)
class Stencil:
    """Linear-interpolation stencil of a set of coordinates on one axis: ``(1 - w) * x[lo] + w * x[hi]``."""

    lo: np.ndarray
    hi: np.ndarray
    weight: np.ndarray

    def shifted(self, origin: int) -> Stencil:
        """The same stencil with indices relative to ``origin`` (for a sub-block starting there)."""
        return Stencil(self.lo - origin, self.hi - origin, self.weight)


def stencil(coords: np.ndarray, size: int, lo_bound: int = 0, hi_bound: int | None = None) -> Stencil:
    """Stencil of ``coords`` on an axis of ``size`` voxels, clamped to the border (MONAI's ``"border"`` padding).

    A coordinate on a voxel centre (weight 0) reads that voxel only (``hi == lo``).

    ``lo_bound``/``hi_bound`` (inclusive) restrict the stencil further to a sub-range of the axis (a crop box):
    coordinates beyond it take the value of the range's edge voxel.
    """
    hi_bound = size - 1 if hi_bound is None else hi_bound
    u = np.clip(np.asarray(coords, dtype=np.float64), 0.0, size - 1)
    base = np.floor(u)
    weight = u - base
    lo = np.clip(base.astype(np.int64), lo_bound, hi_bound)
    hi = np.where(weight > 0, np.clip(base.astype(np.int64) + 1, lo_bound, hi_bound), lo)
    return Stencil(lo, hi, weight)


def lerp_axis(x: torch.Tensor, dim: int, st: Stencil) -> torch.Tensor:
    """Interpolate ``x`` along ``dim`` at the stencil's coordinates (indices relative to ``x``)."""
    lo = torch.as_tensor(st.lo, dtype=torch.long, device=x.device)
    hi = torch.as_tensor(st.hi, dtype=torch.long, device=x.device)
    a = x.index_select(dim, lo)
    if np.array_equal(st.lo, st.hi) or not np.any(st.weight):
        return a
    b = x.index_select(dim, hi)
    shape = [1] * x.ndim
    shape[dim] = -1
    w = torch.as_tensor(st.weight, dtype=x.dtype, device=x.device).view(shape)
    return a.lerp_(b, w)


def index_range(st: Stencil) -> tuple[int, int]:
    """The smallest index range ``[start, stop)`` that holds every voxel the stencil reads."""
    return int(min(st.lo.min(), st.hi.min())), int(max(st.lo.max(), st.hi.max())) + 1


def nearest_inside(coords: np.ndarray, size: int, start: int, stop: int) -> np.ndarray:
    """Boolean mask: the nearest voxel of each (border-clamped) coordinate lies in ``[start, stop)``."""
    u = np.clip(np.asarray(coords, dtype=np.float64), 0.0, size - 1)
    r = np.floor(u + 0.5).astype(np.int64)
    return (r >= start) & (r < stop)


def contiguous_range(mask: np.ndarray) -> tuple[int, int]:
    """``[start, stop)`` of the True entries of a 1-D mask known to be one run (``(0, 0)`` when none)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return 0, 0
    return int(idx[0]), int(idx[-1]) + 1
