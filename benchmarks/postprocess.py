"""Benchmark + agreement: medseg's label-map postprocessing against MONAI's on a whole study grid.

The phantom is a ``--shape`` label map (default 512 x 512 x 600, uint8, spacing 0.8 x 0.8 x 1.0 mm) with three
labels: a large ellipsoid (1), a medium one (2), two separate ellipsoids of label 3, and ``--specks`` small blocks
(1 to 27 voxels) of random labels scattered over the grid -- the false positives postprocessing is for.

Compared, in the same process, one after the other (wall time and extra peak resident memory, see ``_peak.py``):

- keep the largest component: :func:`medseg.inference.components.largest_component` against
  ``monai.transforms.KeepLargestConnectedComponent`` (one label map, ``independent=True``, full connectivity);
- remove small objects: :func:`medseg.inference.components.remove_small` against
  ``monai.transforms.RemoveSmallObjects(by_measure=True, pixdim=spacing)`` applied per label to a binary mask (the
  thin wrapper medseg would need: on a multi-label map MONAI treats all voxels of one label value as one object).

The script prints each time and peak, the MONAI/medseg ratios and whether the label maps are equal. MONAI's two
transforms need scikit-image, which medseg does not install: put one on ``PYTHONPATH`` (e.g.
``pip install --target /tmp/skimage scikit-image``); without it the script says so and measures medseg only.

Usage: ``[PYTHONPATH=/tmp/skimage] .venv/bin/python benchmarks/postprocess.py [--shape 512 512 600] [--quick]``
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from collections.abc import Sequence

import numpy as np
from _peak import best_of

from medseg.inference.components import largest_component, remove_small

SPACING = (0.8, 0.8, 1.0)
MIN_VOLUME_MM3 = 20.0
QUICK_SHAPE = (192, 192, 160)


def _ellipsoid(label: np.ndarray, value: int, centre: Sequence[float], radii: Sequence[float]) -> None:
    """Set ``value`` inside an ellipsoid, computed only in its bounding box."""
    lo = [max(0, int(c - r)) for c, r in zip(centre, radii, strict=True)]
    hi = [min(n, int(c + r) + 1) for n, c, r in zip(label.shape, centre, radii, strict=True)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0
    box = label[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    box[inside] = value


def phantom(shape: Sequence[int], specks: int, seed: int = 0) -> np.ndarray:
    """The label map described in the module docstring."""
    rng = np.random.default_rng(seed)
    label = np.zeros(tuple(shape), dtype=np.uint8)
    f = np.asarray(shape, dtype=float)
    _ellipsoid(label, 1, f * (0.45, 0.5, 0.5), f * (0.25, 0.2, 0.2))
    _ellipsoid(label, 2, f * (0.75, 0.35, 0.45), f * (0.08, 0.1, 0.12))
    _ellipsoid(label, 3, f * (0.7, 0.7, 0.3), f * (0.06, 0.05, 0.08))
    _ellipsoid(label, 3, f * (0.25, 0.75, 0.7), f * (0.05, 0.04, 0.06))
    for _ in range(specks):
        size = rng.integers(1, 4, 3)
        corner = [int(rng.integers(0, n - s)) for n, s in zip(shape, size, strict=True)]
        block = tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))
        label[block] = rng.integers(1, 4)
    return label


def monai_largest(label: np.ndarray) -> np.ndarray:
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    out = KeepLargestConnectedComponent(independent=True, connectivity=None)(
        torch.from_numpy(label[None].copy())
    )
    return np.asarray(out)[0]


def monai_remove_small(label: np.ndarray) -> np.ndarray:
    from monai.transforms import RemoveSmallObjects

    remove = RemoveSmallObjects(
        min_size=MIN_VOLUME_MM3, connectivity=label.ndim, by_measure=True, pixdim=SPACING
    )
    out = label.copy()
    for value in (int(v) for v in np.unique(label) if v != 0):
        mask = label == value
        kept = np.asarray(remove(mask[None]))[0]
        out[mask & ~kept] = 0
    return out


def _row(name: str, ours: tuple[float, float], theirs: tuple[float, float] | None, equal: bool | None) -> str:
    text = f"{name:<22} medseg {ours[0]:7.2f} s {ours[1]:8.0f} MiB"
    if theirs is None:
        return text + "   MONAI: not run (needs scikit-image)"
    return (
        text + f"   MONAI {theirs[0]:7.2f} s {theirs[1]:8.0f} MiB   ratio MONAI/medseg time "
        f"{theirs[0] / ours[0]:5.2f}x, peak {theirs[1] / max(ours[1], 1.0):5.2f}x   label maps equal: {equal}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 600))
    parser.add_argument("--specks", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help=f"shape {QUICK_SHAPE}, 1 repeat")
    args = parser.parse_args(argv)
    shape = QUICK_SHAPE if args.quick else tuple(args.shape)
    repeats = 1 if args.quick else args.repeats
    label = phantom(shape, args.specks)
    print(
        f"label map {shape} uint8 ({label.nbytes / 2**20:.0f} MiB), spacing {SPACING} mm, labels 1-3, "
        f"{args.specks} specks; threshold {MIN_VOLUME_MM3} mm^3; best of {repeats}"
    )
    have_monai = importlib.util.find_spec("skimage") is not None
    warnings.simplefilter("ignore")  # MONAI / scikit-image deprecation chatter

    steps = [
        ("largest component", lambda: largest_component(label), lambda: monai_largest(label)),
        (
            "remove small objects",
            lambda: remove_small(label, MIN_VOLUME_MM3, SPACING),
            lambda: monai_remove_small(label),
        ),
    ]
    for name, ours_fn, theirs_fn in steps:
        ours, t_ours, m_ours = best_of(ours_fn, repeats)
        if not have_monai:
            print(_row(name, (t_ours, m_ours), None, None))
            continue
        theirs, t_theirs, m_theirs = best_of(theirs_fn, repeats)
        equal = bool(np.array_equal(ours, theirs))
        print(_row(name, (t_ours, m_ours), (t_theirs, m_theirs), equal))
        if not equal:
            print(f"{'':<22} {int(np.count_nonzero(ours != theirs))} voxel(s) differ")


if __name__ == "__main__":
    main()
