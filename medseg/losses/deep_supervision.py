"""Deep supervision: one loss over the outputs of several decoder levels.

A network with deep supervision returns, in training, a list of outputs ordered from full resolution (index 0)
to the coarsest level. :class:`DeepSupervisionLoss` computes the inner loss at every level against the target
resized to that level's spatial size and returns the weighted sum.

Weights: by default level ``i`` gets ``2**-i`` (1, 1/2, 1/4, ...), normalised to sum 1, so the loss stays on the
scale of the inner loss whatever the number of levels. Explicit ``weights`` are normalised to sum 1 too.

Resizing: targets (class indices or one-hot masks) and signed distance maps are downsampled by nearest-neighbour
sampling (:func:`downsample_nearest`): every coarse voxel takes the value of one full-resolution voxel near the
centre of the block it covers, so labels stay labels (and keep their dtype) and distances stay exact distances in
millimetres. When ``full / coarse`` is a power of two this is ``interpolate(mode="nearest-exact")``; otherwise the
blocks follow medseg's UNet, whose level ``i`` has ``ceil(size / 2**i)`` voxels, voxel ``k`` covering ``[k 2**i, (k+1) 2**i)``.
An output that already has the target's spatial size uses the target (and distance maps) unchanged.

Extra inputs: distance maps reach the inner loss as a keyword, ``loss(pred, target, dist=dist)``; they are resized
like the target. Without ``dist`` the inner loss is called as ``loss(pred, target)``.

Why not ``monai.losses.DeepSupervisionLoss``: it computes the same weighted sum when given these normalised weights,
levels whose size halves exactly and a float target, but its default weights are not normalised and stop halving at
1/16; it downsamples with ``interpolate``, which raises on integer label maps; it calls the inner loss with
``(pred, target)`` only, so the boundary loss's distance maps cannot pass; and on odd sizes its nearest-exact
sampling picks other voxels than the UNet's blocks cover (9 -> 5 voxels: 0, 2, 4, 6, 8 instead of 1, 3, 5, 7, 8;
the loss differs by ~1e-2 on random logits). The test that shows each point:
``tests/test_losses.py::test_monai_deep_supervision_differs_where_medseg_keeps_its_own``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


def sample_indices(full: int, out: int) -> list[int]:
    """Full-resolution indices sampled for the ``out`` voxels of a coarse axis of a ``full``-voxel axis.

    If a power of two ``s`` gives ``ceil(full / s) == out`` (the smallest one is used), coarse voxel ``k`` covers
    full-resolution voxels ``[k s, (k + 1) s)`` (medseg's UNet heads, which pad only the high end) and takes voxel
    ``k s + s // 2`` (clipped to the last voxel for a partial block). Otherwise the ``nearest-exact`` rule
    ``floor((k + 0.5) * full / out)`` is used. The two rules agree when ``full / out`` is a power of two.
    """
    s = 2
    while s < 2 * full:
        if -(-full // s) == out:
            return [min(k * s + s // 2, full - 1) for k in range(out)]
        s *= 2
    return [min(int((k + 0.5) * full / out), full - 1) for k in range(out)]


def downsample_nearest(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Sample (B, C, *spatial) at the voxels of :func:`sample_indices` for ``size``; keeps dtype and values.

    Returns ``tensor`` itself when the spatial size already equals ``size``.
    """
    if tuple(tensor.shape[2:]) == tuple(size):
        return tensor
    for axis, (full, out) in enumerate(zip(tensor.shape[2:], size, strict=True), start=2):
        if full != out:
            index = torch.tensor(sample_indices(full, out), device=tensor.device)
            tensor = tensor.index_select(axis, index)
    return tensor


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the levels of a deeply supervised output.

    Args:
        loss: the inner loss, called as ``loss(pred, target)`` or ``loss(pred, target, dist=dist)``.
        weights: one non-negative weight per level (full resolution first), normalised to sum 1; their number must
            equal the number of outputs. ``None``: ``2**-i`` for level ``i``, normalised to sum 1.

    Call with a list/tuple of outputs (B, C, *spatial_i), or with a single tensor, which goes straight to the
    inner loss (inference-style output, or a network without deep supervision).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not callable(loss):
            raise ValueError(f"loss must be a callable loss module, got {type(loss).__name__}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"weights must be non-negative finite numbers with a positive sum, got {weights}"
                )
        self.loss = loss
        self.weights = weights
        self.requires_dist = bool(getattr(loss, "requires_dist", False))

    def level_weights(self, levels: int) -> list[float]:
        """The normalised weights for ``levels`` outputs."""
        if self.weights is None:
            raw = [0.5**i for i in range(levels)]
        elif len(self.weights) != levels:
            raise ValueError(
                f"got {levels} outputs but {len(self.weights)} weights; give one weight per output"
            )
        else:
            raw = list(self.weights)
        total = sum(raw)
        return [w / total for w in raw]

    def _call(self, pred: torch.Tensor, target: torch.Tensor, dist: torch.Tensor | None) -> torch.Tensor:
        if dist is None:
            return self.loss(pred, target)
        return self.loss(pred, target, dist=dist)

    def forward(
        self,
        pred: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        dist: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one output or of a list of outputs (full resolution first) against ``target`` (and ``dist``)."""
        if self.requires_dist and dist is None:
            raise ValueError(
                f"{type(self.loss).__name__} needs distance maps: call loss(pred, target, dist=dist)"
            )
        if isinstance(pred, torch.Tensor):
            return self._call(pred, target, dist)
        if not isinstance(pred, (list, tuple)) or not pred:
            raise ValueError(
                f"pred must be a tensor or a non-empty list of tensors, got {type(pred).__name__}"
            )
        full = tuple(target.shape[2:])
        for level, output in enumerate(pred):
            size = tuple(output.shape[2:])
            if output.ndim != target.ndim or any(s > f for s, f in zip(size, full, strict=True)):
                raise ValueError(
                    f"output {level} has shape {tuple(output.shape)}; every output must have the target's number "
                    f"of dimensions and spatial sizes no larger than the target {tuple(target.shape)}"
                )
        terms = []
        for weight, output in zip(self.level_weights(len(pred)), pred, strict=True):
            size = tuple(output.shape[2:])
            level_dist = None if dist is None else downsample_nearest(dist, size)
            terms.append(weight * self._call(output, downsample_nearest(target, size), level_dist))
        return sum(terms[1:], terms[0])
