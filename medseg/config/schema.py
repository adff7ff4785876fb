"""The configuration schema: the data contract (channels, labels, geometry) shared by training and inference.

Every section is a frozen dataclass built by :func:`medseg.config.validate.from_dict`, so a bad key or value is
reported with its dotted path. Later sections (network, loss, training, tracking) hang off :class:`MedsegConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medseg.config.training import (
    AugmentationConfig,
    DatalistConfig,
    InferenceConfig,
    LossConfig,
    NetworkConfig,
    TrainConfig,
    check_consistency,
)
from medseg.errors import ConfigError
from medseg.tracking.config import TrackingConfig


@dataclass(frozen=True)
class ChannelConfig:
    """One input channel: its name, how it is normalized and (for DICOM inputs) how its series is found."""

    name: str
    normalization: dict[str, Any] = field(default_factory=lambda: {"name": "zscore"})
    series: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"channel name {self.name!r} must be non-empty letters, digits, '-' or '_'")
        from medseg.data.normalization import build_normalizer

        params = dict(self.normalization)
        name = params.pop("name", None)
        if name is None:
            raise ConfigError(f"channels.{self.name}.normalization: missing 'name'")
        try:
            build_normalizer(name, **params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"channels.{self.name}.normalization: {exc}") from exc
        if self.series is not None:
            self.series_rule()  # validates the rule's keys now

    def series_rule(self) -> Any:
        """The :class:`medseg.data.dicom.SeriesRule` selecting this channel's DICOM series (or None)."""
        if self.series is None:
            return None
        from medseg.data.dicom import SeriesRule

        return SeriesRule.from_dict(dict(self.series))

    def normalizer(self) -> Any:
        from medseg.data.normalization import build_normalizer

        params = dict(self.normalization)
        return build_normalizer(params.pop("name"), **params)


@dataclass(frozen=True)
class DataConfig:
    """The data contract: channel names and order, labels, target geometry for preprocessing.

    ``spatial_dims`` is the network's; a 2D model on 3D volumes sets ``slice_axis`` (the volume axis, after
    reorientation, that slices are taken across). ``spacing`` then has 3 values (the volume is resampled in 3D).
    """

    channels: list[ChannelConfig]
    labels: dict[int, str]
    spacing: list[float] | None = None
    orientation: str = "RAS"
    spatial_dims: Literal[2, 3] = 3
    slice_axis: int | None = None
    resample_channels: bool = False
    geometry_tolerance_mm: float = 1e-3

    def __post_init__(self) -> None:
        if not self.channels:
            raise ConfigError("data.channels: at least one channel is required")
        names = [c.name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"data.channels: duplicate channel names {dupes}")
        if 0 not in self.labels:
            raise ConfigError("data.labels: label 0 (background) must be declared")
        if any(k < 0 for k in self.labels):
            raise ConfigError(f"data.labels: label values must be >= 0, got {sorted(self.labels)}")
        if self.slice_axis is not None:
            if self.spatial_dims != 2:
                raise ConfigError("data.slice_axis: only for 2D models (data.spatial_dims: 2) on 3D volumes")
            if self.slice_axis not in (0, 1, 2):
                raise ConfigError(
                    f"data.slice_axis: must be 0, 1 or 2 (an axis of the volume), got {self.slice_axis}"
                )
        if self.spacing is not None:
            if len(self.spacing) != self.file_dims or any(s <= 0 for s in self.spacing):
                raise ConfigError(
                    f"data.spacing: expected {self.file_dims} positive values, got {list(self.spacing)}"
                )
        codes = self.orientation.upper()
        if len(codes) != 3 or any(sum(c in pair for c in codes) != 1 for pair in ("LR", "AP", "SI")):
            raise ConfigError(f"data.orientation: {self.orientation!r} is not three axis codes such as 'RAS'")
        if self.geometry_tolerance_mm <= 0:
            raise ConfigError("data.geometry_tolerance_mm: must be > 0")

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def file_dims(self) -> int:
        """Spatial dims of the input files: 3 for volumes (also for 2D slice-wise models), 2 for plain images."""
        return 3 if self.spatial_dims == 3 or self.slice_axis is not None else 2

    @property
    def axcodes(self) -> str:
        """The orientation codes used for the input files (the first two of ``orientation`` for 2D images)."""
        return self.orientation.upper()[: self.file_dims]

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


@dataclass(frozen=True)
class MedsegConfig:
    """The whole configuration: the data contract plus how to find, train, infer and track.

    Only ``data`` is required; every other section has defaults (see :mod:`medseg.config.training`).
    """

    data: DataConfig
    name: str = "medseg"
    datalist: DatalistConfig = field(default_factory=DatalistConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check_consistency(self)
