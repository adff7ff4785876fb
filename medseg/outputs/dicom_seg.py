"""DICOM SEG output (highdicom): a label map on a source series' grid, written as a BINARY Segmentation.

Layout: the label map is indexed ``(i, j, k)`` = (column, row, slice) on the source series' grid, with slices
in medseg's reading order (ascending along the normal ``F_r x F_c``, see :mod:`medseg.data.dicom.geometry`),
exactly as :func:`medseg.data.io.load_volume` returns a DICOM series. medseg reads ``pixel_array[j, i]`` of
slice ``k`` into ``volume[i, j, k]``, so the SEG frame for source slice ``k`` is ``label[:, :, k].T`` (rows =
j, columns = i). Each frame references its source slice's SOPInstanceUID; frames with no voxel of a segment
are omitted.

Multi-frame source (one Enhanced / Legacy Converted Enhanced image): the frames are matched to the label's slices
by geometry (the frame lying at slice ``k`` of the label's affine; a frame may belong to another stack of the same
file and then stays unreferenced), the affine is checked on the matched frames exactly as for single-frame slices,
and each SEG frame references the source image's SOPInstanceUID with the ReferencedFrameNumber of its frame.

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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from medseg._version import __version__
from medseg.atomic import atomic_path
from medseg.data.dicom.multiframe import frame_infos, is_multiframe
from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CATEGORY",
    "DEFAULT_TYPE",
    "NoSegmentsError",
    "UnsupportedSegSourceError",
    "SegMetadata",
    "load_source_datasets",
    "source_affine",
    "write_dicom_seg",
]

DEFAULT_CATEGORY = Code("85756007", "SCT", "Tissue")
DEFAULT_TYPE = Code("91772007", "SCT", "Organ")
_AI_FAMILY = Code("18TF", "DCM", "Artificial Intelligence")  # CID 7162
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GEOMETRY_TOL = 1e-3  # mm (and mm per voxel for the affine's columns)
_ORIENTATION_TOL = 1e-4
_MAX_LABEL_CHARS = 64  # SegmentLabel is LO


class NoSegmentsError(MedsegError, ValueError):
    """The label map has no foreground voxel, so there is no segment to write."""


class UnsupportedSegSourceError(MedsegError, ValueError):
    """The source series is readable but a SEG cannot reference it (one stack or temporal position of a
    multi-frame file, or a series spread over several multi-frame files)."""


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


# ------------------------------------------------------------------------------------------------ sources


def _unique(items: Sequence[Any]) -> list[Any]:
    """Items once each, in order: a multi-frame series lists its file once per slice."""
    seen: dict[Any, Any] = {}
    for item in items:
        key = ("dataset", id(item)) if isinstance(item, Dataset) else ("path", str(Path(item).absolute()))
        seen.setdefault(key, item)
    return list(seen.values())


def load_source_datasets(source: str | os.PathLike | Sequence[str | os.PathLike | Dataset]) -> list[Dataset]:
    """Headers (no pixel data) of the source series in medseg's slice order, each file once.

    A folder must hold exactly one image series; it is scanned like :func:`medseg.data.dicom.read_dicom` does,
    so the order is the reader's. A list (paths or datasets) must already be in that order (checked by
    :func:`write_dicom_seg`). A multi-frame source is one file (a list repeating it, like ``SeriesInfo.files``
    of a multi-frame series, gives it once); its frames are matched to the label's slices by their geometry.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"{folder}: DICOM source must be a series folder or a list of slice files")
        from medseg.data.dicom import scan_dicom_tree

        scan = scan_dicom_tree(folder)
        if len(scan.series) != 1:
            raise ValueError(
                f"{folder}: DICOM source folder must hold exactly one image series, found {len(scan.series)}; "
                "pass the series' files instead"
            )
        series = scan.series[0]
        if series.problems:
            raise series.problems[0].to_error()
        items: Sequence[Any] = series.source_files
    else:
        items = list(source)
    if not items:
        raise ValueError("no DICOM source files given")
    return [
        _with_type2_attributes(item if isinstance(item, Dataset) else pydicom.dcmread(item, stop_before_pixels=True))
        for item in _unique(items)
    ]


# Type 2 attributes of the Patient and General Study modules that a SEG copies from its source: they must be
# present (maybe empty). Scanners and anonymizers often drop them; a SEG then gets them empty, as the standard
# allows, instead of the case failing on every run.
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip

