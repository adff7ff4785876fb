"""The dataset fingerprint: geometry, intensities and label sizes of every case, as ``medseg plan`` reads them.

One pass over the datalist, one case in memory at a time (loaded with the datalist's own
:func:`medseg.training.datalist.load_case`, so the channels, label and checks are those of training):

* per case: shape, spacing and orientation of the file, the shape and spacing in the config's orientation
  (``data.orientation``, the axes the plan speaks of), the bounding box of the intensity foreground for each
  candidate crop threshold, per-channel statistics of the voxels inside the label foreground (``label > 0``:
  0.5/50/99.5 percentiles, mean, standard deviation, min, max) and per label its voxel count and volume in mL;
* per channel, for the dataset: the same statistics from up to ``samples_per_case`` foreground voxels sampled per
  case with a seeded generator (nnU-Net's ``foreground_intensity_properties_per_channel``), and the 0.5/99.5
  percentiles of voxels sampled from whole images (the modality rule of :mod:`medseg.planning.rules` looks for air
  at -1000 HU there);
* anisotropy: the largest over smallest spacing, per case and as the median.

Nothing else is kept: the fingerprint holds no case ids, file names or pixel data (case ids may be patient names),
only case indices in datalist order.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_write_text

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
#: foreground (and whole-image) voxels sampled per case for the dataset-level intensity statistics
SAMPLES_PER_CASE = 10_000
#: the intensity threshold separating a CT body from air (HU); always measured as a candidate crop threshold
CT_BODY_THRESHOLD = -500.0


@dataclass(frozen=True)
class IntensityStats:
    """Intensities of a set of voxels: percentiles 0.5/50/99.5, mean, standard deviation, extremes, count."""

    p00_5: float
    p50: float
    p99_5: float
    mean: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStats | None:
        """Statistics of ``values`` (None when empty); computed in float64."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return None
        p = np.percentile(v, [0.5, 50.0, 99.5])
        return cls(float(p[0]), float(p[1]), float(p[2]), float(v.mean()), float(v.std()), float(v.min()),
                   float(v.max()), int(v.size))


@dataclass(frozen=True)
class LabelStats:
    """One label in one case: voxel count, volume in mL and connected objects (full connectivity; None: unmeasured,
    in fingerprints written before it was)."""

    voxels: int
    volume_ml: float
    components: int | None = None


@dataclass(frozen=True)
class CaseFingerprint:
    """One case. ``shape``/``spacing`` are in the config's orientation; ``file_*`` as stored in the file.

    ``crop_shapes`` maps a crop threshold to the shape (config orientation) of the bounding box of the voxels where
    any channel exceeds it (the whole image when none does): what ``train.crop_foreground`` would keep.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    file_orientation: str = "RAS"
    file_shape: tuple[int, ...] | None = None
    file_spacing: tuple[float, ...] | None = None
    crop_shapes: dict[float, tuple[int, ...]] = field(default_factory=dict)
    foreground: dict[str, IntensityStats | None] = field(default_factory=dict)
    labels: dict[int, LabelStats] = field(default_factory=dict)

    @property
    def anisotropy(self) -> float:
        return float(max(self.spacing) / min(self.spacing))

    def crop_fraction(self, threshold: float) -> float:
        """The fraction of the image's voxels that a foreground crop at ``threshold`` keeps (1.0 if unmeasured)."""
        box = self.crop_shapes.get(float(threshold))
        return 1.0 if box is None else float(np.prod(box, dtype=np.float64) / np.prod(self.shape, dtype=np.float64))


