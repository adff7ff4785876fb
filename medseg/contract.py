"""The data contract of a trained model: everything inference needs to know about its inputs and outputs.

A :class:`DataContract` is built once from the training config (:func:`contract_from_config`), stored in every
checkpoint and registered model, and is the only thing inference reads:

- ``data``: the channels in input order, each with its normalization and DICOM series rule; the labels; the
  target grid (orientation, spacing or the native grid); 2D/3D and, for a 2D model on volumes, the slice axis;
  whether channels on different grids are resampled; the geometry tolerance;
- ``patch_size``: the training patch, which is the sliding window;
- ``inference``: the sliding-window settings and the postprocessing of the label map;
- ``crop``: the foreground crop rule of training (None when training did not crop).

Every part is a validated, frozen dataclass of :mod:`medseg.config` (one validation, errors that name the key).
Models written before the contract existed (checkpoint format 1, and the ``medseg`` metadata of models registered
then) stored the same facts spread over the spec and the training config; :func:`upgrade_spec` is the one place
that reads them, with the defaults medseg used when they were written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medseg.config import MedsegConfig, from_dict, to_dict
from medseg.config.schema import DataConfig
from medseg.config.training import InferenceConfig, check_postprocess_labels
from medseg.errors import ConfigError

__all__ = ["CropRule", "DataContract", "contract_from_config", "upgrade_spec"]


@dataclass(frozen=True)
class CropRule:
    """Foreground crop of training: any raw channel > ``threshold``, plus ``margin`` voxels on the model grid."""

    threshold: float
    margin: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ConfigError(f"crop.threshold: must be finite, got {self.threshold}")
        if self.margin < 0:
            raise ConfigError(f"crop.margin: must be >= 0 voxels, got {self.margin}")


@dataclass(frozen=True)
class DataContract:
    """What a model expects and produces (see the module docstring)."""

    data: DataConfig
    patch_size: list[int]
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    crop: CropRule | None = None

    def __post_init__(self) -> None:
        if len(self.patch_size) != self.data.spatial_dims or any(p < 1 for p in self.patch_size):
            raise ConfigError(
                f"patch_size: expected {self.data.spatial_dims} sizes >= 1, got {list(self.patch_size)}"
            )
        check_postprocess_labels(self.inference.postprocess, self.data.labels)

    # -------------------------------------------------------------------------------------------- shortcuts
    @property
    def channels(self) -> list[Any]:
        """The channels in input order (:class:`medseg.config.ChannelConfig`)."""
        return list(self.data.channels)

    @property
    def channel_names(self) -> list[str]:
        return self.data.channel_names

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.data.labels)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def spatial_dims(self) -> int:
        return int(self.data.spatial_dims)

    @property
    def file_dims(self) -> int:
        """Spatial dims of the input files: 3 for 3D models and for 2D models applied slice-wise to volumes."""
        return self.data.file_dims

    def normalizers(self) -> list[Any]:
        """One normalizer per channel, in input order."""
        return [c.normalizer() for c in self.data.channels]

    # -------------------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (label keys become strings); :meth:`from_dict` reads it back."""
        out = to_dict(self)
        out["data"]["labels"] = {str(k): v for k, v in self.data.labels.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "contract") -> DataContract:
        """Validate stored contract data (errors name the key and ``where``)."""
        try:
            return from_dict(cls, dict(data), "")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def contract_from_config(config: MedsegConfig) -> DataContract:
    """The contract of a model trained with ``config``."""
    tc = config.train
    crop = CropRule(float(tc.foreground_threshold), int(tc.foreground_margin)) if tc.crop_foreground else None
    return DataContract(data=config.data, patch_size=list(tc.patch_size), inference=config.inference, crop=crop)


# ------------------------------------------------------------------------------------------------ format 1
_V1_KEYS = ("network", "channels", "labels", "spacing", "orientation", "spatial_dims", "patch_size")


def upgrade_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 model spec (before the contract) as the current spec data; current data is returned as it is.

    Format 1 kept channels, labels and grid at the top level, the window, slice axis and postprocessing in
    ``inference``, and left the crop rule and channel resampling in the training ``config``. This reads them with
    the defaults inference used for such models: no crop unless ``train.crop_foreground`` (threshold 0, margin 2
    voxels when absent), channels not resampled, a channel without normalization used as it is, window overlap
    0.5, 4 windows per batch, gaussian blending, no postprocessing.

    Raises:
        ConfigError: a format-1 spec lacking one of its required keys, or holding invalid values.
    """
    if "contract" in spec:
        return dict(spec)
    missing = [k for k in _V1_KEYS if k not in spec]
    if missing:
        raise ConfigError(f"model spec is missing {missing}")
    config = dict(spec.get("config") or {})
    train, data_cfg = dict(config.get("train") or {}), dict(config.get("data") or {})
    inference = dict(spec.get("inference") or {})
    channels = [
        {
            "name": c["name"],
            "normalization": dict(c.get("normalization") or {"name": "none"}),
            "series": c.get("series"),
        }
        for c in spec["channels"]
    ]
    data = {
        "channels": channels,
        "labels": {int(k): str(v) for k, v in dict(spec["labels"]).items()},
        "spacing": None if spec["spacing"] is None else list(spec["spacing"]),
        "orientation": spec["orientation"],
        "spatial_dims": int(spec["spatial_dims"]),
        "slice_axis": inference.get("slice_axis"),
        "resample_channels": bool(data_cfg.get("resample_channels", False)),
        "geometry_tolerance_mm": float(data_cfg.get("geometry_tolerance_mm", 1e-3)),
    }
    crop = None
    if train.get("crop_foreground", False):
        crop = {"threshold": float(train.get("foreground_threshold", 0.0)),
                "margin": int(train.get("foreground_margin", 2))}
    contract = {
        "data": data,
        "patch_size": [int(p) for p in spec["patch_size"]],
        "inference": {
            "overlap": float(inference.get("overlap", 0.5)),
            "sw_batch_size": int(inference.get("sw_batch_size", 4)),
            "mode": inference.get("mode", "gaussian"),
            "postprocess": dict(inference.get("postprocess") or {}),
        },
        "crop": crop,
    }
    upgraded = {"network": dict(spec["network"]), "contract": contract, "config": config}
    if "medseg_version" in spec:
        upgraded["medseg_version"] = spec["medseg_version"]
    extra = sorted(set(spec) - {*_V1_KEYS, "inference", "config", "medseg_version"})
    if extra:
        raise ConfigError(f"model spec has unknown keys {extra} (written by a newer medseg?)")
    return upgraded
