"""Labels on the study's own grid from slabs of scores on the preprocessed grid, as the slabs arrive.

The label of a study voxel is the argmax of the scores linearly interpolated at its position on the preprocessed
grid (border-clamped): what MONAI's tutorials compute with ``Invertd(nearest_interp=False)`` on the network output
followed by ``AsDiscrete(argmax=True)``, and a better boundary than inverting the argmax with nearest neighbours.

It is computed without interpolating K channels everywhere. Interpolation weights are non-negative, so when the
(up to ``2**n``) model voxels around a study voxel share one argmax label, the interpolated scores have that argmax
too. The inverter therefore resamples the ``uint8`` label of the model grid twice, as the minimum and the maximum
over each voxel's stencil (separably, like the interpolation), and interpolates the scores only where the two
differ: a thin band along label boundaries.

Because the two grids are axis-aligned (:mod:`medseg.inference.resample`), a study plane across the slab axis needs
two consecutive model planes; it is computed as soon as both are final, and only its label is kept. Study voxels
whose nearest model voxel lies outside the crop box are background.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from medseg.inference.aggregate import Slab
from medseg.inference.resample import AxisMap, Stencil, contiguous_range, nearest_inside, stencil

logger = logging.getLogger(__name__)

__all__ = ["LabelInverter", "channel_argmax", "label_dtype_for"]

CHUNK_VOXELS = 1 << 20  # study voxels labelled at a time


def label_dtype_for(num_classes: int) -> torch.dtype:
    """The smallest integer dtype for labels ``0 .. num_classes - 1``."""
    if num_classes <= 256:
        return torch.uint8
    if num_classes <= 32768:
        return torch.int16
    return torch.int32


def channel_argmax(scores: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``scores.argmax(0)`` as ``dtype`` (the first maximum wins, as in torch), a channel at a time (faster)."""
    best = scores[0].clone()
    label = torch.zeros(scores.shape[1:], dtype=dtype, device=scores.device)
    for k in range(1, scores.shape[0]):
        label.masked_fill_(scores[k] > best, k)
        torch.maximum(best, scores[k], out=best)
    return label


def _select(x: torch.Tensor, dim: int, idx: np.ndarray) -> torch.Tensor:
    return x.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=x.device))


