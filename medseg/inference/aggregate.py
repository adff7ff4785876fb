"""Slab-wise aggregation of sliding-window outputs: the full ``(K, *spatial)`` buffer is never allocated.

Windows are visited in increasing order of their start along one spatial axis (the *slab axis*). Once every
window starting before position ``p`` has been added, no later window touches the planes before ``p``: they are
final and can be handed on (to an argmax, a resampler, ...) and their memory reused. The running sum of weighted
outputs and the sum of weights live in a ring buffer of ``capacity`` planes along the slab axis, which is about
one window deep instead of the whole volume.

The arithmetic is MONAI's ``sliding_window_inference``: ``sum(w * out) / sum(w)`` with the window weights ``w``
(the importance map), accumulated in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

__all__ = ["Slab", "SlabAggregator"]


@dataclass
class Slab:
    """Final blended scores of planes ``[start, stop)`` along ``axis`` (spatial axis index).

    ``scores`` has shape ``(K, *spatial)`` with ``stop - start`` planes along ``axis``.
    """

    axis: int
    start: int
    stop: int
    scores: torch.Tensor


class SlabAggregator:
    """Weighted sum of window outputs over a ring of planes along ``axis``.

    Args:
        spatial_shape: the spatial shape of the whole output.
        axis: the slab axis (index into ``spatial_shape``).
        capacity: planes kept at once along ``axis``; must cover every window that is not yet final
            (:func:`medseg.inference.sliding.ring_capacity` computes it from the window order).
        device: where the buffers live.

    The channel count is taken from the first window added. ``allocations`` lists the shapes of the buffers
    allocated (for tests and logs).
    """

    def __init__(
        self, spatial_shape: Sequence[int], axis: int, capacity: int, device: torch.device | str = "cpu"
    ) -> None:
        self.shape = tuple(int(s) for s in spatial_shape)
        if not 0 <= axis < len(self.shape):
            raise ValueError(f"axis {axis} is not an axis of a {len(self.shape)}D output")
        if not 1 <= capacity <= self.shape[axis]:
            raise ValueError(f"capacity must be in 1..{self.shape[axis]} planes, got {capacity}")
        self.axis = axis
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.done = 0  # planes before this are final and handed out
        self._sum: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None
        self.allocations: list[tuple[int, ...]] = []

    def _alloc(self, channels: int) -> None:
        ring = list(self.shape)
        ring[self.axis] = self.capacity
        self._sum = torch.zeros((channels, *ring), dtype=torch.float32, device=self.device)
        self._weight = torch.zeros((1, *ring), dtype=torch.float32, device=self.device)
        self.allocations += [tuple(self._sum.shape), tuple(self._weight.shape)]
        logger.debug(
            "slab aggregator: ring buffers %s and %s", tuple(self._sum.shape), tuple(self._weight.shape)
        )

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[slice, slice]]:
        """(ring slice, slice relative to ``start``) pieces of planes ``[start, stop)``, split at the wrap."""
        pos = start
        while pos < stop:
            r = pos % self.capacity
            n = min(stop - pos, self.capacity - r)
            yield slice(r, r + n), slice(pos - start, pos - start + n)
            pos += n

    def add(self, start: Sequence[int], weighted: torch.Tensor, weight: torch.Tensor) -> None:
        """Add one window: ``weighted`` = ``(K, *roi)`` output times ``weight`` ``(1, *roi)``, at ``start``."""
        if self._sum is None:
            self._alloc(int(weighted.shape[0]))
        roi = weighted.shape[1:]
        a0 = int(start[self.axis])
        a1 = a0 + int(roi[self.axis])
        if a0 < self.done:
            raise ValueError(f"window at plane {a0} arrives after planes up to {self.done} were finalized")
        if a1 - self.done > self.capacity:
            raise ValueError(
                f"window planes [{a0}, {a1}) do not fit the ring of {self.capacity} planes from plane {self.done}"
            )
        other = [slice(int(s), int(s) + int(n)) for s, n in zip(start, roi, strict=True)]
        for ring, rel in self._pieces(a0, a1):
            dst = list(other)
            dst[self.axis] = ring
            src = [slice(None)] * len(other)
            src[self.axis] = rel
            self._sum[(slice(None), *dst)] += weighted[(slice(None), *src)]
            self._weight[(slice(None), *dst)] += weight[(slice(None), *src)]

    def flush(self, upto: int) -> Iterator[Slab]:
        """Hand out planes ``[done, upto)`` as final (blended) slabs and clear their ring planes.

        A slab's ``scores`` is a view into the ring, valid until the iteration resumes: copy what you keep.
        """
        upto = min(int(upto), self.shape[self.axis])
        if upto <= self.done:
            return
        if self._sum is None or self._weight is None:
            raise ValueError(f"planes [{self.done}, {upto}) were never covered by a window")
        for ring, _rel in self._pieces(self.done, upto):
            idx = [slice(None)] * (len(self.shape) + 1)
            idx[self.axis + 1] = ring
            weight = self._weight[tuple(idx)]
            if bool((weight <= 0).any()):
                raise ValueError("a plane was finalized before every window covering it was added")
            scores = self._sum[tuple(idx)].div_(weight)
            start = self.done
            self.done += ring.stop - ring.start
            yield Slab(self.axis, start, self.done, scores)
            self._sum[tuple(idx)] = 0.0
            self._weight[tuple(idx)] = 0.0
