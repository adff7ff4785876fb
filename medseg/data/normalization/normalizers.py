"""The single-channel intensity normalizers: CT window, fixed CT clip + z-score, per-image z-score, percentile clip.

Normalizers work on one channel (any number of spatial dims) given as a numpy array, a torch tensor (any device) or a
MONAI ``MetaTensor``, and return the same kind of object as ``float32``. Intensities are mapped, and statistics
accumulated, in float64; the float64 intermediates are modified in place, so a call needs about 12 bytes per voxel
(the float64 copy and the float32 result).

Why these are medseg's and not ``NormalizeIntensity`` / ``ScaleIntensityRange`` / ``ScaleIntensityRangePercentiles``
/ ``ClipIntensityPercentiles``: a model's label maps must stay byte-identical to what it segmented before, and
MONAI computes in float32. medseg's outputs are the float32 roundings of the mappings computed in float64; MONAI's
are close (about 2e-7 to 5e-7 of the output scale) but differ in the last bits of 9-76% of the voxels, which can
move a voxel across a decision boundary. ``tests/test_normalization_monai.py`` checks medseg's outputs bit for bit against
an independent exact computation and shows each MONAI difference; benchmarks/normalization.py measures a
512 x 512 x 600 CT-like volume:

- z-score: equal bits in 24% (49% with ``nonzero``) of the voxels; on ``1e4 + N(0, 1)`` MONAI's float32 statistics
  are off by 2e-4 to 1e-3. MONAI has no call-time mask (``ChannelNormalized(mask_key=...)``) and no ``eps`` floor
  of the standard deviation. Constant images give zeros in both. MONAI: 0.6x the time and 0.7x the peak memory
  (1.9x and 1.3x with ``nonzero``).
- CT window: ``ScaleIntensityRange(clip=True)`` has equal bits in 91% of the voxels; run in float64 it matches for
  most windows, not all (1 of 300 random windows had one voxel one float32 step apart). Same time and memory.
- percentile clip: MONAI's percentiles are float32 (``np.percentile`` / ``torch.quantile``), equal bits in 41-58%
  of the voxels, and it has no ``nonzero`` / mask selection. 0.8-1.2x the time, the same memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


def as_float_tensor(img: ArrayLike) -> torch.Tensor:
    """A plain float32 torch view/copy of ``img`` (MetaTensor metadata dropped, device kept; no copy when possible)."""
    if isinstance(img, MetaTensor):
        img = img.as_tensor()
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(img))
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(img).__name__}")
    return img.to(torch.float32)


def like(result: torch.Tensor, original: ArrayLike) -> ArrayLike:
    """Return ``result`` as the same kind of object as ``original`` (numpy, tensor or MetaTensor with its meta)."""
    if isinstance(original, np.ndarray):
        return result.detach().cpu().numpy().astype(np.float32, copy=False)
    if isinstance(original, MetaTensor):
        out = MetaTensor(result)
        out.copy_meta_from(original)
        return out
    return result


def _mask_tensor(mask: ArrayLike | None, like_: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    m = as_float_tensor(mask).to(like_.device) != 0
    if m.shape != like_.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image shape {tuple(like_.shape)}")
    return m


def _order_statistics(values: torch.Tensor, ranks: list[int]) -> dict[int, torch.Tensor]:
    """The ``k``-th smallest value (0-based) of a 1-D tensor for every ``k`` in ``ranks``, as float64 scalars.

    On the CPU one ``np.partition`` finds them all (a 4-byte copy per value; ``torch.kthvalue`` copies values and
    int64 indices, 12 bytes, per call); elsewhere ``torch.kthvalue``. Order statistics are values of the input, so
    both give the same numbers.
    """
    unique = sorted(set(ranks))
    if values.device.type == "cpu":
        parted = np.partition(values.detach().numpy(), unique)
        return {k: torch.tensor(float(parted[k]), dtype=torch.float64) for k in unique}
    return {k: torch.kthvalue(values, k + 1).values.to(torch.float64) for k in unique}


def percentiles(values: torch.Tensor, qs: Sequence[float]) -> list[torch.Tensor]:
    """Linear-interpolated percentiles of a 1-D tensor (numpy's default method), for tensors of any size.

    ``torch.quantile`` refuses inputs larger than 2**24 elements; order statistics do not.
    """
    n = values.numel()
    plan = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        lo = math.floor(pos)
        plan.append((lo, min(lo + 1, n - 1), pos - lo))
    picked = _order_statistics(values, [k for lo, hi, frac in plan for k in ((lo, hi) if frac else (lo,))])
    out = []
    for lo, hi, frac in plan:
        v_lo = picked[lo].to(values.device)
        if frac == 0.0 or hi == lo:
            out.append(v_lo)
        else:
            v_hi = picked[hi].to(values.device)
            out.append(v_lo + frac * (v_hi - v_lo))
    return out


def _check_finite(name: str, **values: float) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name}: {key} must be a finite number, got {value!r}")


class Normalizer:
    """Base class: a single-channel intensity mapping, ``normalizer(img, mask=None) -> float32 img``.

    Subclasses implement :meth:`apply` on a float32 tensor, which they must not modify.
    """

    name: str = ""
    #: True when an output voxel depends on its input voxel only (no image statistics): the normalizer may then
    #: run on any block of an image with the same result as on the whole
    pointwise: bool = False

    def __call__(self, img: ArrayLike, mask: ArrayLike | None = None) -> ArrayLike:
        x = as_float_tensor(img)
        return like(self.apply(x, _mask_tensor(mask, x)), img)

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The float32 result for the float32 tensor ``x`` (left unchanged) and an optional boolean ``mask``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor parameters, so that ``build_normalizer(self.name, **self.params())`` rebuilds it."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _float64_copy(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64, copy=True)


class NoNormalization(Normalizer):
    """Leave intensities unchanged (only cast to float32)."""

    name = "none"
    pointwise = True

    def __init__(self) -> None:
        pass

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
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

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        low = self.center - self.width / 2.0
        high = self.center + self.width / 2.0
        a, b = self.out_range
        unit = _float64_copy(x).clamp_(low, high).sub_(low).div_(self.width)
        return unit.mul_(b - a).add_(a).to(torch.float32)

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

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        clipped = _float64_copy(x).clamp_(self.lower, self.upper)
        return clipped.sub_(self.mean).div_(max(self.std, self.eps)).to(torch.float32)

    def params(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "mean": self.mean, "std": self.std, "eps": self.eps}


def _selection(x: torch.Tensor, mask: torch.Tensor | None, nonzero: bool) -> torch.Tensor | None:
    """The voxels the statistics come from: ``mask``, restricted to non-zero voxels if ``nonzero`` (None: all)."""
    if not nonzero:
        return mask
    return (x != 0) if mask is None else (mask & (x != 0))


def _gather(x: torch.Tensor, sel: torch.Tensor | None) -> torch.Tensor:
    """The selected voxels of ``x`` in raster order, as a 1-D tensor (all voxels, without a copy, if ``sel`` is None).

    Indexing with the flattened mask: an N-D boolean index makes torch build N int64 index arrays (24 bytes per
    selected voxel in 3D), a 1-D one only one.
    """
    flat = x.reshape(-1)
    return flat if sel is None else flat[sel.reshape(-1)]


def _standardize_(x64: torch.Tensor, sel: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``(x - mean) / max(std, eps)`` with population statistics over ``sel`` (all voxels if None), as float32.

    ``x64`` is a float64 tensor the caller owns: it is overwritten. Voxels outside ``sel`` become 0; ``sel`` must
    select at least one voxel.
    """
    values = _gather(x64, sel)
    mean = values.mean()
    std = values.std(correction=0)
    del values
    x64.sub_(mean).div_(torch.clamp(std, min=eps))
    if sel is not None:
        x64.masked_fill_(~sel, 0.0)
    return x64.to(torch.float32)


class ZScore(Normalizer):
    """Zero mean, unit standard deviation.

    Args:
        nonzero: compute the statistics on non-zero voxels only and keep zero voxels at 0 (skull-stripped MR,
            perfusion maps with a zero background).
        eps: lower bound of the standard deviation, so a constant channel becomes all zeros instead of NaN.

    A ``mask`` given at call time takes the place of the non-zero selection (and is combined with it when
    ``nonzero`` is also set): statistics come from the selected voxels, the others are set to 0. An empty selection
    leaves the channel unnormalized (logged).
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

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        sel = _selection(x, mask, self.nonzero)
        if sel is not None and not bool(sel.any()):
            logger.warning("z-score: the mask selects no voxels; channel left unnormalized")
            return x.clone()
        return _standardize_(_float64_copy(x), sel, self.eps)

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

    def apply(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        sel = _selection(x, mask, self.nonzero)
        values = _gather(x, sel)
        if values.numel() == 0:
            logger.warning("percentile_clip: the mask selects no voxels; channel left unnormalized")
            return x.clone()
        low, high = percentiles(values, (self.lower, self.upper))
        del values
        clipped = _float64_copy(x).clamp_(low, high)
        if self.then == "zscore":
            return _standardize_(clipped, sel, self.eps)
        clipped.sub_(low).div_(torch.clamp(high - low, min=self.eps))
        if sel is not None:
            clipped.masked_fill_(~sel, 0.0)
        return clipped.to(torch.float32)

    def params(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "then": self.then,
            "nonzero": self.nonzero,
            "eps": self.eps,
        }