# highdicom warns about single-component person names with the name in the text: patient data on stderr.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")


def _with_type2_attributes(ds: Dataset) -> Dataset:
    """``ds`` with every attribute of :data:`_TYPE2_COPIED` present (missing ones added empty, in memory)."""
    for keyword in _TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _float_list(ds: Dataset, keyword: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise ValueError(f"source slice {_name(ds)} has no valid {keyword}")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _name(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    return Path(filename).name if isinstance(filename, str) else f"#{ds.get('InstanceNumber', '?')}"


@dataclass(frozen=True)
class _Grid:
    """Source geometry in the label's slice order: IOP (6,), slice positions (n, 3), PixelSpacing (row, column),
    the slice step used when there is one slice, and (multi-frame source) the 0-based frame of each slice."""

    iop: np.ndarray
    positions: np.ndarray
    pixel_spacing: np.ndarray
    single_step: float
    frames: tuple[int, ...] | None = None


def _stack_grid(
    names: Sequence[str],
    iops: Sequence[Any],
    positions: Sequence[Any],
    pixel_spacing: Any,
    step: float,
    frames: tuple[int, ...] | None = None,
) -> _Grid:
    """The grid of slices (``names`` for messages) after checking they share one orientation and ascend along its
    normal; the same for single-frame slices and for the frames of a multi-frame source."""
    iop = np.asarray(iops[0], dtype=np.float64)
    for name, other in zip(names[1:], iops[1:], strict=True):
        if np.max(np.abs(np.asarray(other, dtype=np.float64) - iop)) > _ORIENTATION_TOL:
            raise ValueError(f"{name} has a different ImageOrientationPatient")
    stacked = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    _check_ascending(iop, stacked)
    return _Grid(iop, stacked, np.asarray(pixel_spacing, dtype=np.float64), float(step), frames)


def _single_frame_grid(datasets: Sequence[Dataset]) -> _Grid:
    """Check the slices form one single-frame stack in ascending order; return its grid."""
    first = datasets[0]
    for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        values = {str(ds.get(keyword, "")) for ds in datasets}
        if len(values) != 1 or values == {""}:
            raise ValueError(
                f"source slices must share one non-empty {keyword}, found {len(values)} value(s)"
            )
    if any(is_multiframe(ds) for ds in datasets):
        raise UnsupportedSegSourceError(
            "a DICOM SEG references either single-frame slices or exactly one multi-frame image; "
            f"got {len(datasets)} source files including multi-frame ones"
        )
    return _stack_grid(
        [f"source slice {_name(ds)}" for ds in datasets],
        [_float_list(ds, "ImageOrientationPatient", 6) for ds in datasets],
        [_float_list(ds, "ImagePositionPatient", 3) for ds in datasets],
        _float_list(first, "PixelSpacing", 2),
        float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0),
    )


def _check_ascending(iop: np.ndarray, positions: np.ndarray) -> None:
    along = positions @ np.cross(iop[:3], iop[3:])
    if len(along) > 1 and not np.all(np.diff(along) > 0):
        raise ValueError(
            "source slices are not in medseg's slice order (ascending along the normal of "
            "ImageOrientationPatient); pass the series folder, or SeriesInfo.files from medseg.data.dicom"
        )


def _frames_on_grid(infos: Sequence[Any], given: np.ndarray, n_slices: int) -> list[int]:
    """The frame lying at each of the label's ``n_slices`` slices (label affine ``given``, RAS).

    Selection only (frames within a quarter step along the normal, half a pixel in-plane, orientation within 1e-3);
    the exact check is :func:`_check_affine` on the selected frames, as for single-frame sources.
    """
    lps = _LPS_FROM_RAS @ given
    to_index = np.linalg.inv(lps)
    axes = lps[:3, :2] / np.linalg.norm(lps[:3, :2], axis=0)
    iop = np.concatenate([axes[:, 0], axes[:, 1]])
    at: dict[int, list[int]] = {}
    for number, info in enumerate(infos):
        if info.position is None or info.orientation is None:
            continue
        if np.max(np.abs(np.asarray(info.orientation) - iop)) > 10 * _ORIENTATION_TOL:
            continue
        i, j, k = (to_index @ np.array([*info.position, 1.0]))[:3]
        nearest = round(float(k))
        if abs(i) <= 0.5 and abs(j) <= 0.5 and abs(k - nearest) <= 0.25 and 0 <= nearest < n_slices:
            at.setdefault(nearest, []).append(number)
    missing = [k for k in range(n_slices) if k not in at]
    if missing:
        raise ValueError(
            f"label slice(s) {missing[:5]} lie on no frame of the multi-frame source; a DICOM SEG must be on the "
            "source grid (resample the label to the series first)"
        )
    doubled = {k: v for k, v in at.items() if len(v) > 1}
    if doubled:
        k, frames = next(iter(doubled.items()))
        raise UnsupportedSegSourceError(
            f"frames {[f + 1 for f in frames]} of the multi-frame source all lie at label slice {k} (several "
            "temporal positions or stacks); a DICOM SEG cannot say which one it segments"
        )
    return [at[k][0] for k in range(n_slices)]


def _multiframe_grid(ds: Dataset, affine: Any, n_slices: int) -> _Grid:
    """Geometry of the frames of one multi-frame source that the label's slices lie on (all frames, sorted along
    the normal, when no affine is given)."""
    infos = frame_infos(ds)  # MultiFrameError is a ValueError
    if affine is not None:
        frames = _frames_on_grid(infos, _affine_array(affine), n_slices)
    else:
        if any(f.position is None or f.orientation is None for f in infos):
            raise ValueError(f"multi-frame source {_name(ds)} has frames without position or orientation")
        normal = np.cross(infos[0].orientation[:3], infos[0].orientation[3:])
        frames = sorted(range(len(infos)), key=lambda f: float(np.asarray(infos[f].position) @ normal))
    first = infos[frames[0]]
    if first.pixel_spacing is None:
        raise ValueError(f"frame {frames[0] + 1} of the multi-frame source has no valid PixelSpacing")
    return _stack_grid(
        [f"frame {f + 1} of the multi-frame source" for f in frames],
        [infos[f].orientation for f in frames],
        [infos[f].position for f in frames],
        first.pixel_spacing,
        float(first.spacing_between_slices or first.slice_thickness or 1.0),
        tuple(frames),
    )


def _source_grid(datasets: Sequence[Dataset], affine: Any = None, n_slices: int | None = None) -> _Grid:
    if len(datasets) == 1 and is_multiframe(datasets[0]):
        ds = datasets[0]
        for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(keyword, "") or ""):
                raise ValueError(f"the multi-frame source has no {keyword}")
        return _multiframe_grid(ds, affine, n_slices if n_slices is not None else 0)
    return _single_frame_grid(datasets)


