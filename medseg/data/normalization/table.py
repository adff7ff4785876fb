"""The normalizer name table: one channel's normalization as data, ``{"name": "zscore", "nonzero": True}``.

The choice is data so it can live in a config file and in every checkpoint; :func:`build_normalizer` turns it into an
object and refuses unknown names and parameters by name.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medseg.data.normalization import normalizers
from medseg.data.normalization.normalizers import Normalizer
from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

NORMALIZERS: dict[str, type[Normalizer]] = {
    "ct_window": normalizers.CTWindow,
    "ct_clip_zscore": normalizers.CTClipZScore,
    "zscore": normalizers.ZScore,
    "percentile_clip": normalizers.PercentileClip,
    "none": normalizers.NoNormalization,
}


def _parameters(cls: type[Normalizer]) -> list[inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def build_normalizer(name: str, **params: Any) -> Normalizer:
    """Create the normalizer registered as ``name``.

    Raises:
        ConfigError (a ValueError): unknown name (the message lists the valid names), unknown or missing
            parameters (named, with the valid ones), or invalid parameter values.
    """
    if name not in NORMALIZERS:
        raise ConfigError(f"unknown normalizer {name!r}; valid names: {', '.join(sorted(NORMALIZERS))}")
    cls = NORMALIZERS[name]
    valid = [p.name for p in _parameters(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"normalizer {name!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {', '.join(valid) or '(none)'}"
        )
    required = [
        p.name for p in _parameters(cls) if p.default is inspect.Parameter.empty and p.name not in params
    ]
    if required:
        raise ConfigError(f"normalizer {name!r}: missing required parameter(s) {', '.join(required)}")
    return cls(**params)


@dataclass(frozen=True)
class NormalizationSpec:
    """One channel's normalization as data: ``{"name": "zscore", "nonzero": true}``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalizationSpec:
        """Validate ``data`` (a name plus that normalizer's parameters) by building the normalizer once."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a normalization spec must be a mapping with a 'name' key, got {data!r}")
        if "name" not in data:
            raise ConfigError(
                f"normalization spec {dict(data)!r} has no 'name'; valid names: {', '.join(sorted(NORMALIZERS))}"
            )
        params = {k: v for k, v in data.items() if k != "name"}
        spec = cls(name=data["name"], params=params)
        spec.build()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    def build(self) -> Normalizer:
        return build_normalizer(self.name, **self.params)


NormalizerLike = Normalizer | NormalizationSpec | Mapping[str, Any]


def to_normalizer(item: NormalizerLike) -> Normalizer:
    """A :class:`Normalizer` from a normalizer, a :class:`NormalizationSpec` or its dict."""
    if isinstance(item, Normalizer):
        return item
    if isinstance(item, NormalizationSpec):
        return item.build()
    if isinstance(item, Mapping):
        return NormalizationSpec.from_dict(item).build()
    raise ConfigError(f"expected a Normalizer, NormalizationSpec or mapping, got {type(item).__name__}")
