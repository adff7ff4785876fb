"""Benchmark: HD95 + surface Dice of medseg.metrics against MONAI on a synthetic 3-label volume.

Ground truth: three ellipsoids (labels 1, 2, 3) in a ``size**3`` volume with anisotropic spacing. Prediction: the
same ellipsoids with shifted centres and changed radii, plus a small false-positive blob of label 3. Both libraries
compute HD95 and NSD (tolerance 1 mm) for labels 1-3 with the same spacing; the script prints each time, the ratio,
and the largest absolute difference between the values.

MONAI needs one-hot tensors; their construction is timed separately and reported, and the ratio is given both
with and without it.

Usage: ``.venv/bin/python benchmarks/metrics.py [--size 256] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

from medseg.metrics import compute_metrics

SPACING = (0.8, 0.8, 2.5)
TOLERANCE_MM = 1.0
LABELS = (1, 2, 3)


def ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def phantom(size: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (size, size, size)
    s = size / 256.0
    gt = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    # (label, gt centre, gt radii, pred centre, pred radii), in voxels of a 256 grid
    objects = [
        (1, (128, 120, 128), (90, 70, 40), (130, 118, 127), (87, 73, 41)),
        (2, (120, 170, 110), (30, 22, 14), (121, 172, 111), (32, 21, 13)),
        (3, (60, 60, 170), (18, 26, 12), (58, 61, 171), (18, 24, 12)),
    ]
    for label, gc, gr, pc, pr in objects:
        gt[ellipsoid(shape, tuple(c * s for c in gc), tuple(r * s for r in gr))] = label
        pred[ellipsoid(shape, tuple(c * s for c in pc), tuple(r * s for r in pr))] = label
    pred[ellipsoid(shape, (200 * s, 200 * s, 60 * s), (3 * s, 3 * s, 2 * s))] = 3  # small false positive blob
    return pred, gt


def onehot(labels: np.ndarray) -> torch.Tensor:
    """(1, 1 + len(LABELS), *spatial) one-hot tensor, background in channel 0."""
    channels = [labels == c for c in (0, *LABELS)]
    return torch.from_numpy(np.stack(channels)[None])


def run_medseg(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    result = compute_metrics(
        pred, gt, labels=LABELS, spacing=SPACING, nsd_tolerance_mm=TOLERANCE_MM, metrics=("hd95", "nsd")
    )
    return np.array([[result[c]["hd95"], result[c]["nsd"]] for c in LABELS])


def run_monai(y_pred: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    nsd = SurfaceDiceMetric(
        class_thresholds=[TOLERANCE_MM] * len(LABELS), include_background=False, reduction="none"
    )
    hd_values = hd(y_pred, y, spacing=SPACING)[0].numpy()
    nsd_values = nsd(y_pred, y, spacing=SPACING)[0].numpy()
    return np.stack([hd_values, nsd_values], axis=1)


def best_time(fn, repeats: int):  # noqa: ANN001, ANN202 - tiny benchmark helper
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="report the best of this many runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    pred, gt = phantom(args.size)
    print(f"volume {gt.shape}, spacing {SPACING} mm, labels {LABELS}, NSD tolerance {TOLERANCE_MM} mm")
    print("voxels per label (gt / pred):", [(int((gt == c).sum()), int((pred == c).sum())) for c in LABELS])

    t_medseg, ours = best_time(lambda: run_medseg(pred, gt), args.repeats)
    t_onehot, tensors = best_time(lambda: (onehot(pred), onehot(gt)), args.repeats)
    t_monai, theirs = best_time(lambda: run_monai(*tensors), args.repeats)

    for i, c in enumerate(LABELS):
        print(
            f"label {c}: HD95 medseg {ours[i, 0]:.4f} mm, MONAI {theirs[i, 0]:.4f} mm; "
            f"NSD medseg {ours[i, 1]:.5f}, MONAI {theirs[i, 1]:.5f}"
        )
    print(f"medseg  HD95+NSD: {t_medseg:.3f} s")
    print(f"MONAI   HD95+NSD: {t_monai:.3f} s (+ {t_onehot:.3f} s to build its one-hot inputs)")
    print(
        f"ratio MONAI/medseg: {t_monai / t_medseg:.2f}x ({(t_monai + t_onehot) / t_medseg:.2f}x with one-hot)"
    )
    print(f"max |HD95 difference|: {np.max(np.abs(ours[:, 0] - theirs[:, 0])):.2e} mm")
    print(f"max |NSD difference|:  {np.max(np.abs(ours[:, 1] - theirs[:, 1])):.2e}")


if __name__ == "__main__":
    main()
