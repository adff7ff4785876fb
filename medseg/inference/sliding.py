"""Sliding-window inference strategies: objects that receive the network (or a window predictor) at call time.

:class:`SlidingWindow` places windows exactly as MONAI's ``sliding_window_inference`` does (same starts, same
Gaussian importance map, same zero padding of inputs smaller than the window) and blends them the same way, but
streams the result: :meth:`SlidingWindow.slabs` yields final slabs along one axis as soon as no later window
touches them (:mod:`medseg.inference.aggregate`), so a caller that reduces each slab (argmax, resampling) never
holds the whole ``(K, *spatial)`` float32 output. Calling the object returns the whole output, for validation and
for tests against MONAI.

:func:`make_inferer` builds MONAI's own ``SlidingWindowInferer`` with the same settings (used by validation during
training).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map
from monai.inferers import SlidingWindowInferer

from medseg.errors import ConfigError
from medseg.inference.aggregate import Slab, SlabAggregator

logger = logging.getLogger(__name__)

__all__ = [
    "BLEND_MODES",
    "Slab",
    "SlidingWindow",
    "SlidingWindowConfig",
    "WindowLayout",
    "make_inferer",
    "ring_capacity",
    "scan_starts",
]

BLEND_MODES = ("gaussian", "constant")
SIGMA_SCALE = 0.125  # MONAI's default: sigma = 0.125 * window size

WindowPredictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SlidingWindowConfig:
    """Window size, overlap, batch of windows and blending of a sliding-window pass."""

    roi_size: tuple[int, ...]
    overlap: float = 0.5
    sw_batch_size: int = 4
    mode: str = "gaussian"

    def __post_init__(self) -> None:
        if not self.roi_size or any(int(s) < 1 for s in self.roi_size):
            raise ConfigError(f"inference.roi_size: positive sizes required, got {self.roi_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"inference.overlap: must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ConfigError(f"inference.sw_batch_size: must be >= 1, got {self.sw_batch_size}")
        if self.mode not in BLEND_MODES:
            raise ConfigError(f"inference.mode: {self.mode!r} is not one of {', '.join(BLEND_MODES)}")


def make_inferer(
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    device: torch.device | str | None = None,
) -> SlidingWindowInferer:
    """A MONAI sliding-window inferer with Gaussian blending (validated settings)."""
    cfg = SlidingWindowConfig(tuple(int(s) for s in roi_size), float(overlap), int(sw_batch_size), mode)
    return SlidingWindowInferer(
        roi_size=cfg.roi_size,
        overlap=cfg.overlap,
        sw_batch_size=cfg.sw_batch_size,
        mode=cfg.mode,
        sigma_scale=SIGMA_SCALE,
        padding_mode="constant",
        cval=0.0,
        device=device,
        progress=False,
    )


# ------------------------------------------------------------------------------------------------ window layout
def scan_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis of ``size`` voxels (``size >= roi``), as MONAI places them.

    The step is ``int(roi * (1 - overlap))`` (at least 1; a window as large as the axis gives one window), and the
    last window is moved back to end at the border.
    """
    if size < roi:
        raise ValueError(f"axis of {size} voxels is smaller than the window ({roi}); pad it first")
    step = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    starts = []
    for k in range(-(-size // step)):
        start = k * step
        starts.append(min(start, size - roi))
        if start + roi >= size:
            break
    return starts


def ring_capacity(starts: Sequence[Sequence[int]], roi: Sequence[int], axis: int) -> int:
    """Planes the ring buffer needs along ``axis`` when windows (sorted along it) are added one after another.

    Before a window is added, the planes before its start are finalized; the ring must hold everything from there
    to the furthest window end added so far.
    """
    need, end = 1, 0
    for st in starts:
        end = max(end, int(st[axis]) + int(roi[axis]))
        need = max(need, end - int(st[axis]))
    return need


def choose_slab_axis(shape: Sequence[int], roi: Sequence[int]) -> int:
    """The axis along which a ring of about one window is the smallest fraction of the volume."""
    ratios = [int(s) / int(r) for s, r in zip(shape, roi, strict=True)]
    return int(np.argmax(ratios))


# ------------------------------------------------------------------------------------------------ layout
Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class WindowLayout:
    """The windows of a sliding-window pass over a grid, possibly only those that touch a region.

    Attributes:
        shape: spatial shape of the whole grid.
        roi: window size.
        before: zero padding added before each axis (a grid smaller than the window is padded, as MONAI does).
        padded: spatial shape after padding.
        axis: the slab axis.
        starts: window starts in padded coordinates, sorted along ``axis``.
        total: number of windows of the whole grid.
        hull: per axis ``(start, stop)`` in grid coordinates of the voxels the selected windows cover: the image
            to pass to :meth:`SlidingWindow.slabs` and the extent of the slabs it yields.
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    before: tuple[int, ...]
    padded: tuple[int, ...]
    axis: int
    starts: tuple[tuple[int, ...], ...]
    total: int
    hull: Box

    @property
    def hull_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.hull)


# ------------------------------------------------------------------------------------------------ inferer
class SlidingWindow:
    """Gaussian-blended sliding window whose output is streamed in final slabs.

    Args:
        config: window size, overlap, windows per network call and blending mode.
        slab_axis: spatial axis of the slabs; default: the axis where one window is the smallest fraction of the
            grid (so the ring buffer is smallest).
        device: where windows are blended (default: the input's device).

    Windows are always placed as on the whole grid. :meth:`layout` with a ``region`` keeps only the windows that
    touch it: every voxel of the region then gets exactly the windows, hence the values, of the whole-grid pass,
    and windows over the rest (air around a body) are skipped. ``overlap`` is exposed for provenance records.
    """

    def __init__(
        self,
        config: SlidingWindowConfig,
        *,
        slab_axis: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.slab_axis = slab_axis
        self.device = None if device is None else torch.device(device)
        self.last_allocations: list[tuple[int, ...]] = []
        self.last_windows = 0
        self._importance: dict[tuple, torch.Tensor] = {}

    @property
    def overlap(self) -> float:
        return self.config.overlap

    def importance(self, roi: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The ``(1, *roi)`` window weights (MONAI's importance map), computed once per size and device."""
        key = (roi, str(device))
        if key not in self._importance:
            imp = compute_importance_map(
                roi, mode=self.config.mode, sigma_scale=SIGMA_SCALE, device=device, dtype=torch.float32
            )
            self._importance[key] = imp.reshape(1, *roi)
        return self._importance[key]

    def layout(self, shape: Sequence[int], region: Box | None = None) -> WindowLayout:
        """The whole-grid windows of a grid of ``shape``, restricted to those touching ``region`` (grid coords)."""
        roi = tuple(int(r) for r in self.config.roi_size)
        shape = tuple(int(s) for s in shape)
        if len(roi) != len(shape):
            raise ValueError(f"a {len(roi)}D window cannot slide over a grid of spatial shape {shape}")
        padded = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
        before = tuple((p - s) // 2 for p, s in zip(padded, shape, strict=True))
        axis = choose_slab_axis(padded, roi) if self.slab_axis is None else int(self.slab_axis)
        if not 0 <= axis < len(shape):
            raise ValueError(f"slab_axis {axis} is not an axis of a {len(shape)}D grid")
        region = (
            tuple((0, n) for n in shape) if region is None else tuple((int(a), int(b)) for a, b in region)
        )
        if len(region) != len(shape) or any(
            not 0 <= a < b <= n for (a, b), n in zip(region, shape, strict=True)
        ):
            raise ValueError(f"region {region} is not a non-empty box inside the grid {shape}")
        per_axis, total, hull = [], 1, []
        for d in range(len(shape)):
            all_starts = scan_starts(padded[d], roi[d], self.config.overlap)
            total *= len(all_starts)
            r0, r1 = region[d][0] + before[d], region[d][1] + before[d]
            kept = [s for s in all_starts if s < r1 and s + roi[d] > r0]
            per_axis.append(kept)
            lo, hi = kept[0] - before[d], kept[-1] + roi[d] - before[d]
            hull.append((max(lo, 0), min(hi, shape[d])))
        grid = np.stack(np.meshgrid(*per_axis, indexing="ij"), axis=-1).reshape(-1, len(shape))
        order = np.argsort(grid[:, axis], kind="stable")
        starts = tuple(tuple(int(v) for v in grid[i]) for i in order)
        return WindowLayout(shape, roi, before, padded, axis, starts, total, tuple(hull))

    def slabs(
        self, image: torch.Tensor, predict: WindowPredictor, layout: WindowLayout | None = None
    ) -> Iterator[Slab]:
        """Blend ``predict`` over the windows of ``layout``; yield final slabs of its hull.

        Args:
            image: ``(C, *hull)``: the grid's voxels inside ``layout.hull`` (the whole grid when ``layout`` is None).
            predict: maps a ``(B, C, *roi)`` batch of windows to ``(B, K, *roi)`` scores (logits).
            layout: from :meth:`layout`; default: every window of ``image``'s grid.

        Slabs come in increasing order along :attr:`Slab.axis`, in hull coordinates, and together tile the hull.
        Their scores are views into the blending buffer, valid until the iteration resumes: copy what you keep.
        """
        if layout is None:
            layout = self.layout(image.shape[1:])
        if tuple(image.shape[1:]) != layout.hull_shape:
            raise ValueError(
                f"image of spatial shape {tuple(image.shape[1:])} for a hull of {layout.hull_shape}"
            )
        roi, axis, nd = layout.roi, layout.axis, len(layout.roi)
        device = self.device or image.device
        # the padded span of the selected windows, and where the image sits in it
        lo = [min(st[d] for st in layout.starts) for d in range(nd)]
        span = [max(st[d] for st in layout.starts) + roi[d] - lo[d] for d in range(nd)]
        offset = [layout.hull[d][0] + layout.before[d] - lo[d] for d in range(nd)]
        pads: list[int] = []
        for d in reversed(range(nd)):
            pads += [offset[d], span[d] - offset[d] - image.shape[1 + d]]
        if any(pads):
            image = F.pad(image, pads, mode="constant", value=0.0)
        starts = [tuple(st[d] - lo[d] for d in range(nd)) for st in layout.starts]
        batch = self.config.sw_batch_size
        agg = SlabAggregator(span, axis, ring_capacity(starts, roi, axis), device)
        weight = self.importance(roi, device)
        self.last_windows = len(starts)
        for i in range(0, len(starts), batch):
            chunk = starts[i : i + batch]
            windows = torch.stack(
                [
                    image[(slice(None), *(slice(s, s + r) for s, r in zip(st, roi, strict=True)))]
                    for st in chunk
                ]
            ).to(device)
            with torch.no_grad():
                out = predict(windows)
            if out.shape[0] != len(chunk) or tuple(out.shape[2:]) != roi:
                raise ValueError(
                    f"the network returned shape {tuple(out.shape)} for windows {tuple(windows.shape)}; "
                    f"expected ({len(chunk)}, K, {', '.join(map(str, roi))})"
                )
            out = out.to(device=device, dtype=torch.float32)
            for j, (st, o) in enumerate(zip(chunk, out, strict=True)):
                # planes before the next window's start are final (a batch may span two layers of windows)
                upto = starts[i + j + 1][axis] if i + j + 1 < len(starts) else span[axis]
                agg.add(st, o.mul_(weight), weight)
                for slab in agg.flush(upto):
                    cropped = _crop(slab, offset, layout.hull_shape)
                    if cropped is not None:
                        yield cropped
        self.last_allocations = list(agg.allocations)

    def __call__(self, inputs: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The whole blended output ``(B, K, *spatial)`` of a ``(B, C, *spatial)`` batch (one image at a time)."""
        out: torch.Tensor | None = None
        for b in range(inputs.shape[0]):
            for slab in self.slabs(inputs[b], network):
                if out is None:
                    out = torch.empty(
                        (inputs.shape[0], slab.scores.shape[0], *inputs.shape[2:]),
                        dtype=torch.float32,
                        device=slab.scores.device,
                    )
                idx = [slice(None)] * (inputs.ndim - 2)
                idx[slab.axis] = slice(slab.start, slab.stop)
                out[(b, slice(None), *idx)] = slab.scores
        if out is None:
            raise ValueError(f"empty input batch of shape {tuple(inputs.shape)}")
        return out


def _crop(slab: Slab, offset: Sequence[int], shape: Sequence[int]) -> Slab | None:
    """The part of a slab of the padded span that lies in the image (at ``offset``), in image coordinates."""
    a = slab.axis
    lo = max(slab.start, offset[a])
    hi = min(slab.stop, offset[a] + shape[a])
    if hi <= lo:
        return None
    idx = [slice(o, o + s) for o, s in zip(offset, shape, strict=True)]
    idx[a] = slice(lo - slab.start, hi - slab.start)
    return Slab(a, lo - offset[a], hi - offset[a], slab.scores[(slice(None), *idx)])
