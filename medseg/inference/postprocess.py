"""Postprocessing of predicted label maps as a MONAI transform configured from data.

:class:`Postprocess` is the array transform configured from a config's or a model spec's ``postprocess`` block
(small-object removal, then the largest connected component, per label; the operations and why they are medseg's
own and not MONAI's are in :mod:`medseg.inference.components`); :class:`Postprocessd` is its dictionary wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform, Transform

from medseg.errors import ConfigError
from medseg.inference.components import (
    check_label_values,
    check_thresholds,
    largest_component,
    like_input,
    remove_small,
)
from medseg.plain import as_numpy

logger = logging.getLogger(__name__)

__all__ = ["POSTPROCESS_KEYS", "Postprocess", "Postprocessd"]

POSTPROCESS_KEYS = ("largest_component", "min_volume_mm3", "connectivity")


class Postprocess(Transform):
    """Array transform: small-object removal, then largest component, on a channel-first label map (1, *spatial).

    Args:
        largest_component: True (every label), False, or a list of label values to reduce to their largest
            connected component.
        min_volume_mm3: remove objects below this volume (mm^3), one number for every label or
            ``{label: mm^3}``; 0 or None disables it.
        connectivity: 1..ndim, None for full connectivity.

    Spacing comes from the MetaTensor's affine (column norms); for a plain array pass ``spacing=`` to the
    call.
    The two steps commute: removal first is cheaper.
    """

    def __init__(
        self,
        largest_component: bool | Sequence[int] = False,
        min_volume_mm3: float | Mapping[int, float] | None = None,
        connectivity: int | None = None,
    ) -> None:
        self.largest_component = _check_largest(largest_component, "largest_component")
        self.min_volume_mm3 = None
        if min_volume_mm3 is not None:
            try:
                self.min_volume_mm3 = check_thresholds(min_volume_mm3, "min_volume_mm3")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if connectivity is not None and (
            isinstance(connectivity, bool) or not isinstance(connectivity, int) or not 1 <= connectivity <= 3
        ):
            raise ConfigError(
                f"connectivity must be 1, 2, 3 (at most the number of axes) or null, got {connectivity!r}"
            )
        self.connectivity = connectivity

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, where: str = "postprocess") -> Postprocess:
        """Build from ``{"largest_component": [1, 2] | true, "min_volume_mm3": 10.0, "connectivity": 1}``.

        Raises:
            ConfigError: unknown key or bad value; the message names the key as ``<where>.<key>``.
        """
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {list(POSTPROCESS_KEYS)}, got {config!r}")
        unknown = sorted(str(k) for k in config if k not in POSTPROCESS_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {list(POSTPROCESS_KEYS)}")
        try:
            return cls(
                largest_component=config.get("largest_component", False),
                min_volume_mm3=config.get("min_volume_mm3"),
                connectivity=config.get("connectivity"),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    @property
    def is_identity(self) -> bool:
        """True when the transform changes nothing (callers may skip it)."""
        no_removal = self.min_volume_mm3 is None or (
            self.min_volume_mm3 == 0 if not isinstance(self.min_volume_mm3, dict) else not self.min_volume_mm3
        )
        return self.largest_component is False and no_removal

    @property
    def label_values(self) -> set[int]:
        """The label values the settings name (a list of labels, or the keys of per-label thresholds)."""
        values = set(self.largest_component) if isinstance(self.largest_component, list) else set()
        if isinstance(self.min_volume_mm3, dict):
            values |= set(self.min_volume_mm3)
        return values

    def to_config(self) -> dict[str, Any]:
        return {
            "largest_component": self.largest_component,
            "min_volume_mm3": self.min_volume_mm3,
            "connectivity": self.connectivity,
        }

    def __call__(self, label: Any, spacing: Sequence[float] | None = None) -> Any:
        arr = as_numpy(label)
        if arr.ndim < 2 or arr.shape[0] != 1:
            raise ValueError(
                f"Postprocess expects a channel-first label map (1, *spatial), got shape {arr.shape}"
            )
        if self.is_identity:
            return label
        spatial = arr[0]
        if self.connectivity is not None and self.connectivity > spatial.ndim:
            raise ValueError(
                f"connectivity {self.connectivity} exceeds the number of spatial axes ({spatial.ndim})"
            )
        if self.min_volume_mm3 is not None:
            if spacing is None:
                spacing = _spacing_of(label, spatial.ndim)
            spatial = remove_small(spatial, self.min_volume_mm3, spacing, connectivity=self.connectivity)
        if self.largest_component is not False:
            labels = None if self.largest_component is True else self.largest_component
            spatial = largest_component(spatial, labels, connectivity=self.connectivity)
        return like_input(np.ascontiguousarray(spatial[None]), label)


def _check_largest(value: Any, key: str) -> bool | list[int]:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    try:
        labels = check_label_values(value, key)
    except ValueError as exc:
        raise ConfigError(f"{exc} (or true/false)") from None
    return labels if labels else False


def _spacing_of(label: Any, ndim: int) -> list[float]:
    affine = getattr(label, "affine", None)
    if affine is None:
        raise ValueError(
            "min_volume_mm3 needs the voxel spacing: pass a MetaTensor with an affine or spacing="
        )
    a = as_numpy(affine).astype(np.float64)
    return [float(v) for v in np.linalg.norm(a[:ndim, :ndim], axis=0)]


class Postprocessd(MapTransform):
    """Dictionary wrapper of :class:`Postprocess` (same arguments after ``keys``)."""

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        largest_component: bool | Sequence[int] = False,
        min_volume_mm3: float | Mapping[int, float] | None = None,
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = Postprocess(largest_component, min_volume_mm3, connectivity)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
