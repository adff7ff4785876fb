"""The configuration schema: the data contract (channels, labels, geometry) shared by training and inference.

Every section is a frozen dataclass built by :func:`medseg.config.validate.from_dict`, so a bad key or value is
reported with its dotted path. Later sections (network, loss, training, tracking) hang off :class:`MedsegConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medseg.errors import ConfigError


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
    """The data contract: channel names and order, labels, target geometry for preprocessing."""

    channels: list[ChannelConfig]
    labels: dict[int, str]
    spacing: list[float] | None = None
    orientation: str = "RAS"
    spatial_dims: Literal[2, 3] = 3
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
        if self.spacing is not None:
            if len(self.spacing) != self.spatial_dims or any(s <= 0 for s in self.spacing):
                raise ConfigError(
                    f"data.spacing: expected {self.spatial_dims} positive values, got {list(self.spacing)}"
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
    def num_classes(self) -> int:
        return max(self.labels) + 1


@dataclass(frozen=True)
class MedsegConfig:
    """The whole configuration. Sections other than ``data`` are added as the pipeline grows."""

    data: DataConfig
    name: str = "medseg"
