"""Configuration: YAML files validated into dataclasses."""

from __future__ import annotations

from medseg.config.load import apply_overrides, deep_merge, load_config, load_raw
from medseg.config.schema import ChannelConfig, DataConfig, MedsegConfig
from medseg.config.validate import from_dict, to_dict

__all__ = [
    "ChannelConfig",
    "DataConfig",
    "MedsegConfig",
    "apply_overrides",
    "deep_merge",
    "from_dict",
    "load_config",
    "load_raw",
    "to_dict",
]
