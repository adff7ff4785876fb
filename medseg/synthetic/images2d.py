"""2D synthetic cases: discs and ellipses on a textured background.

Class 1 objects are discs, classes 2.. are rotated ellipses; each class has its own mean intensity, clearly apart
from the background and from the other classes, so that a small 2D network can separate them. Objects never
overlap. Everything is drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.synthetic.phantoms import correlated_noise, smooth_field

logger = logging.getLogger(__name__)

__all__ = ["Case2D", "make_2d_case"]

MAX_CLASSES = 6
BACKGROUND_MEAN = 0.2
NOISE_SD = 0.04


@dataclass
class Case2D:
    """A 2D synthetic case.

    Attributes:
        image: float32 array (H, W), values roughly in [0, 1].
        label: uint8 array (H, W), 0 = background, 1..n_classes.
        spacing: pixel size in mm along the two axes.
        label_names: label id -> name.
        intensities: label id -> noise-free mean intensity of that class.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float]
    label_names: dict[int, str]
    intensities: dict[int, float]


def _class_intensity(lab: int, n_classes: int) -> float:
    """Evenly spaced class levels from 0.45 to 0.95 (background sits at 0.2)."""
    if n_classes == 1:
        return 0.7
    return 0.45 + 0.5 * (lab - 1) / (n_classes - 1)


def make_2d_case(
    shape: Sequence[int] = (128, 128),
    seed: int = 0,
    n_classes: int = 2,
    spacing: Sequence[float] = (1.0, 1.0),
    objects_per_class: int = 2,
) -> Case2D:
    """A textured background with ``objects_per_class`` non-overlapping objects of each foreground class.

    Args:
        shape: image shape (H, W), each >= 32.
        seed: integer seed of ``numpy.random.default_rng``.
        n_classes: number of foreground classes (labels 1..n_classes; background 0 is not counted), 1..6.
        spacing: pixel size in mm, returned with the case.
        objects_per_class: number of objects drawn for each class, >= 1.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be two sizes >= 32, got {shape}")
    if (
        isinstance(n_classes, bool)
        or not isinstance(n_classes, (int, np.integer))
        or not 1 <= n_classes <= MAX_CLASSES
    ):
        raise ValueError(
            f"n_classes (foreground classes) must be an integer in 1..{MAX_CLASSES}, got {n_classes!r}"
        )
    if (
        isinstance(objects_per_class, bool)
        or not isinstance(objects_per_class, (int, np.integer))
        or objects_per_class < 1
    ):
        raise ValueError(f"objects_per_class must be an integer >= 1, got {objects_per_class!r}")
    if len(spacing) != 2 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be two positive numbers, got {tuple(spacing)}")
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape, dtype=np.float64)
    label = np.zeros(shape, dtype=np.uint8)
    size = min(shape)
    for lab in range(1, n_classes + 1):
        for _ in range(objects_per_class):
            _place_object(rng, label, rows, cols, lab, size)

    # background: smooth blobs plus a faint oriented grating
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6.0, 14.0)
    grating = np.sin(2 * np.pi * (rows * np.cos(angle) + cols * np.sin(angle)) / period)
    image = BACKGROUND_MEAN + 0.05 * smooth_field(rng, shape, (size / 16, size / 16)) + 0.03 * grating
    intensities = {lab: _class_intensity(lab, n_classes) for lab in range(1, n_classes + 1)}
    for lab, value in intensities.items():
        inside = label == lab
        image[inside] = value + 0.02 * smooth_field(rng, shape, (2.0, 2.0))[inside]
    image = ndimage.gaussian_filter(image, sigma=0.7, mode="nearest")
    image += correlated_noise(rng, shape, NOISE_SD, sigma_vox=0.5)

    names = {lab: ("disc" if lab == 1 else f"ellipse_{lab - 1}") for lab in intensities}
    return Case2D(
        image=image.astype(np.float32),
        label=label,
        spacing=(float(spacing[0]), float(spacing[1])),
        label_names=names,
        intensities=intensities,
    )


def _place_object(
    rng: np.random.Generator, label: np.ndarray, rows: np.ndarray, cols: np.ndarray, lab: int, size: int
) -> None:
    """Draw a disc (class 1) or rotated ellipse on a free spot of ``label``, retrying up to 100 positions."""
    for _ in range(100):
        if lab == 1:
            a = b = rng.uniform(0.06, 0.11) * size
        else:
            a, b = rng.uniform(0.05, 0.14) * size, rng.uniform(0.03, 0.07) * size
        margin = max(a, b) + 2
        r0 = rng.uniform(margin, label.shape[0] - 1 - margin)
        c0 = rng.uniform(margin, label.shape[1] - 1 - margin)
        theta = rng.uniform(0, np.pi)
        dr, dc = rows - r0, cols - c0
        u = dr * np.cos(theta) + dc * np.sin(theta)
        v = -dr * np.sin(theta) + dc * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        grown = ndimage.binary_dilation(inside, iterations=2)  # keep a 2-pixel gap between objects
        if not np.any(label[grown]):
            label[inside] = lab
            return
    raise ValueError(
        f"could not place a class-{lab} object without overlap; use a larger shape or fewer objects"
    )
