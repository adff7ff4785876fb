"""Per-channel intensity normalization through a name->class table.

Each channel of a multimodal input gets its own normalizer (CT window for CT, z-score for MR or perfusion maps, ...).
The choice is data, ``{"name": "zscore", "nonzero": True}`` per channel, so it can live in a config file and in every
checkpoint; :func:`build_normalizer` turns it into an object and refuses unknown names and parameters by name.

Normalizers work on one channel (any number of spatial dims) given as a numpy array, a torch tensor (any device) or a
MONAI ``MetaTensor``, and return the same kind of object as ``float32``. Statistics are accumulated in float64.
:class:`ChannelNormalize` applies normalizer ``c`` to channel ``c`` of a channel-first array, keeping MetaTensor
metadata (affine, applied operations) intact; :class:`ChannelNormalized` is its dictionary wrapper.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

__all__ = [
    "NORMALIZERS",
    "ChannelNormalize",
    "ChannelNormalized",
    "CTClipZScore",
    "CTWindow",
    "NoNormalization",
    "NormalizationSpec",
    "Normalizer",
    "PercentileClip",
    "ZScore",
    "build_normalizer",
]


def _as_tensor(img: ArrayLike) -> torch.Tensor:
    """A plain float32 torch view/copy of ``img`` (MetaTensor metadata dropped, device kept)."""
    if isinstance(img, MetaTensor):
        img = img.as_tensor()
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(img))
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(img).__name__}")
    return img.to(torch.float32)


def _like(result: torch.Tensor, original: ArrayLike) -> ArrayLike:
    """Return ``result`` as the same kind of object as ``original`` (numpy, tensor or MetaTensor with its meta)."""
    if isinstance(original, np.ndarray):
        return result.detach().cpu().numpy().astype(np.float32, copy=False)
    if isinstance(original, MetaTensor):
        out = MetaTensor(result)
        out.copy_meta_from(original)
        return out
    return result


def _mask_tensor(mask: ArrayLike | None, like: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    m = _as_tensor(mask).to(like.device) != 0
    if m.shape != like.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image shape {tuple(like.shape)}")
    return m


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated percentile of a 1-D tensor (numpy's default method), for tensors of any size.

    ``torch.quantile`` refuses inputs larger than 2**24 elements; two ``kthvalue`` calls do not.
    """
    n = values.numel()
    pos = q / 100.0 * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    v_lo = torch.kthvalue(values, lo + 1).values.to(torch.float64)
    if frac == 0.0 or hi == lo:
        return v_lo
    v_hi = torch.kthvalue(values, hi + 1).values.to(torch.float64)
    return v_lo + frac * (v_hi - v_lo)


def _check_finite(name: str, **values: float) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name}: {key} must be a finite number, got {value!r}")


class Normalizer:
    """Base class: a single-channel intensity mapping, ``normalizer(img, mask=None) -> float32 img``."""

    name: str = ""
    #: True when an output voxel depends on its input voxel only (no image statistics): the normalizer may then
    #: run on any block of an image with the same result as on the whole
    pointwise: bool = False

    def __call__(self, img: ArrayLike, mask: ArrayLike | None = None) -> ArrayLike:
        x = _as_tensor(img)
        return _like(self._apply(x, _mask_tensor(mask, x)), img)

    def _apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor parameters, so that ``build_normalizer(self.name, **self.params())`` rebuilds it."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class NoNormalization(Normalizer):
    """Leave intensities unchanged (only cast to float32)."""

    name = "none"
    pointwise = True

    def __init__(self) -> None:
        pass

    def _apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return x.clone()


class CTWindow(Normalizer):
    """Clip to the window ``[center - width/2, center + width/2]`` (HU) and rescale linearly to ``out_range``.

    A fixed point-wise mapping: no statistics, so a mask has no effect.
    """

    name = "ct_window"
    pointwise = True

    def __init__(self, center: float, width: float, out_range: Sequence[float] = (0.0, 1.0)) -> None:
        _check_finite("ct_window", center=center, width=width)
        if width <= 0:
            raise ConfigError(f"ct_window: width must be > 0 HU, got {width}")
        if isinstance(out_range, (str, bytes)) or len(out_range) != 2:
            raise ConfigError(f"ct_window: out_range must be two numbers (low, high), got {out_range!r}")
        _check_finite("ct_window", out_range_low=out_range[0], out_range_high=out_range[1])
        if not out_range[0] < out_range[1]:
            raise ConfigError(f"ct_window: out_range must be increasing (low < high), got {tuple(out_range)}")
        self.center = float(center)
        self.width = float(width)
        self.out_range = (float(out_range[0]), float(out_range[1]))

    def _apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        low = self.center - self.width / 2.0
        high = self.center + self.width / 2.0
        a, b = self.out_range
        unit = (x.to(torch.float64).clamp(low, high) - low) / self.width
        return (unit * (b - a) + a).to(torch.float32)

    def params(self) -> dict[str, Any]:
        return {"center": self.center, "width": self.width, "out_range": self.out_range}


