"""CT-like 3D phantoms with organ labels, defined in world millimetres.

The phantom is built in RAS world coordinates around the centre of the field of view, then sampled at the voxel
centres of the grid given by ``affine``. Shapes therefore stay physical with anisotropic spacing, and the same seed
gives the same anatomy in any orientation (RAS, LPS, permuted or oblique grids covering the same field of view):
only the voxel order changes (and the noise, which is drawn per voxel).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give identical arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["ORGANS", "Phantom", "make_affine", "make_ct_phantom", "world_coordinates"]

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 0.0

_AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class _Organ:
    name: str
    center: tuple[
        float, float, float
    ]  # x, y as fractions of the inner body semi-axes; z of the FOV half-height
    semi_axes: tuple[float, float, float]  # same units as center
    hu: float
    contrast_hu: float | None = None  # HU in a contrast-enhanced case (None: unchanged)
    hu_jitter: float = 5.0


# Label i+1 is ORGANS[i]. Positions follow RAS: +x is the patient's right, +y anterior, +z superior.
ORGANS: tuple[_Organ, ...] = (
    _Organ("liver", (0.40, 0.10, 0.15), (0.36, 0.45, 0.45), 60.0),
    _Organ("spleen", (-0.50, -0.15, 0.25), (0.18, 0.25, 0.30), 45.0),
    _Organ("kidney_right", (0.38, -0.50, -0.20), (0.13, 0.18, 0.35), 30.0, contrast_hu=150.0),
    _Organ("kidney_left", (-0.38, -0.50, -0.25), (0.13, 0.18, 0.35), 30.0, contrast_hu=150.0),
    _Organ("vertebra", (0.0, -0.72, 0.0), (0.12, 0.12, 3.0), 700.0, hu_jitter=50.0),
    _Organ("aorta", (-0.10, -0.40, 0.0), (0.08, 0.08, 3.0), 40.0, contrast_hu=200.0),
)


@dataclass
class Phantom:
    """A synthetic CT volume.

    Attributes:
        image: float32 HU array indexed (i, j, k).
        label: uint8 array, 0 = background, 1..n = ``label_names``.
        affine: 4x4 float64 voxel index -> RAS world mm.
        label_names: label id -> organ name.
        hu: label id -> the organ's noise-free HU value in this case.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str]
    hu: dict[int, float] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about the world x, then y, then z axis (angles in degrees): ``Rz @ Ry @ Rx``."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(
    shape: Sequence[int],
    spacing: Sequence[float],
    axcodes: str = "RAS",
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    center: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A 4x4 RAS affine whose voxel axes point along ``axcodes``, optionally rotated, centred on ``center``.

    Args:
        shape: the 3D grid shape (used to put the centre of the field of view at ``center``).
        spacing: voxel size in mm along the voxel axes i, j, k.
        axcodes: direction of increasing i, j, k, e.g. "RAS", "LPS", "LAS", "PIR".
        rotation_deg: extra rotation of the grid about the world x, y, z axes (an oblique acquisition).
        center: world position (mm) of the centre of the field of view.
    """
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(
            f"make_affine needs a 3D shape and spacing, got shape={tuple(shape)} spacing={tuple(spacing)}"
        )
    if any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    codes = axcodes.upper()
    if (
        len(codes) != 3
        or any(c not in _AXIS_CODES for c in codes)
        or {_AXIS_CODES[c][0] for c in codes} != {0, 1, 2}
    ):
        raise ValueError(
            f"axcodes must name each of the R/L, A/P, S/I axes once (e.g. 'RAS', 'LPS'), got {axcodes!r}"
        )
    direction = np.zeros((3, 3))
    for v, c in enumerate(codes):
        world_axis, sign = _AXIS_CODES[c]
        direction[world_axis, v] = sign
    linear = rotation_matrix(rotation_deg) @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    mid = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(center, dtype=np.float64) - linear @ mid
    return affine


def world_coordinates(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, shape ``(3, *shape)`` float64."""
    idx = np.indices(tuple(shape), dtype=np.float64)
    nd = len(shape)
    lin = affine[:nd, :nd]
    return np.einsum("wv,v...->w...", lin, idx) + affine[:nd, nd].reshape((nd,) + (1,) * nd)


