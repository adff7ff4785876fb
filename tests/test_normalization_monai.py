"""medseg's normalizers against MONAI's intensity transforms: why medseg keeps its own.

medseg's outputs are the float32 roundings of the exact float64 mappings (checked bit for bit against an independent
numpy computation with exactly summed statistics), so a model sees the same inputs whatever library version runs it.
MONAI's transforms compute in float32: close (to ~1e-6 of the output scale on ordinary images) but not bit-equal,
which can move a voxel's label across a decision boundary, and visibly wrong for an image with a large offset.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import (
    ClipIntensityPercentiles,
    NormalizeIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)

from medseg.data.normalization import CTWindow, PercentileClip, ZScore


def _ct_like(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    body = rng.random(shape) < 0.7
    return np.where(body, rng.normal(40.0, 120.0, shape), -1000.0 + rng.normal(0, 5, shape)).astype(
        np.float32
    )


def _exact_zscore(x: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
    x64 = x.astype(np.float64)
    values = x64.ravel() if sel is None else x64[sel]
    mean = math.fsum(values) / values.size
    std = math.sqrt(math.fsum((values - mean) ** 2) / values.size)
    out = (x64 - mean) / max(std, 1e-8)
    if sel is not None:
        out[~sel] = 0.0
    return out.astype(np.float32)


def _bits_equal_share(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.asarray(a, np.float32) == np.asarray(b, np.float32)))


@pytest.mark.parametrize("shape", [(48, 40), (24, 20, 16)])
@pytest.mark.parametrize("nonzero", [False, True])
def test_zscore_is_exact_and_monai_is_close_but_not_bit_equal(shape, nonzero) -> None:
    x = _ct_like(shape, seed=len(shape))
    if nonzero:
        x = np.maximum(x + 1000.0, 0.0)  # air becomes 0
        x[: shape[0] // 4] = 0.0
    ours = ZScore(nonzero=nonzero)(x)
    expected = _exact_zscore(x, (x != 0) if nonzero else None)
    np.testing.assert_array_equal(ours, expected)
    ref = NormalizeIntensity(nonzero=nonzero)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ref, ours, atol=1e-5, rtol=0)
    assert _bits_equal_share(ref, ours) < 0.9


def test_zscore_of_a_large_offset_image_monai_loses_precision() -> None:
    x = np.random.default_rng(3).normal(1e4, 1.0, (40, 40, 8)).astype(np.float32)
    ours = ZScore()(x)
    np.testing.assert_array_equal(ours, _exact_zscore(x))
    ref = NormalizeIntensity()(torch.from_numpy(x)).numpy()
    assert np.abs(ref - ours).max() > 1e-4


@pytest.mark.parametrize("value", [0.0, 7.0, -1024.0])
def test_constant_images_give_zeros_in_both(value) -> None:
    x = np.full((6, 5, 4), value, dtype=np.float32)
    for nonzero in (False, True):
        ours = ZScore(nonzero=nonzero)(x)
        ref = NormalizeIntensity(nonzero=nonzero)(torch.from_numpy(x)).numpy()
        assert not np.isnan(ours).any() and not np.isnan(ref).any()
        np.testing.assert_array_equal(ours, np.zeros_like(x))
        np.testing.assert_array_equal(ref, np.zeros_like(x))


@pytest.mark.parametrize("center,width,out_range", [(40.0, 400.0, (0.0, 1.0)), (37.3, 351.7, (-1.0, 1.0))])
def test_ct_window_is_exact_and_monai_float32_differs_in_bits(center, width, out_range) -> None:
    x = _ct_like((32, 30, 12), seed=5)
    low, high = center - width / 2, center + width / 2
    a, b = out_range
    expected = ((np.clip(x.astype(np.float64), low, high) - low) / width * (b - a) + a).astype(np.float32)
    ours = CTWindow(center, width, out_range)(x)
    np.testing.assert_array_equal(ours, expected)
    ref = ScaleIntensityRange(low, high, a, b, clip=True)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ref, ours, atol=1e-6, rtol=0)
    assert _bits_equal_share(ref, ours) < 0.95


@pytest.mark.parametrize("then", ["rescale", "zscore"])
def test_percentile_clip_is_exact_and_monai_differs_in_bits(then) -> None:
    x = _ct_like((40, 36, 10), seed=6)
    x64 = x.astype(np.float64)
    lo, hi = np.percentile(x64, [0.5, 99.5])
    clipped = np.clip(x64, lo, hi)
    ours = PercentileClip(0.5, 99.5, then=then)(x)
    if then == "rescale":
        np.testing.assert_array_equal(ours, ((clipped - lo) / (hi - lo)).astype(np.float32))
        ref = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(torch.from_numpy(x)).numpy()
        atol = 1e-6
    else:
        np.testing.assert_array_equal(ours, _exact_zscore(clipped))
        ref = NormalizeIntensity()(ClipIntensityPercentiles(0.5, 99.5)(torch.from_numpy(x))).numpy()
        atol = 1e-5
    np.testing.assert_allclose(ref, ours, atol=atol, rtol=0)
    assert _bits_equal_share(ref, ours) < 0.95
