"""Intensity rules 7-8 (see :mod:`medseg.planning.rules`): the modality of each channel and its normalization."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg.planning.fingerprint import Fingerprint

NONZERO_KEEP_MAX = 0.75
CT_AIR_PERCENTILE_HU = -500.0
MR_NAMES = ("MR", "MRI", "T1", "T1W", "T1C", "T1CE", "T1GD", "T2", "T2W", "FLAIR", "PD", "ADC", "DWI", "SWI")
MODALITIES = ("CT", "MR", "other")


def detect_modality(
    name: str, channel: Any, fp: Fingerprint, overrides: Mapping[str, str]
) -> tuple[str, str]:
    """Rule 7: the modality of channel ``name`` (``CT``, ``MR`` or ``other``) and the reason."""
    if name in overrides:
        return _modality(overrides[name]), f"--modality {name}={overrides[name]}"
    series = getattr(channel, "series", None) or {}
    if isinstance(series, Mapping) and series.get("modality"):
        return _modality(series["modality"]), f"the channel's DICOM series rule (modality {series['modality']})"
    norm = getattr(channel, "normalization", None) or {}
    if norm.get("name") == "ct_window":
        return "CT", "the config normalizes it with a CT window (ct_window)"
    if name.upper() == "CT":
        return "CT", "the channel is named CT"
    if name.upper() in MR_NAMES:
        return "MR", f"the channel is named {name}"
    if name in fp.modality_hints:
        return _modality(fp.modality_hints[name]), f"the DICOM header says {fp.modality_hints[name]}"
    low = fp.image_range.get(name, (0.0, 0.0))[0]
    if low <= CT_AIR_PERCENTILE_HU:
        return "CT", f"0.5th percentile of the image voxels is {low:.0f} <= {CT_AIR_PERCENTILE_HU:g} (air in HU)"
    return "other", f"no CT-like air values (0.5th percentile {low:.3g} > {CT_AIR_PERCENTILE_HU:g})"


def _modality(value: str) -> str:
    v = str(value).strip().upper()
    if v == "CT":
        return "CT"
    if v in MR_NAMES:
        return "MR"
    return "other"


def normalization_for(
    name: str, modality: str, fp: Fingerprint, nonzero_keep: float
) -> tuple[dict[str, Any], str]:
    """Rule 8: the normalization spec of one channel and the reason."""
    stats = fp.foreground.get(name)
    if modality == "CT" and stats is not None and stats.p99_5 > stats.p00_5 and stats.std > 0:
        spec = {
            "name": "ct_clip_zscore",
            "lower": round(stats.p00_5, 4),
            "upper": round(stats.p99_5, 4),
            "mean": round(stats.mean, 4),
            "std": round(stats.std, 4),
        }
        return spec, (
            f"CT: clip to the foreground 0.5/99.5 percentiles [{stats.p00_5:.4g}, {stats.p99_5:.4g}], z-score with "
            f"the foreground mean {stats.mean:.4g} / std {stats.std:.4g} ({stats.n} sampled voxels; nnU-Net CT)"
        )
    if modality == "CT":
        return {"name": "zscore"}, "CT without labelled foreground voxels to measure: per-image z-score"
    if nonzero_keep < NONZERO_KEEP_MAX:
        return {"name": "zscore", "nonzero": True}, (
            f"{modality}: per-image z-score over the non-zero voxels (they fill {nonzero_keep:.0%} of the median "
            f"case's box < {NONZERO_KEEP_MAX:.0%}: masked images; nnU-Net use_mask_for_norm)"
        )
    return {"name": "zscore"}, f"{modality}: per-image z-score (nnU-Net ZScoreNormalization)"
