"""Segment one study file end to end: read, :meth:`Predictor.predict`, write the label NIfTI on the study's grid.

The study is read in its stored dtype (int16 for most CT): the predictor normalizes and resamples only the voxels
its windows need, a chunk at a time, so a float32 copy of the whole study is never made. The label is written
atomically (temp file, fsync, rename) with the study's exact affine and shape.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.data import MetaTensor

from medseg.data.io import load_volume, save_label

logger = logging.getLogger(__name__)

__all__ = ["Segmentation", "segment_file"]


@dataclass
class Segmentation:
    """The result of :func:`segment_file`: the label map, where it was written, and seconds per step."""

    label: MetaTensor
    output: Path
    seconds: dict[str, float] = field(default_factory=dict)


def segment_file(
    predictor: Any, source: str | os.PathLike, output: str | os.PathLike, *, series_rule: Any = None
) -> Segmentation:
    """Segment a single-channel study (NIfTI, NRRD, MetaImage or DICOM folder) into a label NIfTI.

    Args:
        predictor: a :class:`~medseg.inference.Predictor` of a one-channel model.
        source: the study file or DICOM folder.
        output: the label file (``.nii`` or ``.nii.gz``).
        series_rule: chooses the DICOM series when a folder holds several.

    Raises:
        ValueError: the model has several channels (use :meth:`Predictor.predict_case`).
        medseg.errors.InputError: unreadable or inconsistent input (with its reason code).
    """
    names = predictor.spec.contract.channel_names
    if len(names) != 1:
        raise ValueError(
            f"segment_file reads one channel but the model expects {len(names)} {names}; use Predictor.predict_case with one source per channel"
        )
    start = time.perf_counter()
    image = load_volume(source, series_rule=series_rule, spatial_dims=predictor.file_dims, dtype=None)
    read = time.perf_counter()
    label = predictor.predict(image)
    predicted = time.perf_counter()
    path = save_label(label, output, reference=image)
    end = time.perf_counter()
    seconds = {"read": read - start, "predict": predicted - read, "write": end - predicted}
    logger.debug("segmented %s: %s", Path(source).name, {k: round(v, 3) for k, v in seconds.items()})
    return Segmentation(label, path, seconds)
