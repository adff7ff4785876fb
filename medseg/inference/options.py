"""``InferenceOptions``: how to run a model, passed whole from the command line (or the caller) to the engine.

Every field left at None takes the model's own setting from its :class:`~medseg.contract.DataContract` (window
overlap and batch, crop, postprocessing) or the device's default (mixed precision on CUDA, channels-last on CPU
where it is exact). The options are plain data, so worker processes and Ray actors receive them as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medseg.errors import ConfigError

__all__ = ["InferenceOptions"]


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a model.

    Attributes:
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda:N"``.
        tta: mirroring test-time augmentation: in every window, the mean of the logits over all flips of the
            network's spatial axes.
        overlap, sw_batch_size: sliding-window overlap in [0, 1) and windows per forward pass (None: the model's).
        amp: mixed precision on CUDA (None: on when the device is CUDA; never on CPU).
        crop_foreground: segment only the foreground box (None: as the model was trained; False: the whole grid;
            True: refused for a model that was not trained with a crop).
        channels_last: run 3D networks in channels-last memory format (None: on CPU, where it is faster, unless
            the network has group/instance normalization, which is not exact in that layout).
        postprocess: clean-up of the label map on the study grid: None or True: the model's own settings; False:
            none; a mapping: the model's settings with these keys replaced (``largest_component``,
            ``min_volume_mm3``, ``connectivity``).
    """

    device: str = "auto"
    tta: bool = False
    overlap: float | None = None
    sw_batch_size: int | None = None
    amp: bool | None = None
    crop_foreground: bool | None = None
    channels_last: bool | None = None
    postprocess: bool | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.overlap is not None and not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"overlap: must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and int(self.sw_batch_size) < 1:
            raise ConfigError(f"sw_batch_size: must be >= 1, got {self.sw_batch_size}")
        if self.postprocess is not None and not isinstance(self.postprocess, bool | Mapping):
            raise ConfigError(
                f"postprocess: must be None, true, false or a mapping, got {type(self.postprocess).__name__}"
            )
        if isinstance(self.postprocess, Mapping):  # a private copy: the caller's mapping may change later
            object.__setattr__(self, "postprocess", dict(self.postprocess))

    def replace(self, **changes: Any) -> InferenceOptions:
        """A copy with ``changes`` (e.g. another device for a worker)."""
        return dataclasses.replace(self, **changes)
