"""Sliding-window inference strategy: an object that receives the network at call time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.inferers import SlidingWindowInferer

from medseg.errors import ConfigError

BLEND_MODES = ("gaussian", "constant")


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
    roi_size: Sequence[int], overlap: float = 0.5, sw_batch_size: int = 4, mode: str = "gaussian",
    device: torch.device | str | None = None,
) -> SlidingWindowInferer:
    """A MONAI sliding-window inferer with Gaussian blending (validated settings)."""
    cfg = SlidingWindowConfig(tuple(int(s) for s in roi_size), float(overlap), int(sw_batch_size), mode)
    return SlidingWindowInferer(
        roi_size=cfg.roi_size, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size, mode=cfg.mode,
        sigma_scale=0.125, padding_mode="constant", cval=0.0, device=device, progress=False,
    )
