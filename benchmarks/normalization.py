"""Benchmark + agreement: medseg's intensity normalizers against MONAI's transforms on a whole volume.

The volume is a ``--shape`` float32 CT-like image (default 512 x 512 x 600: air at -1000 HU around a body of soft
tissue near 40 HU with noise, bone near 700 HU). Each pair runs in the same process, one after the other, on the
same tensor, and the script prints the wall time, the extra peak resident memory (``_peak.py``), the ratios
MONAI/medseg, the largest absolute difference, the largest difference relative to the output's scale (its standard
deviation) and the share of voxels whose float32 values are bit for bit equal:

- ``zscore``: :class:`~medseg.data.normalization.ZScore` against ``NormalizeIntensity()``, and with
  ``nonzero=True`` against ``NormalizeIntensity(nonzero=True)``;
- ``ct_window``: :class:`~medseg.data.normalization.CTWindow` against ``ScaleIntensityRange(clip=True)``;
- ``percentile_clip``: :class:`~medseg.data.normalization.PercentileClip` with ``then="rescale"`` against
  ``ScaleIntensityRangePercentiles(clip=True)`` and with ``then="zscore"`` against ``ClipIntensityPercentiles`` +
  ``NormalizeIntensity``.

A last row repeats the z-score on an image with a large offset (``1e4 + N(0, 1)``), where MONAI's float32 statistics
lose precision.

Usage: ``.venv/bin/python benchmarks/normalization.py [--shape 512 512 600] [--quick]``
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from _peak import best_of
from monai.transforms import (
    ClipIntensityPercentiles,
    NormalizeIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)

from medseg.data.normalization import CTWindow, PercentileClip, ZScore

QUICK_SHAPE = (192, 192, 160)


def ct_volume(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Float32 CT-like volume built slab by slab (no full-size float64 temporaries)."""
    rng = np.random.default_rng(seed)
    out = np.empty(tuple(shape), dtype=np.float32)
    x, y = np.ogrid[: shape[0], : shape[1]]
    body = ((x - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((y - shape[1] / 2) / (0.3 * shape[1])) ** 2 <= 1
    bone = ((x - shape[0] / 2) / (0.05 * shape[0])) ** 2 + (
        (y - 0.65 * shape[1]) / (0.05 * shape[1])
    ) ** 2 <= 1
    for z in range(shape[2]):
        noise = rng.normal(0.0, 15.0, shape[:2]).astype(np.float32)
        out[:, :, z] = np.where(body, np.where(bone, 700.0, 40.0), -1000.0) + noise
    return torch.from_numpy(out)


def _compare(ours: torch.Tensor, theirs: torch.Tensor) -> str:
    ours, theirs = torch.as_tensor(ours).float(), torch.as_tensor(theirs).float()
    diff = (ours.double() - theirs.double()).abs()
    scale = float(ours.double().std()) or 1.0
    equal = float((ours == theirs).double().mean()) * 100
    return f"max |diff| {float(diff.max()):.1e} (/{scale:.2g} scale: {float(diff.max()) / scale:.1e}), bit-equal {equal:5.1f}%"


def _row(
    name: str, ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], repeats: int
) -> None:
    a, t_a, m_a = best_of(ours, repeats)
    b, t_b, m_b = best_of(theirs, repeats)
    print(
        f"{name:<26} medseg {t_a:6.2f} s {m_a:6.0f} MiB  MONAI {t_b:6.2f} s {m_b:6.0f} MiB  "
        f"MONAI/medseg time {t_b / t_a:4.2f}x peak {m_b / max(m_a, 1.0):4.2f}x  {_compare(a, b)}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 600))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help=f"shape {QUICK_SHAPE}, 1 repeat")
    args = parser.parse_args(argv)
    shape = QUICK_SHAPE if args.quick else tuple(args.shape)
    repeats = 1 if args.quick else args.repeats
    warnings.simplefilter("ignore")
    x = ct_volume(shape)
    print(
        f"volume {shape} float32 ({x.numel() * 4 / 2**20:.0f} MiB), best of {repeats}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    _row("zscore", lambda: ZScore()(x), lambda: NormalizeIntensity()(x), repeats)
    shifted = x + 1000.0  # air at 0: the non-zero selection matters
    _row(
        "zscore nonzero",
        lambda: ZScore(nonzero=True)(shifted),
        lambda: NormalizeIntensity(nonzero=True)(shifted),
        repeats,
    )
    _row(
        "ct_window 40/400",
        lambda: CTWindow(40.0, 400.0)(x),
        lambda: ScaleIntensityRange(-160.0, 240.0, 0.0, 1.0, clip=True)(x),
        repeats,
    )
    _row(
        "percentile rescale",
        lambda: PercentileClip(0.5, 99.5, then="rescale")(x),
        lambda: ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(x),
        repeats,
    )
    _row(
        "percentile zscore",
        lambda: PercentileClip(0.5, 99.5, then="zscore")(x),
        lambda: NormalizeIntensity()(ClipIntensityPercentiles(0.5, 99.5)(x)),
        repeats,
    )
    offset = torch.from_numpy(
        np.random.default_rng(1).normal(1e4, 1.0, x.shape[:2] + (8,)).astype(np.float32)
    )
    _row("zscore, 1e4 + N(0,1)", lambda: ZScore()(offset), lambda: NormalizeIntensity()(offset), repeats)


if __name__ == "__main__":
    main()
