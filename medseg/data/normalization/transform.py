"""Per-channel normalization of a channel-first image: normalizer ``c`` on channel ``c``.

:class:`ChannelNormalize` is the array transform; it keeps MetaTensor metadata (affine, applied operations) intact.
:class:`ChannelNormalized` is its dictionary wrapper, with an optional mask key for the statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import MapTransform, Transform

from medseg.data.normalization.normalizers import ArrayLike, Normalizer, as_float_tensor, like
from medseg.data.normalization.table import NormalizationSpec, NormalizerLike, to_normalizer
from medseg.errors import ConfigError

logger = logging.getLogger(__name__)


class ChannelNormalize(Transform):
    """Apply ``normalizers[c]`` to channel ``c`` of a channel-first ``(C, *spatial)`` array.

    Args:
        normalizers: one entry per channel: a :class:`Normalizer`, a :class:`NormalizationSpec` or its dict.
        channel_names: optional names used in error messages (must match ``normalizers`` in length).

    Numpy in -> numpy out; tensors stay on their device; a MetaTensor keeps its metadata and applied operations.
    The input is not modified. The transform is not invertible and leaves no trace, so ``Compose.inverse`` skips it.
    """

    def __init__(
        self, normalizers: Sequence[NormalizerLike], channel_names: Sequence[str] | None = None
    ) -> None:
        if isinstance(normalizers, (Mapping, Normalizer, NormalizationSpec)) or len(normalizers) == 0:
            raise ConfigError("ChannelNormalize needs a non-empty list with one normalizer per channel")
        self.normalizers = [to_normalizer(n) for n in normalizers]
        if channel_names is not None and len(channel_names) != len(self.normalizers):
            raise ConfigError(
                f"ChannelNormalize: {len(channel_names)} channel names {list(channel_names)} "
                f"for {len(self.normalizers)} normalizers"
            )
        self.channel_names = None if channel_names is None else list(channel_names)

    def __call__(self, img: ArrayLike, mask: ArrayLike | None = None) -> ArrayLike:
        expected = len(self.normalizers)
        if img.ndim < 2:
            raise ValueError(
                f"ChannelNormalize expects a channel-first (C, *spatial) array, got shape {tuple(img.shape)}"
            )
        if img.shape[0] != expected:
            names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
            raise ValueError(
                f"ChannelNormalize: expected {expected} channel(s){names}, got {img.shape[0]} "
                f"(input shape {tuple(img.shape)})"
            )
        x = as_float_tensor(img)
        m = None
        if mask is not None:
            m = as_float_tensor(mask).to(x.device) != 0
            if m.ndim == x.ndim:  # (1, *spatial) channel-first mask
                m = m[0]
            if m.shape != x.shape[1:]:
                raise ValueError(
                    f"mask spatial shape {tuple(m.shape)} does not match image {tuple(x.shape[1:])}"
                )
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for c, norm in enumerate(self.normalizers):
            out[c] = norm.apply(x[c], m)
        return like(out, img)


class ChannelNormalized(MapTransform):
    """Dictionary wrapper of :class:`ChannelNormalize`: the same per-channel normalizers for every key.

    Args:
        keys: image keys to normalize.
        normalizers, channel_names: see :class:`ChannelNormalize`.
        mask_key: optional key of a (1, *spatial) mask that selects the voxels for the statistics.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        normalizers: Sequence[NormalizerLike],
        channel_names: Sequence[str] | None = None,
        mask_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = ChannelNormalize(normalizers, channel_names)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in d:
                raise KeyError(f"ChannelNormalized: mask key {self.mask_key!r} not in data keys {list(d)}")
            mask = d[self.mask_key]
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key], mask)
        return d