@dataclass(frozen=True)
class Fingerprint:
    """The dataset: its cases and the dataset-level statistics per channel.

    ``foreground[c]``: statistics of the sampled label-foreground voxels of channel ``c`` over all cases;
    ``image_range[c]``: the 0.5 and 99.5 percentiles of voxels sampled from whole images; ``modality_hints[c]``:
    the modality a DICOM header stated for the channel, if any.
    """

    channels: list[str]
    labels: dict[int, str]
    orientation: str
    cases: list[CaseFingerprint]
    foreground: dict[str, IntensityStats | None] = field(default_factory=dict)
    image_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    modality_hints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("a fingerprint needs at least one case")

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> np.ndarray:
        return np.array([c.shape for c in self.cases], dtype=np.float64)

    @property
    def median_spacing(self) -> list[float]:
        return [float(v) for v in np.median(self.spacings, axis=0)]

    @property
    def median_shape(self) -> list[float]:
        return [float(v) for v in np.median(self.shapes, axis=0)]

    @property
    def anisotropy(self) -> float:
        """Median over cases of the largest / smallest spacing."""
        return float(np.median([c.anisotropy for c in self.cases]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (see :func:`fingerprint_from_dict` for the way back)."""

        def stats(s: IntensityStats | None) -> dict[str, Any] | None:
            return None if s is None else asdict(s)

        return {
            "version": FINGERPRINT_VERSION,
            "channels": list(self.channels),
            "labels": {str(k): v for k, v in self.labels.items()},
            "orientation": self.orientation,
            "n_cases": len(self.cases),
            "median_spacing": self.median_spacing,
            "median_shape": self.median_shape,
            "anisotropy_median": self.anisotropy,
            "foreground_intensity": {c: stats(s) for c, s in self.foreground.items()},
            "image_intensity_range": {c: list(r) for c, r in self.image_range.items()},
            "modality_hints": dict(self.modality_hints),
            "cases": [
                {
                    "index": i,
                    "shape": list(c.shape),
                    "spacing": list(c.spacing),
                    "anisotropy": c.anisotropy,
                    "file_orientation": c.file_orientation,
                    "file_shape": None if c.file_shape is None else list(c.file_shape),
                    "file_spacing": None if c.file_spacing is None else list(c.file_spacing),
                    "crop_shapes": {str(t): list(s) for t, s in c.crop_shapes.items()},
                    "foreground_intensity": {n: stats(s) for n, s in c.foreground.items()},
                    "labels": {str(k): asdict(v) for k, v in c.labels.items()},
                }
                for i, c in enumerate(self.cases)
            ],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fingerprint as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def fingerprint_from_dict(data: Mapping[str, Any]) -> Fingerprint:
    """The :class:`Fingerprint` of :meth:`Fingerprint.to_dict` data (as read back from ``fingerprint.json``)."""

    def stats(d: Mapping[str, Any] | None) -> IntensityStats | None:
        return None if d is None else IntensityStats(**d)

    cases = [
        CaseFingerprint(
            shape=tuple(c["shape"]),
            spacing=tuple(c["spacing"]),
            file_orientation=c.get("file_orientation", "RAS"),
            file_shape=None if c.get("file_shape") is None else tuple(c["file_shape"]),
            file_spacing=None if c.get("file_spacing") is None else tuple(c["file_spacing"]),
            crop_shapes={float(t): tuple(s) for t, s in c.get("crop_shapes", {}).items()},
            foreground={n: stats(s) for n, s in c.get("foreground_intensity", {}).items()},
            labels={int(k): LabelStats(**v) for k, v in c.get("labels", {}).items()},
        )
        for c in data["cases"]
    ]
    return Fingerprint(
        channels=list(data["channels"]),
        labels={int(k): v for k, v in data["labels"].items()},
        orientation=data["orientation"],
        cases=cases,
        foreground={c: stats(s) for c, s in data.get("foreground_intensity", {}).items()},
        image_range={c: (float(r[0]), float(r[1])) for c, r in data.get("image_intensity_range", {}).items()},
        modality_hints=dict(data.get("modality_hints", {})),
    )


# ------------------------------------------------------------------------------------------------ measuring


def axis_permutation(file_codes: str, target_codes: str) -> list[int]:
    """``perm[j]`` = the file axis that becomes axis ``j`` of ``target_codes`` (e.g. 'LPS' -> 'RAS': [0, 1, 2])."""
    pairs = ("LR", "AP", "SI")

    def pair_of(code: str) -> str:
        return next(p for p in pairs if code.upper() in p)

    file_pairs = [pair_of(c) for c in file_codes]
    return [file_pairs.index(pair_of(c)) for c in target_codes]


def _bbox_shape(mask: np.ndarray) -> tuple[int, ...]:
    """Shape of the bounding box of ``mask`` (the whole array when it is empty)."""
    if not mask.any():
        return tuple(int(s) for s in mask.shape)
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(int(hits[-1] - hits[0] + 1))
    return tuple(out)


def _sample(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= n:
        return values
    return values[rng.choice(values.size, size=n, replace=False)]


@dataclass
class _Pool:
    """Sampled voxels of all cases, per channel."""

    foreground: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _components(mask: np.ndarray) -> int:
    """Connected objects of ``mask`` (full connectivity, as the postprocessing's largest-component step counts)."""
    from scipy import ndimage

    return int(ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))[1])


def measure_case(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    channels: Sequence[str],
    *,
    orientation: str,
    crop_thresholds: Sequence[float],
    rng: np.random.Generator,
    pool: _Pool,
    samples_per_case: int = SAMPLES_PER_CASE,
) -> CaseFingerprint:
    """The fingerprint of one case from its arrays (``image`` (C, *spatial), ``label`` (*spatial) or (1, ...))."""
    import nibabel as nib

    label = np.asarray(label).reshape(image.shape[1:])
    affine = np.asarray(affine, dtype=np.float64)
    file_spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    file_codes = "".join(nib.aff2axcodes(affine))
    perm = axis_permutation(file_codes, orientation)
    file_shape = tuple(int(s) for s in image.shape[1:])
    shape = tuple(file_shape[p] for p in perm)
    spacing = tuple(file_spacing[p] for p in perm)

    crops = {}
    for t in crop_thresholds:
        box = _bbox_shape((image > t).any(axis=0))
        crops[float(t)] = tuple(box[p] for p in perm)

    fg = label > 0
    stats: dict[str, IntensityStats | None] = {}
    for c, name in enumerate(channels):
        values = image[c][fg]
        stats[name] = IntensityStats.of(values)
        pool.foreground.setdefault(name, []).append(_sample(values, samples_per_case, rng).astype(np.float32))
        flat = image[c].reshape(-1)
        pool.image.setdefault(name, []).append(_sample(flat, samples_per_case, rng).astype(np.float32))

    voxel_ml = float(np.prod(file_spacing)) / 1000.0
    counts = np.bincount(label.reshape(-1).astype(np.int64))
    labels = {
        int(v): LabelStats(int(n), float(n) * voxel_ml, _components(label == v) if v else None)
        for v, n in enumerate(counts)
        if n > 0
    }
    return CaseFingerprint(
        shape=shape, spacing=spacing, file_orientation=file_codes, file_shape=file_shape,
        file_spacing=file_spacing, crop_shapes=crops, foreground=stats, labels=labels,
    )


def compute_fingerprint(
    entries: Sequence[Any],
    data: Any,
    *,
    crop_thresholds: Sequence[float] = (0.0, CT_BODY_THRESHOLD),
    seed: int = 0,
    samples_per_case: int = SAMPLES_PER_CASE,
) -> Fingerprint:
    """Fingerprint the cases ``entries`` (:class:`medseg.training.datalist.CaseEntry`) under the data contract
    ``data`` (a :class:`medseg.config.DataConfig`), one case in memory at a time.

    Raises the errors of :func:`medseg.training.datalist.load_case` (an unreadable file, a label on another grid or
    with undeclared values), naming the file.
    """
    from medseg.training.datalist import load_case

    if data.file_dims != 3:
        from medseg.errors import ConfigError

        raise ConfigError("medseg plan: only 3D volumes are supported (data.spatial_dims: 3, no slice_axis)")
    rng = np.random.default_rng(seed)
    pool = _Pool()
    cases = []
    hints: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if entry.label is None:
            from medseg.errors import ConfigError

            raise ConfigError(f"case {i} of the datalist has no label file; medseg plan needs labelled cases")
        image, label = load_case(data, entry.channels, entry.label)
        modality = image.meta.get("modality") if hasattr(image, "meta") else None
        if isinstance(modality, str) and modality and len(data.channel_names) == 1:
            hints.setdefault(data.channel_names[0], modality.upper())
        cases.append(
            measure_case(
                image.numpy(), label.numpy(), np.asarray(image.affine), data.channel_names,
                orientation=data.orientation.upper(), crop_thresholds=crop_thresholds, rng=rng, pool=pool,
                samples_per_case=samples_per_case,
            )
        )
        del image, label
        logger.info("fingerprint: case %d/%d", i + 1, len(entries))
    foreground = {
        name: IntensityStats.of(np.concatenate(pool.foreground[name])) for name in data.channel_names
    }
    image_range = {}
    for name in data.channel_names:
        p = np.percentile(np.concatenate(pool.image[name]).astype(np.float64), [0.5, 99.5])
        image_range[name] = (float(p[0]), float(p[1]))
    return Fingerprint(
        channels=list(data.channel_names),
        labels=dict(data.labels),
        orientation=data.orientation.upper(),
        cases=cases,
        foreground=foreground,
        image_range=image_range,
        modality_hints=hints,
    )
