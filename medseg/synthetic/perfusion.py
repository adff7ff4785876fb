"""Multimodal perfusion-like cases: CBF, MTT and CBV maps of a brain with an infarct core.

Tissue classes and their noise-free values (before a per-case scale of +-10 %):

=============  ==================  =======  ===========
tissue         CBF ml/100 g/min    MTT s    CBV ml/100 g
=============  ==================  =======  ===========
grey matter    50                  3.8      4.0
white matter   20                  4.4      2.0
CSF            2                   1.0      0.2
infarct core   10                  10.0     1.5
=============  ==================  =======  ===========

The core (label 1) is low in CBF and CBV and high in MTT, so it stands out in every map with a contrast of several
noise standard deviations. Outside the brain every map is 0. Geometry is in world mm (see
:mod:`medseg.synthetic.phantoms`), values are drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.synthetic.phantoms import (
    check_shape,
    correlated_noise,
    ellipsoid_mask,
    ellipsoid_radius2,
    phantom_grid,
    rotation_matrix,
    smooth_field,
)

logger = logging.getLogger(__name__)

__all__ = ["CHANNELS", "NOISE_SD", "TISSUE_VALUES", "MultiChannelPhantom", "make_perfusion_case"]

CHANNELS: tuple[str, ...] = ("CBF", "MTT", "CBV")
TISSUE_VALUES: dict[str, dict[str, float]] = {
    "grey_matter": {"CBF": 50.0, "MTT": 3.8, "CBV": 4.0},
    "white_matter": {"CBF": 20.0, "MTT": 4.4, "CBV": 2.0},
    "csf": {"CBF": 2.0, "MTT": 1.0, "CBV": 0.2},
    "core": {"CBF": 10.0, "MTT": 10.0, "CBV": 1.5},
}
NOISE_SD: dict[str, float] = {"CBF": 3.0, "MTT": 0.6, "CBV": 0.25}


@dataclass
class MultiChannelPhantom:
    """A multimodal synthetic case.

    Attributes:
        channels: channel name -> float32 array (i, j, k), in the order of :data:`CHANNELS`.
        label: uint8 array, 1 = infarct core.
        affine: 4x4 voxel index -> RAS world mm.
        label_names: label id -> name.
        noise_sd: channel name -> standard deviation of the noise added inside the brain.
    """

    channels: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str]
    noise_sd: dict[str, float] = field(default_factory=dict)

    def stacked(self) -> np.ndarray:
        """The channels as one channel-first ``(C, i, j, k)`` float32 array, in dictionary order."""
        return np.stack(list(self.channels.values())).astype(np.float32, copy=False)


def make_perfusion_case(
    shape: Sequence[int] = (64, 64, 24),
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    noise_scale: float = 1.0,
    affine: np.ndarray | None = None,
) -> MultiChannelPhantom:
    """A brain with grey/white matter, ventricles and one infarct core, as CBF/MTT/CBV maps.

    Args:
        shape: grid shape (i, j, k).
        spacing: voxel size in mm; default (3.0, 3.0, 5.0) when ``affine`` is not given (axial RAS grid).
        seed: integer seed of ``numpy.random.default_rng``.
        noise_scale: multiplies the default noise standard deviations :data:`NOISE_SD`.
        affine: optional 4x4 voxel -> RAS mm matrix (see :func:`medseg.synthetic.phantoms.make_affine`).
    """
    shape = check_shape(shape, 3)
    if not np.isfinite(noise_scale) or noise_scale < 0:
        raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
    affine, vox, half, rel = phantom_grid(shape, spacing, affine, default=(3.0, 3.0, 5.0))
    rng = np.random.default_rng(seed)
    wobble = smooth_field(rng, shape, 6.0 / vox)  # irregular (gyral-like) boundaries, 6 mm correlation

    brain_axes = np.array([0.80, 0.86, 0.84]) * half * rng.uniform(0.93, 1.0, 3)
    brain = ellipsoid_mask(rel, np.zeros(3), brain_axes)
    white = brain & (ellipsoid_radius2(rel, np.zeros(3), 0.72 * brain_axes) + 0.15 * wobble <= 1.0)
    for side in (-1.0, 1.0):  # deep grey nuclei
        white &= ~ellipsoid_mask(rel, np.array([side * 0.22, 0.05, -0.05]) * brain_axes, 0.12 * brain_axes)
    csf = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):  # lateral ventricles
        c = np.array([side * 0.09, 0.02, 0.12]) * brain_axes
        csf |= ellipsoid_mask(rel, c, np.array([0.05, 0.32, 0.14]) * brain_axes)
    csf &= brain

    # infarct core: a rotated, irregular ellipsoid in one hemisphere, reaching from white matter into the cortex
    side = rng.choice([-1.0, 1.0])
    c = (
        np.array([side * rng.uniform(0.42, 0.58), rng.uniform(-0.35, 0.35), rng.uniform(-0.25, 0.25)])
        * brain_axes
    )
    a = rng.uniform(0.22, 0.32, 3) * brain_axes
    a[2] = max(a[2], 2.5 * vox[2])
    rot = rotation_matrix(rng.uniform(-30, 30, 3))
    core = brain & ~csf & (ellipsoid_radius2(rel, c, a, rot) + 0.25 * wobble <= 1.0)
    if not core.any():
        raise ValueError(f"the infarct core has no voxel on this grid (shape {shape}); use a larger shape")

    scale = rng.uniform(0.9, 1.1, len(CHANNELS))
    noise_sd = {name: NOISE_SD[name] * noise_scale for name in CHANNELS}
    sigma = 0.5 * vox.min() / vox  # slight partial-volume smoothing
    channels: dict[str, np.ndarray] = {}
    for ch, name in enumerate(CHANNELS):
        values = {t: v[name] * (scale[ch] if t != "core" else 1.0) for t, v in TISSUE_VALUES.items()}
        m = np.zeros(shape)
        m[brain] = values["grey_matter"]
        m[white] = values["white_matter"]
        m[csf] = values["csf"]
        m[core] = values["core"]
        m = ndimage.gaussian_filter(m, sigma=sigma, mode="nearest")
        m += correlated_noise(rng, shape, noise_sd[name])
        channels[name] = np.where(brain, np.clip(m, 0.0, None), 0.0).astype(np.float32)

    label = core.astype(np.uint8)
    logger.debug("perfusion case seed=%s shape=%s core voxels=%d", seed, shape, int(label.sum()))
    return MultiChannelPhantom(
        channels=channels, label=label, affine=affine, label_names={1: "infarct_core"}, noise_sd=noise_sd
    )