def fov_frame(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (world mm) of the field of view and its half-extents along the world x, y, z axes.

    Each world axis takes the extent of the voxel axis closest to it, so a flipped or permuted grid covering the
    same box gives the same frame, and an oblique grid gets the frame of its own (rotated) box.
    """
    shape_arr = np.asarray(shape, dtype=np.float64)
    center = affine[:3, :3] @ ((shape_arr - 1.0) / 2.0) + affine[:3, 3]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ornt = nib.orientations.io_orientation(affine)  # row v: (world axis, sign) of voxel axis v
    half = np.zeros(3)
    for v in range(3):
        half[int(ornt[v, 0])] = shape_arr[v] * spacing[v] / 2.0
    return center, half


def ellipsoid_mask(
    rel: np.ndarray, center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the points of ``rel`` (3, *shape) inside a (rotated) ellipsoid, all in mm."""
    q = ellipsoid_radius2(rel, center, semi_axes, rotation)
    return q <= 1.0


def ellipsoid_radius2(
    rel: np.ndarray, center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Normalized squared radius ``sum((R^T (x - c) / a)^2)``: < 1 inside the ellipsoid, 1 on its surface."""
    d = rel - np.asarray(center, dtype=np.float64).reshape((3,) + (1,) * (rel.ndim - 1))
    if rotation is not None:
        d = np.einsum("wv,w...->v...", rotation, d)  # body coordinates: R^T d
    a = np.asarray(semi_axes, dtype=np.float64).reshape((3,) + (1,) * (rel.ndim - 1))
    return np.sum((d / a) ** 2, axis=0)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit standard deviation (float64)."""
    f = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=tuple(sigma_vox), mode="reflect")
    sd = f.std()
    return (f - f.mean()) / sd if sd > 0 else f


def correlated_noise(
    rng: np.random.Generator, shape: Sequence[int], sd: float, sigma_vox: float = 0.6
) -> np.ndarray:
    """Slightly correlated Gaussian noise (like reconstructed CT noise) scaled to standard deviation ``sd``."""
    if sd == 0:
        return np.zeros(tuple(shape))
    n = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=sigma_vox, mode="reflect")
    return n * (sd / n.std())