def stencil_min_max(
    lo_lab: torch.Tensor, hi_lab: torch.Tensor, dim: int, st: Stencil
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of labels over each stencil along ``dim`` (both inputs already reduced on other dims)."""
    a = _select(lo_lab, dim, st.lo)
    b = _select(hi_lab, dim, st.lo)
    if np.array_equal(st.lo, st.hi):
        return a, b
    return torch.minimum(a, _select(lo_lab, dim, st.hi)), torch.maximum(b, _select(hi_lab, dim, st.hi))


class LabelInverter:
    """Collects final slabs of the model grid into a label map on the study grid.

    Args:
        out_shape: spatial shape of the study grid.
        maps: per study axis, its model axis and index map (:func:`~medseg.inference.resample.axis_maps` from the
            model affine to the study affine).
        pre_shape: spatial shape of the whole model grid.
        hull: per model axis, ``(start, stop)`` of the part of the model grid the slabs cover (slab coordinates
            are relative to its start); interpolation is clamped to it.
        box: the crop box inside ``hull`` (default: the hull): study voxels whose nearest model voxel is outside
            it are background.
        dtype: label dtype.

    ``band_voxels`` counts the study voxels whose scores were interpolated.
    """

    def __init__(
        self,
        out_shape: Sequence[int],
        maps: Sequence[AxisMap],
        pre_shape: Sequence[int],
        hull: Sequence[tuple[int, int]],
        box: Sequence[tuple[int, int]] | None = None,
        dtype: torch.dtype = torch.uint8,
    ) -> None:
        self.out_shape = tuple(int(s) for s in out_shape)
        self.maps = tuple(maps)
        self.pre_shape = tuple(int(s) for s in pre_shape)
        self.hull = tuple((int(a), int(b)) for a, b in hull)
        self.box = self.hull if box is None else tuple((int(a), int(b)) for a, b in box)
        if any(not h0 <= b0 < b1 <= h1 for (h0, h1), (b0, b1) in zip(self.hull, self.box, strict=True)):
            raise ValueError(f"box {self.box} is not a non-empty box inside the hull {self.hull}")
        self.dtype = dtype
        self.label = torch.zeros(self.out_shape, dtype=dtype)
        nd = len(self.out_shape)
        self.study_axis = [0] * nd  # model axis -> study axis
        for o, mp in enumerate(self.maps):
            self.study_axis[mp.src_axis] = o
        # per model axis: the study index range inside the box, and its stencil in hull coordinates
        self.inside: list[tuple[int, int]] = []
        self.stencils: list[Stencil] = []
        for d in range(nd):
            mp = self.maps[self.study_axis[d]]
            u = mp.coords(np.arange(self.out_shape[self.study_axis[d]]))
            i0, i1 = contiguous_range(nearest_inside(u, self.pre_shape[d], *self.box[d]))
            h0, h1 = self.hull[d]
            self.inside.append((i0, i1))
            self.stencils.append(stencil(u[i0:i1], self.pre_shape[d], h0, h1 - 1).shifted(h0))
        self.band_voxels = 0
        self._axis: int | None = None
        self._parts: list[tuple[int, torch.Tensor]] = []  # (first plane, scores) of the final planes at hand
        self._labels: torch.Tensor | None = None  # their argmax, from plane _kept_start on
        self._kept_start = 0  # hull coordinate of the first kept plane
        self._next = 0  # study planes (in slab order) already written

    @property
    def empty(self) -> bool:
        """No study voxel maps into the box (the label stays all background)."""
        return any(i1 <= i0 for i0, i1 in self.inside)

    def add(self, slab: Slab) -> None:
        """Take the next final slab (planes ``[start, stop)`` along ``slab.axis``, hull coordinates).

        The slab's scores are only read during this call (they may be a view into a reused buffer); the one or
        two planes still needed by later study planes are copied.
        """
        if self._axis is None:
            self._axis = slab.axis
        elif slab.axis != self._axis:
            raise ValueError(f"slab along axis {slab.axis} after slabs along axis {self._axis}")
        a = slab.axis
        labels = channel_argmax(slab.scores, self.dtype)
        if self._labels is None:
            self._labels, self._kept_start = labels, slab.start
        else:
            if slab.start != self._kept_start + self._labels.shape[a]:
                raise ValueError(f"slab [{slab.start}, {slab.stop}) does not follow the previous slabs")
            self._labels = torch.cat([self._labels, labels], dim=a)
        self._parts.append((slab.start, slab.scores))
        if not self.empty:
            self._emit_ready(slab.stop)
        self._drop_before(self._first_needed(slab.stop))

    def _order(self) -> np.ndarray:
        """Study planes along the slab axis (positions in the inside range) in the order they become ready."""
        a = self._axis
        n = self.stencils[a].lo.size
        order = np.arange(n)
        return order[::-1] if self.maps[self.study_axis[a]].scale < 0 else order

    def _emit_ready(self, final_stop: int) -> None:
        a = self._axis
        st = self.stencils[a]
        order = self._order()
        need = np.maximum(st.lo, st.hi)[order]
        ready = int(np.searchsorted(np.maximum.accumulate(need), final_stop, side="left"))
        plane = int(np.prod([i1 - i0 for d, (i0, i1) in enumerate(self.inside) if d != a]))
        step = max(1, CHUNK_VOXELS // max(plane, 1))
        while self._next < ready:
            take = order[self._next : min(ready, self._next + step)]
            self._write(np.sort(take))
            self._next += take.size

    def _first_needed(self, final_stop: int) -> int:
        if self.empty or self._next >= self.stencils[self._axis].lo.size:
            return final_stop
        st = self.stencils[self._axis]
        rest = self._order()[self._next :]
        return int(min(st.lo[rest].min(), st.hi[rest].min()))

    def _drop_before(self, first: int) -> None:
        """Forget planes before ``first``; copy the kept planes of the current slab (its buffer is only lent)."""
        a = self._axis
        first = min(first, self._kept_start + self._labels.shape[a])
        drop = first - self._kept_start
        if drop > 0:
            self._labels = self._labels.narrow(a, drop, self._labels.shape[a] - drop)
            self._kept_start = first
        kept = []
        for p0, t in self._parts:
            n = t.shape[1 + a]
            lo = max(first - p0, 0)
            if lo < n:
                kept.append((p0 + lo, t.narrow(1 + a, lo, n - lo).clone()))
        self._parts = kept

    def _write(self, planes: np.ndarray) -> None:
        """Label study planes ``planes`` (ascending, contiguous positions in the inside range)."""
        a = self._axis
        nd = len(self.out_shape)
        st = self.stencils[a]
        sub = [
            Stencil(st.lo[planes], st.hi[planes], st.weight[planes]).shifted(self._kept_start)
            if d == a
            else self.stencils[d]
            for d in range(nd)
        ]
        lo_lab, hi_lab = self._labels, self._labels
        for d in range(nd):
            lo_lab, hi_lab = stencil_min_max(lo_lab, hi_lab, d, sub[d])
        band = (lo_lab != hi_lab).nonzero()
        if band.shape[0]:
            lo_lab[tuple(band.T)] = channel_argmax(self._interpolate(band, sub), self.dtype)
            self.band_voxels += int(band.shape[0])
        lab = lo_lab.permute(*[mp.src_axis for mp in self.maps]).cpu()  # model axis order -> study axis order
        idx = []
        for o in range(nd):
            d = self.maps[o].src_axis
            i0, i1 = self.inside[d]
            idx.append(slice(i0 + int(planes[0]), i0 + int(planes[-1]) + 1) if d == a else slice(i0, i1))
        self.label[tuple(idx)] = lab

    def _interpolate(self, band: torch.Tensor, sub: Sequence[Stencil]) -> torch.Tensor:
        """``(K, n)`` scores linearly interpolated at ``band`` (``(n, nd)`` chunk positions), corner by corner."""
        nd = band.shape[1]
        pos = band.cpu().numpy()
        lo = [torch.as_tensor(sub[d].lo[pos[:, d]], device=band.device) for d in range(nd)]
        hi = [torch.as_tensor(sub[d].hi[pos[:, d]], device=band.device) for d in range(nd)]
        w = [
            torch.as_tensor(sub[d].weight[pos[:, d]], dtype=torch.float32, device=band.device)
            for d in range(nd)
        ]
        channels = self._parts[0][1].shape[0]
        out = torch.zeros((channels, band.shape[0]), dtype=torch.float32, device=band.device)
        for corner in range(2**nd):
            weight = torch.ones(band.shape[0], dtype=torch.float32, device=band.device)
            index = []
            for d in range(nd):
                upper = corner >> d & 1
                weight = weight * (w[d] if upper else 1.0 - w[d])
                index.append(hi[d] if upper else lo[d])
            out += self._gather(index, channels) * weight
        return out

    def _gather(self, index: list[torch.Tensor], channels: int) -> torch.Tensor:
        """``(K, n)`` scores at model voxels ``index`` (slab-axis positions relative to the first kept plane)."""
        a = self._axis
        plane = index[a] + self._kept_start
        out = torch.empty((channels, plane.shape[0]), dtype=torch.float32, device=plane.device)
        for p0, t in self._parts:
            sel = (plane >= p0) & (plane < p0 + t.shape[1 + a])
            if bool(sel.any()):
                sub = [ix[sel] for ix in index]
                sub[a] = plane[sel] - p0
                out[:, sel] = t[(slice(None), *sub)]
        return out

    def result(self) -> torch.Tensor:
        """The label map on the study grid (call after the last slab)."""
        if not self.empty and (self._axis is None or self._next < self.stencils[self._axis].lo.size):
            raise ValueError("the slabs did not cover the whole hull")
        return self.label
