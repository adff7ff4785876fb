"""Objects of a label map: per label, the number of connected components, the largest one, field-of-view contact.

What the review page of a batch run (:mod:`medseg.batch.review`) needs from each case, computed once when the
case is written (so the page can be rebuilt from the reports alone)::

    {name: {"value": 1, "components": 3, "largest_voxels": 5120, "touches_border": true}}

* ``components``: connected components of the label's voxels with full connectivity (26 neighbours in 3D, 8 in
  2D), the default of the postprocessing (:mod:`medseg.inference.components`); 0 for an empty label.
* ``largest_voxels``: voxels of the largest component (0 when empty).
* ``touches_border``: some voxel of the label lies on a face of the image grid (first or last index of a spatial
  axis): the object may be cut by the field of view.

Names follow :func:`medseg.outputs.report.label_volumes` (two values with one name become ``name_value``).

Cost: one ``find_objects`` pass over the map, then connected components inside each label's bounding box only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.plain import as_numpy

logger = logging.getLogger(__name__)

__all__ = ["LabelObjects", "label_objects"]


@dataclass
class LabelObjects:
    """Per-label statistics (JSON-ready) and the mask of the largest object over all labels (None when empty)."""

    stats: dict[str, dict[str, Any]]
    largest: np.ndarray | None


def _names(labels: Mapping[int, str]) -> dict[int, str]:
    declared = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    names = list(declared.values())
    return {v: (f"{n}_{v}" if names.count(n) > 1 else n) for v, n in sorted(declared.items())}


def label_objects(label: Any, labels: Mapping[int, str]) -> LabelObjects:
    """Connected components, largest component and border contact of every declared non-zero label.

    Args:
        label: the spatial label map ``(*spatial)`` (no channel axis), integer values. Axes of size 1 (a 2D
            image kept as 3D) do not count as borders.
        labels: label value -> name (the model's labels; value 0 is background).

    Raises:
        ValueError: a label map that is not 2D or 3D, or holds negative values.
    """
    from scipy import ndimage

    arr = as_numpy(label)
    if arr.ndim not in (2, 3):
        raise ValueError(f"label map must be 2D or 3D without a channel axis, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.view(np.uint8)
    elif arr.dtype.kind not in "iu":
        arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise ValueError("label map holds negative values")
    structure = ndimage.generate_binary_structure(arr.ndim, arr.ndim)
    names = _names(labels)
    boxes = ndimage.find_objects(arr) if arr.size else []
    stats: dict[str, dict[str, Any]] = {}
    best: tuple[int, int, tuple[slice, ...], np.ndarray] | None = None  # voxels, value, box, component mask
    for value, name in names.items():
        box = boxes[value - 1] if value - 1 < len(boxes) else None
        entry: dict[str, Any] = {
            "value": value,
            "components": 0,
            "largest_voxels": 0,
            "touches_border": False,
        }
        if box is not None:
            mask = arr[box] == value
            comps, n = ndimage.label(mask, structure=structure)
            sizes = np.bincount(comps.reshape(-1))[1:]
            biggest = int(np.argmax(sizes))
            entry["components"] = int(n)
            entry["largest_voxels"] = int(sizes[biggest])
            entry["touches_border"] = any(
                size > 1 and (s.start == 0 or s.stop == size) for s, size in zip(box, arr.shape, strict=True)
            )
            if best is None or entry["largest_voxels"] > best[0]:
                best = (entry["largest_voxels"], value, box, comps == biggest + 1)
        stats[name] = entry
    largest = None
    if best is not None:
        largest = np.zeros(arr.shape, dtype=bool)
        largest[best[2]] = best[3]
    return LabelObjects(stats, largest)