def check_shape(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or any(s < 2 for s in shape):
        raise ValueError(f"shape must be {ndim} sizes >= 2, got {shape}")
    return shape


def grid_affine(
    shape: tuple[int, ...],
    spacing: Sequence[float] | None,
    affine: np.ndarray | None,
    default: Sequence[float],
) -> np.ndarray:
    """The affine from ``affine`` or an axial RAS one from ``spacing``; both given must agree on the voxel size."""
    if affine is None:
        return make_affine(shape, default if spacing is None else spacing)
    affine = np.asarray(affine, dtype=np.float64)
    if (
        affine.shape != (4, 4)
        or not np.all(np.isfinite(affine))
        or abs(np.linalg.det(affine[:3, :3])) < 1e-12
    ):
        raise ValueError(f"affine must be a finite, invertible 4x4 matrix, got {affine.tolist()}")
    if spacing is not None:
        from_affine = np.linalg.norm(affine[:3, :3], axis=0)
        if not np.allclose(from_affine, spacing, rtol=1e-6, atol=1e-6):
            raise ValueError(
                f"spacing {tuple(spacing)} disagrees with the affine's voxel size {tuple(from_affine)}"
            )
    return affine


class PhantomGrid(NamedTuple):
    """Where a 3D phantom is sampled: the grid's affine and its world geometry (see :func:`phantom_grid`)."""

    affine: np.ndarray  # 4x4 voxel index -> RAS world mm
    spacing: np.ndarray  # voxel size in mm along i, j, k (the affine's column norms)
    half: np.ndarray  # half-extents (mm) of the field of view along the world x, y, z axes
    rel: np.ndarray  # (3, *shape) world mm of every voxel centre, relative to the field of view's centre


def phantom_grid(
    shape: tuple[int, ...],
    spacing: Sequence[float] | None,
    affine: np.ndarray | None,
    default: Sequence[float],
) -> PhantomGrid:
    """The grid of a 3D phantom of checked ``shape``: affine as in :func:`grid_affine`, then its frame."""
    affine = grid_affine(shape, spacing, affine, default=default)
    center, half = fov_frame(shape, affine)
    rel = world_coordinates(shape, affine) - center.reshape(3, 1, 1, 1)
    return PhantomGrid(affine=affine, spacing=np.linalg.norm(affine[:3, :3], axis=0), half=half, rel=rel)


def make_ct_phantom(
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    n_organs: int = 4,
    noise_hu: float = 20.0,
    affine: np.ndarray | None = None,
) -> Phantom:
    """A CT-like abdomen: air, a body with a fat layer, organs as rotated ellipsoids, smoothing and noise.

    Args:
        shape: grid shape (i, j, k).
        spacing: voxel size in mm; default (1.5, 1.5, 2.5) when ``affine`` is not given (axial RAS grid centred
            on the world origin). With ``affine`` it may be omitted or must match the affine's column norms.
        seed: integer seed of ``numpy.random.default_rng``.
        n_organs: number of labelled organs, 1..6, in the order of :data:`ORGANS` (liver, spleen, right kidney,
            left kidney, vertebra, aorta).
        noise_hu: standard deviation of the (slightly correlated) Gaussian noise, HU.
        affine: optional 4x4 voxel -> RAS mm matrix to sample the phantom on any grid (see :func:`make_affine`).
    """
    shape = check_shape(shape, 3)
    if (
        isinstance(n_organs, bool)
        or not isinstance(n_organs, (int, np.integer))
        or not 1 <= n_organs <= len(ORGANS)
    ):
        raise ValueError(f"n_organs must be an integer in 1..{len(ORGANS)}, got {n_organs!r}")
    if not np.isfinite(noise_hu) or noise_hu < 0:
        raise ValueError(f"noise_hu must be a finite number >= 0, got {noise_hu}")
    affine, vox, half, rel = phantom_grid(shape, spacing, affine, default=(1.5, 1.5, 2.5))
    rng = np.random.default_rng(seed)

    # body: an elliptic cylinder-like ellipsoid, wider left-right than front-back, with a subcutaneous fat layer
    body_axes = np.array([0.88 * half[0], 0.72 * half[1], 4.0 * half[2]]) * rng.uniform(0.94, 1.0, 3)
    fat = rng.uniform(0.08, 0.14) * min(body_axes[0], body_axes[1])
    inner_axes = body_axes - np.array([fat, fat, 0.0])
    body = ellipsoid_mask(rel, np.zeros(3), body_axes)
    inner = ellipsoid_mask(rel, np.zeros(3), inner_axes)

    contrast = bool(rng.random() < 0.5)
    label = np.zeros(shape, dtype=np.uint8)
    hu: dict[int, float] = {}
    scale = np.array([inner_axes[0], inner_axes[1], half[2]])
    for lab, organ in enumerate(ORGANS[:n_organs], start=1):
        c = (np.asarray(organ.center) + rng.uniform(-0.05, 0.05, 3)) * scale
        a = np.asarray(organ.semi_axes) * rng.uniform(0.85, 1.15, 3) * scale
        rot = rotation_matrix(rng.uniform([-10, -10, -20], [10, 10, 20]))
        base = organ.contrast_hu if (contrast and organ.contrast_hu is not None) else organ.hu
        hu[lab] = float(base + rng.uniform(-organ.hu_jitter, organ.hu_jitter))
        label[ellipsoid_mask(rel, c, a, rot) & inner & (label == 0)] = lab

    sigma_texture = 8.0 / vox  # 8 mm texture of the soft tissue
    image = np.full(shape, AIR_HU)
    image[body] = FAT_HU
    image[inner] = SOFT_TISSUE_HU + 8.0 * smooth_field(rng, shape, sigma_texture)[inner]
    for lab, value in hu.items():
        image[label == lab] = value
    image = ndimage.gaussian_filter(image, sigma=0.5 * vox.min() / vox, mode="nearest")  # partial volume
    image += correlated_noise(rng, shape, noise_hu)

    for lab in hu:
        if not np.any(label == lab):
            raise ValueError(
                f"organ {ORGANS[lab - 1].name!r} (label {lab}) has no voxel on this grid (shape {shape}, "
                f"voxel size {tuple(np.round(vox, 3))} mm); use a larger shape or finer spacing"
            )
    names = {lab: ORGANS[lab - 1].name for lab in hu}
    logger.debug("CT phantom seed=%s shape=%s contrast=%s labels=%s", seed, shape, contrast, names)
    return Phantom(image=image.astype(np.float32), label=label, affine=affine, label_names=names, hu=hu)
