"""DICOM SEG output (highdicom): a label map on a source series' grid, written as a BINARY Segmentation.

This module builds and writes the SEG; the source series is read by :mod:`medseg.outputs.dicom_seg_source` and its
geometry checked against the label by :mod:`medseg.outputs.dicom_seg_geometry`.

Layout: the label map is indexed ``(i, j, k)`` = (column, row, slice) on the source series' grid, with slices
in medseg's reading order (ascending along the normal ``F_r x F_c``, see :mod:`medseg.data.dicom.geometry`),
exactly as :func:`medseg.data.io.load_volume` returns a DICOM series. medseg reads ``pixel_array[j, i]`` of
slice ``k`` into ``volume[i, j, k]``, so the SEG frame for source slice ``k`` is ``label[:, :, k].T`` (rows =
j, columns = i). Each frame references its source slice's SOPInstanceUID; frames with no voxel of a segment
are omitted.

Multi-frame source (one Enhanced / Legacy Converted Enhanced image): each SEG frame references the source image's
SOPInstanceUID with the ReferencedFrameNumber of the frame its label slice lies on.

Segments: one per non-zero label value *present* in the label map, numbered 1..n in ascending label order.
``SegmentLabel`` is the label's name, ``SegmentDescription`` says ``"medseg label <value>"`` so the value can
be recovered, the recommended display colour is the QC overlay colour. The segmented property category and
type are generic SNOMED CT codes (category 85756007 "Tissue", type 91772007 "Organ") unless ``property_codes``
gives better ones per label. The algorithm is identified by an AlgorithmIdentificationSequence (family
"Artificial Intelligence", name and version from :class:`SegMetadata`).

No foreground: a SEG needs at least one segment, and a segment for a structure that was not found would claim
the opposite. :func:`write_dicom_seg` therefore raises :class:`NoSegmentsError` when the label map holds no
foreground voxel; :func:`medseg.outputs.write_case_outputs` then writes no SEG and says so in the report.

Reproducibility: UIDs are derived from the source series UID, the label content and names, the algorithm, the
series number and ``created``; with a fixed ``created`` the file is byte-identical between runs. Without one the
current time is used (and the UIDs differ from run to run).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medseg._version import __version__
from medseg.atomic import atomic_path
from medseg.errors import MedsegError
from medseg.outputs.dicom_seg_geometry import check_affine, source_grid
from medseg.outputs.dicom_seg_source import load_source_datasets

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CATEGORY",
    "DEFAULT_TYPE",
    "NoSegmentsError",
    "SegMetadata",
    "write_dicom_seg",
]

DEFAULT_CATEGORY = Code("85756007", "SCT", "Tissue")
DEFAULT_TYPE = Code("91772007", "SCT", "Organ")
_AI_FAMILY = Code("18TF", "DCM", "Artificial Intelligence")  # CID 7162
_MAX_LABEL_CHARS = 64  # SegmentLabel is LO


class NoSegmentsError(MedsegError, ValueError):
    """The label map has no foreground voxel, so there is no segment to write."""


@dataclass(frozen=True)
class SegMetadata:
    """Descriptive attributes of the written SEG.

    ``algorithm_*`` identify the model (AlgorithmIdentificationSequence), ``software_version`` the writing
    software (SoftwareVersions). ``created`` sets ContentDate/Time, SeriesDate/Time and
    InstanceCreationDate/Time; None means now.
    """

    algorithm_name: str = "medseg"
    algorithm_version: str = __version__
    software_version: str = __version__
    series_description: str = "medseg segmentation"
    series_number: int = 900
    manufacturer: str = "medseg"
    manufacturer_model_name: str = "medseg"
    device_serial_number: str = "0"
    content_label: str = "MEDSEG"
    created: _dt.datetime | None = None


# ------------------------------------------------------------------------------------------------ label


def _label_array(label: Any) -> np.ndarray:
    arr = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(
            f"label must be a (i, j, k) label map (optionally with a leading channel), got {arr.shape}"
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"label must hold integers, got dtype {arr.dtype}")
    return arr


def _segment_values(arr: np.ndarray, labels: Mapping[int, str]) -> list[int]:
    names = {int(k): str(v) for k, v in labels.items()}
    from medseg.outputs.report import label_counts

    present = sorted(label_counts(arr))
    if present and present[0] < 0:
        raise ValueError(f"label values must be >= 0, found {present[0]}")
    unknown = [v for v in present if v not in names]
    if unknown:
        raise ValueError(f"label map holds values {unknown} that are not in labels {sorted(names)}")
    return present


def _descriptions(
    values: list[int],
    labels: Mapping[int, str],
    meta: SegMetadata,
    property_codes: Mapping[int, tuple[Code, Code]] | None,
) -> list[Any]:
    import highdicom as hd

    from medseg.outputs.qc import label_color

    algorithm = hd.AlgorithmIdentificationSequence(
        name=meta.algorithm_name, family=_AI_FAMILY, version=meta.algorithm_version
    )
    out = []
    for number, value in enumerate(values, start=1):
        name = str(labels[value]) or f"label {value}"
        if len(name) > _MAX_LABEL_CHARS:
            logger.warning(
                "label name %r is longer than %d characters; truncated in the SEG", name, _MAX_LABEL_CHARS
            )
            name = name[:_MAX_LABEL_CHARS]
        category, kind = (property_codes or {}).get(value, (DEFAULT_CATEGORY, DEFAULT_TYPE))
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label_color(value)),
        )
        desc.SegmentDescription = f"medseg label {value}"
        out.append(desc)
    return out


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["medseg-seg", *(str(p) for p in parts)]))


def _make_reproducible(seg: Dataset, created: _dt.datetime, dimension_uid: str) -> None:
    """Replace what highdicom draws from the clock or at random (creation times, DimensionOrganizationUID)."""
    seg.InstanceCreationDate = created.strftime("%Y%m%d")
    seg.InstanceCreationTime = created.strftime("%H%M%S.%f")
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S.%f")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = dimension_uid


# ------------------------------------------------------------------------------------------------ writer


def write_dicom_seg(
    label: Any,
    source: str | os.PathLike | Sequence[str | os.PathLike | Dataset],
    labels: Mapping[int, str],
    out_path: str | os.PathLike,
    *,
    metadata: SegMetadata | None = None,
    affine: Any = None,
    property_codes: Mapping[int, tuple[Code, Code]] | None = None,
) -> Path:
    """Write a label map on a source series' grid as a DICOM SEG (BINARY), atomically.

    Args:
        label: integer label map ``(i, j, k)`` (or ``(1, i, j, k)``) on the source grid, in medseg's
            slice order.
        source: the source series folder (exactly one series), or its slice files / pydicom datasets in medseg's
            slice order (``SeriesInfo.files``), or one multi-frame image (its path or dataset, possibly repeated
            once per slice as in ``SeriesInfo.files``). With a multi-frame source, label slice ``k`` is matched to
            the frame lying at it (by ``affine``; without one, all frames sorted along the normal), and each SEG
            frame references that source frame (ReferencedFrameNumber).
        labels: label value -> name (0, background, is ignored); every non-zero value in ``label`` must
            be here.
        out_path: the ``.dcm`` file to write.
        metadata: descriptive attributes (algorithm name/version, series description/number, manufacturer,
            creation time).
        affine: the label's RAS affine; when given it must match the source geometry within 1e-3 mm.
        property_codes: per label value, ``(segmented property category, segmented property type)`` codes.

    Returns:
        ``out_path``.

    Raises:
        NoSegmentsError: the label map has no foreground voxel (no valid SEG can be written).
        ValueError: shape, label values, source order or geometry do not match.
    """
    import highdicom as hd

    meta = metadata or SegMetadata()
    arr = _label_array(label)
    datasets = load_source_datasets(source)
    grid = source_grid(datasets, affine, arr.shape[2])
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    if arr.shape != (columns, rows, len(grid.positions)):
        raise ValueError(
            f"label shape {arr.shape} does not match the source series (columns, rows, slices) = "
            f"{(columns, rows, len(grid.positions))}"
        )
    if affine is not None:
        check_affine(affine, grid)
    values = _segment_values(arr, labels)
    if not values:
        raise NoSegmentsError("the label map has no foreground voxel: a DICOM SEG needs at least one segment")

    # label-map style input: segment numbers 1..n for the present values, frame k = label[:, :, k].T
    lut = np.zeros(int(arr.max()) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    lut[values] = np.arange(1, len(values) + 1)
    frames = np.ascontiguousarray(lut[arr.transpose(2, 1, 0)])
    if grid.frames is not None:  # one multi-frame source: SEG frame f <-> source frame f (empty ones omitted)
        by_source_frame = np.zeros((int(datasets[0].NumberOfFrames or 1), rows, columns), dtype=frames.dtype)
        by_source_frame[list(grid.frames)] = frames
        frames = by_source_frame

    created = meta.created or _dt.datetime.now()
    content_hash = hashlib.sha256(frames.reshape(-1)).hexdigest()
    series_uid = str(datasets[0].SeriesInstanceUID)
    key = (
        series_uid,
        content_hash,
        meta.algorithm_name,
        meta.algorithm_version,
        meta.series_number,
        created.isoformat(),
        tuple(str(labels[v]) for v in values),
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(values, labels, meta, property_codes),
        series_instance_uid=_uid("series", *key),
        series_number=meta.series_number,
        sop_instance_uid=_uid("instance", *key),
        instance_number=1,
        manufacturer=meta.manufacturer,
        manufacturer_model_name=meta.manufacturer_model_name,
        software_versions=meta.software_version,
        device_serial_number=meta.device_serial_number,
        content_label=meta.content_label,
        content_description=meta.series_description[:64],
        series_description=meta.series_description[:64],
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
        omit_empty_frames=True,
    )
    _make_reproducible(seg, created, _uid("dimension-organization", *key))
    out = Path(out_path)
    with atomic_path(out) as tmp:
        seg.save_as(tmp)
    logger.info(
        "wrote DICOM SEG %s: %d segment(s), %d frame(s) on %d source slices",
        out.name,
        len(values),
        int(seg.NumberOfFrames),
        len(grid.positions),
    )
    return out
