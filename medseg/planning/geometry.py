"""Geometry rules 1-4 (see :mod:`medseg.planning.rules`): target spacing, median shape, nnU-Net's per-axis
pooling, the initial patch and the network widths."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medseg.planning.fingerprint import Fingerprint

ANISO_THRESHOLD = 3.0
LOWRES_PERCENTILE = 10.0
INITIAL_PATCH_EDGE = 256
MIN_FEATURE_MAP = 4
MAX_FEATURES = {2: 512, 3: 320}


def target_spacing(fp: Fingerprint) -> tuple[list[float], str]:
    """Rule 1: the target spacing and its reason."""
    spacings = fp.spacings
    target = np.median(spacings, axis=0)
    sizes = np.median(fp.shapes, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    reason = f"median spacing per axis ({len(fp.cases)} cases)"
    if not others:
        return [float(t) for t in target], reason
    other_spacing = max(target[i] for i in others)
    aniso_spacing = target[worst] > ANISO_THRESHOLD * other_spacing
    aniso_voxels = sizes[worst] * ANISO_THRESHOLD < min(sizes[i] for i in others)
    if aniso_spacing and aniso_voxels:
        low = float(np.percentile(spacings[:, worst], LOWRES_PERCENTILE))
        if low < other_spacing:
            low = float(max(other_spacing, low) + 1e-5)
        target[worst] = low
        reason = (
            f"median spacing; axis {worst} is low-resolution ({float(np.median(spacings[:, worst])):.3g} mm > "
            f"{ANISO_THRESHOLD:g} x {float(other_spacing):.3g} mm, {sizes[worst]:.0f} voxels vs "
            f"{min(sizes[i] for i in others):.0f}): it gets the {LOWRES_PERCENTILE:g}th percentile of its spacings "
            "(nnU-Net)"
        )
    return [float(t) for t in target], reason


def median_shape(fp: Fingerprint, spacing: Sequence[float], crop_threshold: float | None) -> list[float]:
    """Rule 2: median over cases of the (cropped) shape resampled to ``spacing``."""
    shapes = []
    for c in fp.cases:
        shape = c.crop_shapes.get(float(crop_threshold), c.shape) if crop_threshold is not None else c.shape
        shapes.append([s * sp / t for s, sp, t in zip(shape, c.spacing, spacing, strict=True)])
    return [float(v) for v in np.median(np.array(shapes, dtype=np.float64), axis=0)]


def pool_props(spacing: Sequence[float], patch: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """nnU-Net's per-axis pooling (``get_pool_and_conv_props``): (pools per axis, padded patch, divisors)."""
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch]
    pools = [0] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * MIN_FEATURE_MAP]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * MIN_FEATURE_MAP:
            break
        if not valid:
            break
        for i in valid:
            pools[i] += 1
            current_spacing[i] *= 2
            current_size[i] = math.ceil(current_size[i] / 2)
    divisors = [2**p for p in pools]
    padded = [int(math.ceil(p / d) * d) for p, d in zip(patch, divisors, strict=True)]
    return pools, padded, divisors


def initial_patch(spacing: Sequence[float], shape: Sequence[float]) -> list[int]:
    """Equal edge lengths in mm, ``INITIAL_PATCH_EDGE**dims`` voxels, clipped to ``shape``."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    dims = len(spacing)
    scale = (INITIAL_PATCH_EDGE**dims / np.prod(inv)) ** (1.0 / dims)
    return [max(1, min(int(round(i * scale)), int(round(s)))) for i, s in zip(inv, shape, strict=True)]


def features_for(depth: int, base: int, dims: int = 3) -> list[int]:
    """Rule 4: ``depth + 1`` widths doubling from ``base``, capped (320 in 3D, 512 in 2D)."""
    cap = MAX_FEATURES[dims]
    return [min(base * 2**i, cap) for i in range(depth + 1)]