class CTClipZScore(Normalizer):
    """Clip to fixed dataset bounds, then z-score with fixed dataset statistics (nnU-Net's ``CTNormalization``).

    The bounds are usually the 0.5 and 99.5 percentiles of the dataset's foreground intensities (HU) and
    ``mean``/``std`` their mean and standard deviation, as ``medseg plan`` measures them: every image of the dataset
    gets the same mapping ``(clip(x, lower, upper) - mean) / max(std, eps)``. A fixed point-wise mapping: no image
    statistics, so a mask has no effect.
    """

    name = "ct_clip_zscore"
    pointwise = True

    def __init__(self, lower: float, upper: float, mean: float, std: float, eps: float = 1e-8) -> None:
        _check_finite("ct_clip_zscore", lower=lower, upper=upper, mean=mean, std=std, eps=eps)
        if not lower < upper:
            raise ConfigError(f"ct_clip_zscore: need lower < upper, got lower={lower}, upper={upper}")
        if std <= 0 or eps <= 0:
            raise ConfigError(f"ct_clip_zscore: std and eps must be > 0, got std={std}, eps={eps}")
        self.lower, self.upper = float(lower), float(upper)
        self.mean, self.std, self.eps = float(mean), float(std), float(eps)

    def _apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        clipped = x.to(torch.float64).clamp(self.lower, self.upper)
        return ((clipped - self.mean) / max(self.std, self.eps)).to(torch.float32)

    def params(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "mean": self.mean, "std": self.std, "eps": self.eps}


def _selection(x: torch.Tensor, mask: torch.Tensor | None, nonzero: bool) -> torch.Tensor | None:
    """The voxels the statistics come from: ``mask``, restricted to non-zero voxels if ``nonzero`` (None: all)."""
    if not nonzero:
        return mask
    return (x != 0) if mask is None else (mask & (x != 0))


