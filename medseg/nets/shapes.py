"""Shape helpers of the networks: input checks, and padding to a multiple of ``2**depth`` and cropping back.

Networks pad the high end of every spatial axis with zeros up to a multiple of ``2**depth`` and crop their outputs
back (:func:`pad_to_multiple`, :func:`crop_padding`), so any input size works. When padding is not needed (eager
mode, sizes already multiples) nothing is copied. While torch.export / torch.compile / TorchScript trace
(:func:`is_tracing`) the pads are always recorded, so exported graphs work for every size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def is_tracing() -> bool:
    """True while torch.export / torch.compile / TorchScript tracing: shapes may be symbolic there."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad the high end of each spatial axis of ``x`` (B, C, *spatial) up to a multiple of ``multiple``.

    Returns the padded tensor and the ``F.pad`` list used (last axis first, ``[0, pad]`` per axis), to be passed to
    :func:`crop_padding`. The low end is never padded, so voxel ``k`` of a level downsampled by ``2**i`` covers
    input voxels ``[k * 2**i, (k + 1) * 2**i)``. Eager calls with nothing to pad return ``x`` itself (no copy).
    While tracing the pad is always recorded (possibly of zero), so exported graphs work for every size.
    """
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % multiple]
    if is_tracing() or any(pad != 0 for pad in pads):
        x = F.pad(x, pads)
    return x, pads


def crop_padding(y: torch.Tensor, pads: list[int], scale: int = 1) -> torch.Tensor:
    """Remove the padding added by :func:`pad_to_multiple` from ``y``, a map downsampled by ``scale``.

    At full resolution (``scale=1``) the output gets the input's size; at ``scale = 2**i`` it gets
    ``ceil(size / 2**i)`` per axis (the voxels that still see some input). Cropping is a negative ``F.pad`` because
    it traces into shape-generic graphs for torch.export and ONNX (slicing specialises on whether it crops).
    """
    crop = [-(pad // scale) for pad in pads]
    if not is_tracing() and not any(crop):
        return y
    return F.pad(y, crop)


def check_input(x: torch.Tensor, spatial_dims: int, in_channels: int) -> None:
    """Raise ValueError unless ``x`` is (B, in_channels, *spatial) with ``spatial_dims`` spatial axes."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"expected input of shape (B, {in_channels}, {', '.join('N' * spatial_dims)}) for a {spatial_dims}D network, "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"expected {in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
