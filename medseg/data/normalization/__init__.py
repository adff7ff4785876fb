"""Per-channel intensity normalization through a name->class table.

Each channel of a multimodal input gets its own normalizer (CT window for CT, z-score for MR or perfusion maps, ...).
The choice is data, ``{"name": "zscore", "nonzero": True}`` per channel, so it can live in a config file and in every
checkpoint.

- :mod:`~medseg.data.normalization.normalizers`: the single-channel normalizers, and why they are medseg's rather
  than MONAI's intensity transforms (bit-for-bit stable outputs, float64 statistics, masks);
- :mod:`~medseg.data.normalization.table`: the name table, :func:`build_normalizer` and :class:`NormalizationSpec`;
- :mod:`~medseg.data.normalization.transform`: :class:`ChannelNormalize` (normalizer ``c`` on channel ``c``) and its
  dictionary wrapper :class:`ChannelNormalized`.
"""

from __future__ import annotations

from medseg.data.normalization.normalizers import (
    CTClipZScore,
    CTWindow,
    NoNormalization,
    Normalizer,
    PercentileClip,
    ZScore,
)
from medseg.data.normalization.table import (
    NORMALIZERS,
    NormalizationSpec,
    NormalizerLike,
    build_normalizer,
)
from medseg.data.normalization.transform import ChannelNormalize, ChannelNormalized

__all__ = [
    "NORMALIZERS",
    "ChannelNormalize",
    "ChannelNormalized",
    "CTClipZScore",
    "CTWindow",
    "NoNormalization",
    "NormalizationSpec",
    "Normalizer",
    "NormalizerLike",
    "PercentileClip",
    "ZScore",
    "build_normalizer",
]