def _zscore(x: torch.Tensor, sel: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``(x - mean) / max(std, eps)`` with population statistics over ``sel`` (all voxels if None).

    Voxels outside ``sel`` are set to 0; an empty selection leaves the image unchanged (logged).
    """
    x64 = x.to(torch.float64)
    values = x64.reshape(-1) if sel is None else x64[sel]
    if values.numel() == 0:
        logger.warning("z-score: the mask selects no voxels; channel left unnormalized")
        return x.clone()
    mean = values.mean()
    std = values.std(correction=0)
    out = (x64 - mean) / torch.clamp(std, min=eps)
    if sel is not None:
        out = torch.where(sel, out, torch.zeros_like(out))
    return out.to(torch.float32)


class ZScore(Normalizer):
    """Zero mean, unit standard deviation.

    Args:
        nonzero: compute the statistics on non-zero voxels only and keep zero voxels at 0 (skull-stripped MR,
            perfusion maps with a zero background).
        eps: lower bound of the standard deviation, so a constant channel becomes all zeros instead of NaN.

    A ``mask`` given at call time takes the place of the non-zero selection (and is combined with it when
    ``nonzero`` is also set): statistics come from the selected voxels, the others are set to 0.
    """

    name = "zscore"

    def __init__(self, nonzero: bool = False, eps: float = 1e-8) -> None:
        if not isinstance(nonzero, bool):
            raise ConfigError(f"zscore: nonzero must be true or false, got {nonzero!r}")
        _check_finite("zscore", eps=eps)
        if eps <= 0:
            raise ConfigError(f"zscore: eps must be > 0, got {eps}")
        self.nonzero = nonzero
        self.eps = float(eps)

    def _apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return _zscore(x, _selection(x, mask, self.nonzero), self.eps)

    def params(self) -> dict[str, Any]:
        return {"nonzero": self.nonzero, "eps": self.eps}


class PercentileClip(Normalizer):
    """Clip to the ``lower``/``upper`` percentiles, then z-score or rescale to [0, 1] (nnU-Net's CT scheme).

    Args:
        lower, upper: percentiles in [0, 100], ``lower < upper``.
        then: ``"zscore"`` (statistics of the clipped values) or ``"rescale"`` (``lower`` percentile -> 0,
            ``upper`` percentile -> 1).
        nonzero: compute percentiles (and z-score statistics) on non-zero voxels only; zero voxels become 0.
        eps: lower bound of the standard deviation / percentile range.

    With a ``mask`` at call time, percentiles and statistics come from the masked voxels and the others become 0.
    """

    name = "percentile_clip"
    THEN = ("zscore", "rescale")

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        then: str = "zscore",
        nonzero: bool = False,
        eps: float = 1e-8,
    ) -> None:
        _check_finite("percentile_clip", lower=lower, upper=upper, eps=eps)
        if not (0.0 <= lower < upper <= 100.0):
            raise ConfigError(
                f"percentile_clip: need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}"
            )
        if then not in self.THEN:
            raise ConfigError(f"percentile_clip: then must be one of {list(self.THEN)}, got {then!r}")
        if not isinstance(nonzero, bool):
            raise ConfigError(f"percentile_clip: nonzero must be true or false, got {nonzero!r}")
        if eps <= 0:
            raise ConfigError(f"percentile_clip: eps must be > 0, got {eps}")
        self.lower = float(lower)
        self.upper = float(upper)
        self.then = then
        self.nonzero = nonzero
        self.eps = float(eps)

    def _apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        sel = _selection(x, mask, self.nonzero)
        values = x.reshape(-1) if sel is None else x[sel]
        if values.numel() == 0:
            logger.warning("percentile_clip: the mask selects no voxels; channel left unnormalized")
            return x.clone()
        low = _percentile(values, self.lower)
        high = _percentile(values, self.upper)
        clipped = x.to(torch.float64).clamp(low, high)
        if self.then == "zscore":
            return _zscore(clipped, sel, self.eps)
        out = (clipped - low) / torch.clamp(high - low, min=self.eps)
        if sel is not None:
            out = torch.where(sel, out, torch.zeros_like(out))
        return out.to(torch.float32)

    def params(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "then": self.then,
            "nonzero": self.nonzero,
            "eps": self.eps,
        }


NORMALIZERS: dict[str, type[Normalizer]] = {
    "ct_window": CTWindow,
    "ct_clip_zscore": CTClipZScore,
    "zscore": ZScore,
    "percentile_clip": PercentileClip,
    "none": NoNormalization,
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


def _to_normalizer(item: NormalizerLike) -> Normalizer:
    if isinstance(item, Normalizer):
        return item
    if isinstance(item, NormalizationSpec):
        return item.build()
    if isinstance(item, Mapping):
        return NormalizationSpec.from_dict(item).build()
    raise ConfigError(f"expected a Normalizer, NormalizationSpec or mapping, got {type(item).__name__}")


class ChannelNormalize(Transform):
    """Apply ``normalizers[c]`` to channel ``c`` of a channel-first ``(C, *spatial)`` array.

    Args:
        normalizers: one entry per channel: a :class:`Normalizer`, a :class:`NormalizationSpec` or its dict.
        channel_names: optional names used in error messages (must match ``normalizers`` in length).

    Numpy in -> numpy out; tensors stay on their device; a MetaTensor keeps its metadata and applied operations.
    The transform is not invertible and leaves no trace, so ``Compose.inverse`` skips it.
    """

    def __init__(
        self, normalizers: Sequence[NormalizerLike], channel_names: Sequence[str] | None = None
    ) -> None:
        if isinstance(normalizers, (Mapping, Normalizer, NormalizationSpec)) or len(normalizers) == 0:
            raise ConfigError("ChannelNormalize needs a non-empty list with one normalizer per channel")
        self.normalizers = [_to_normalizer(n) for n in normalizers]
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
        x = _as_tensor(img)
        m = None
        if mask is not None:
            m = _as_tensor(mask).to(x.device) != 0
            if m.ndim == x.ndim:  # (1, *spatial) channel-first mask
                m = m[0]
            if m.shape != x.shape[1:]:
                raise ValueError(
                    f"mask spatial shape {tuple(m.shape)} does not match image {tuple(x.shape[1:])}"
                )
        out = torch.stack([norm._apply(x[c], m) for c, norm in enumerate(self.normalizers)])
        return _like(out, img)


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