def _grid_affine(grid: _Grid) -> np.ndarray:
    row_spacing, col_spacing = grid.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = grid.iop[:3] * col_spacing
    lps[:3, 1] = grid.iop[3:] * row_spacing
    if len(grid.positions) > 1:
        lps[:3, 2] = (grid.positions[-1] - grid.positions[0]) / (len(grid.positions) - 1)
    else:
        lps[:3, 2] = np.cross(grid.iop[:3], grid.iop[3:]) * grid.single_step
    lps[:3, 3] = grid.positions[0]
    return _LPS_FROM_RAS @ lps


def source_affine(datasets: Sequence[Dataset]) -> np.ndarray:
    """RAS affine of the ordered source slices (or of all frames of one multi-frame source), computed as medseg's
    DICOM reader does."""
    return _grid_affine(_source_grid(datasets))


def _affine_array(affine: Any) -> np.ndarray:
    given = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if given.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {given.shape}")
    return given


def _check_affine(affine: Any, grid: _Grid) -> None:
    given = _affine_array(affine)
    expected = _grid_affine(grid)
    columns = [0, 1, 3] if len(grid.positions) == 1 else [0, 1, 2, 3]  # one slice: no measured step
    diff = float(np.max(np.abs(given[:3, columns] - expected[:3, columns])))
    if diff > _GEOMETRY_TOL:
        raise ValueError(
            f"the label's affine differs from the source series' geometry by {diff:.4g} mm; a DICOM SEG must be "
            "on the source grid (resample the label to the series first)"
        )


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
    grid = _source_grid(datasets, affine, arr.shape[2])
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    if arr.shape != (columns, rows, len(grid.positions)):
        raise ValueError(
            f"label shape {arr.shape} does not match the source series (columns, rows, slices) = "
            f"{(columns, rows, len(grid.positions))}"
        )
    if affine is not None:
        _check_affine(affine, grid)
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
