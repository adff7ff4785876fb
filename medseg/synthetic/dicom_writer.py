"""Write a synthetic volume as a DICOM series with exact geometry (for tests, demos and benchmarks).

The volume is indexed ``(i, j, k)`` = (column x, row y, slice z) and ``affine`` maps ``(i, j, k, 1)`` to RAS world
millimetres (NIfTI / nibabel / MONAI convention). DICOM is LPS, so the writer converts with
``LPS = diag(-1, -1, 1) @ RAS`` and stores, for slice ``k``:

* ``ImageOrientationPatient`` = (F_r, F_c), the unit vectors of the LPS affine's first two columns;
* ``PixelSpacing`` = [row spacing, column spacing] = [|column 1|, |column 0|];
* ``ImagePositionPatient`` = LPS translation + k * (LPS column 2);
* pixel ``pixel_array[j, i] = volume[i, j, k]``.

Stored values are ``round((volume - RescaleIntercept) / RescaleSlope)`` as int16 (BitsAllocated 16,
PixelRepresentation 1); a value that does not fit raises ``ValueError``. A reader applying the rescale gets the
volume back exactly when the volume holds integers and the slope is 1.

A DICOM reader sorts slices along the normal ``F_r x F_c``; if the affine's third column points against that normal
(a left-handed affine) a reader returns the volume flipped along ``k`` with the matching affine. ``affine_for``
only makes right-handed affines.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from medseg.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["SOP_CLASS_FOR_MODALITY", "affine_for", "write_dicom_series"]

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

SOP_CLASS_FOR_MODALITY: dict[str, str] = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}

# Direction cosines (LPS) of the row direction F_r and the column direction F_c for each named orientation.
_ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # normal +S
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # normal +P
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # normal -L (towards the right)
}
_ORTHO_TOL = 1e-6
# Modality-specific attributes (type 1 / 2 of the CT and MR image modules) so that dciodvfy accepts the files.
_MODALITY_TAGS: dict[str, dict[str, Any]] = {
    "CT": {"RescaleType": "HU", "KVP": ""},
    "MR": {
        "ScanningSequence": "RM",
        "SequenceVariant": "NONE",
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": "",
        "EchoTime": "",
        "EchoTrainLength": "",
    },
}


def _rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def affine_for(
    orientation: Literal["axial", "coronal", "sagittal", "oblique"],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    shape: Sequence[int] = (1, 1, 1),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Return a right-handed RAS affine for a synthetic DICOM series.

    Args:
        orientation: slice plane; ``"oblique"`` is the axial plane rotated 20 degrees about L-R then 30 degrees
            about S-I (a fixed, reproducible double obliquity).
        spacing: (column spacing, row spacing, slice step) in mm, i.e. along i, j, k.
        shape: (i, j, k) size of the volume, used to centre it.
        origin: RAS world position (mm) of the volume centre, voxel ``(shape - 1) / 2``.

    Returns:
        4x4 float64 affine mapping (i, j, k, 1) to RAS mm whose slice axis follows ``F_r x F_c``.
    """
    if orientation == "oblique":
        f_r, f_c = np.array(_ORIENTATIONS["axial"][0]), np.array(_ORIENTATIONS["axial"][1])
        rot = _rotation((0, 0, 1), 30.0) @ _rotation((1, 0, 0), 20.0)
        f_r, f_c = rot @ f_r, rot @ f_c
    elif orientation in _ORIENTATIONS:
        f_r, f_c = (np.array(v) for v in _ORIENTATIONS[orientation])
    else:
        raise ValueError(f"unknown orientation {orientation!r}; valid: axial, coronal, sagittal, oblique")
    spacing_arr = np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    if len(shape) != 3:
        raise ValueError(f"shape must have three entries (i, j, k), got {shape!r}")
    normal = np.cross(f_r, f_c)
    lps = np.eye(4)
    lps[:3, 0] = f_r * spacing_arr[0]
    lps[:3, 1] = f_c * spacing_arr[1]
    lps[:3, 2] = normal * spacing_arr[2]
    ras = LPS_FROM_RAS @ lps  # diag(-1,-1,1) is its own inverse
    centre_offset = ras[:3, :3] @ ((np.asarray(shape, dtype=float) - 1.0) / 2.0)
    ras[:3, 3] = np.asarray(origin, dtype=float) - centre_offset
    return ras


def _ds(value: float) -> str:
    """Format a float as a DICOM Decimal String (at most 16 characters) with as many digits as fit."""
    if value == 0.0 or abs(value) < 1e-12:
        return "0"
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value!r} as a DICOM decimal string")


def _geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray, np.ndarray]:
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    lps = LPS_FROM_RAS @ aff
    cols = lps[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 0):
        raise ValueError("affine has a zero-length column")
    unit = cols / norms
    gram = unit.T @ unit
    if np.max(np.abs(gram - np.eye(3))) > _ORTHO_TOL:
        raise ValueError(
            "affine columns must be orthogonal (DICOM slices need an orthogonal grid); "
            f"cosines between columns: {gram[0, 1]:.3g}, {gram[0, 2]:.3g}, {gram[1, 2]:.3g}"
        )
    f_r, f_c = unit[:, 0], unit[:, 1]
    return f_r, f_c, float(norms[1]), float(norms[0]), lps[:3, 2], lps[:3, 3]


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["medseg-synthetic", *(str(p) for p in parts)]))


def _file_names(n: int, instance_numbers: list[int], mode: str, seed: int) -> list[str]:
    if mode == "instance":
        return [f"IM{num:05d}.dcm" for num in instance_numbers]
    if mode == "random":
        rng = np.random.default_rng(seed)
        names: set[str] = set()
        out = []
        while len(out) < n:
            name = f"{int(rng.integers(0, 2**63)):016x}"
            if name not in names:
                names.add(name)
                out.append(name)
        return out
    raise ValueError(f"file_names must be 'instance' or 'random', got {mode!r}")


def _base_dataset(
    modality: str,
    series_uid: str,
    study_uid: str,
    for_uid: str,
    patient_name: str,
    patient_id: str,
    series_description: str,
    series_number: int,
    image_type: Sequence[str],
) -> dict[str, Any]:
    today = _dt.date(2024, 1, 1).strftime("%Y%m%d")  # fixed date: files are reproducible
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": list(image_type),
        "SOPClassUID": SOP_CLASS_FOR_MODALITY[modality],
        "StudyDate": today,
        "SeriesDate": today,
        "ContentDate": today,
        "StudyTime": "120000",
        "SeriesTime": "120000",
        "ContentTime": "120000",
        "AccessionNumber": "",
        "Modality": modality,
        "Manufacturer": "medseg synthetic",
        "ReferringPhysicianName": "",
        "StudyDescription": "synthetic study",
        "SeriesDescription": series_description,
        "PatientName": patient_name,
        "PatientID": patient_id,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "StudyID": "1",
        "SeriesNumber": int(series_number),
        "AcquisitionNumber": 1,
        "FrameOfReferenceUID": for_uid,
        "Laterality": "",
        "PatientPosition": "HFS",
        "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1,
    }


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    modality: str = "CT",
    series_description: str = "synthetic",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_name: str = "ANON^SYNTHETIC",
    patient_id: str = "SYNTH0001",
    rescale_slope: float = 1.0,
    rescale_intercept: float | None = None,
    reverse_order: bool = False,
    file_names: Literal["instance", "random"] = "instance",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_number: int = 1,
    seed: int = 0,
    extra_tags: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``volume`` as one uncompressed (Explicit VR Little Endian) single-frame DICOM file per slice.

    Args:
        volume: 3D array indexed (i, j, k); values in the modality's units (e.g. HU for CT).
        affine: 4x4 RAS affine with orthogonal columns (see the module docstring for the DICOM mapping).
        out_dir: folder to write into (created if missing).
        modality: one of ``SOP_CLASS_FOR_MODALITY`` (CT, MR, PT, OT).
        series_uid, study_uid, frame_of_reference_uid: UIDs; when ``None`` they are derived reproducibly from
            ``seed`` (study and frame of reference from the seed only, so series written with the same seed share
            them; the series UID also from the modality, number, description, shape and affine).
        rescale_slope, rescale_intercept: stored = round((volume - intercept) / slope) as int16.
            ``rescale_intercept=None`` means -1024 for CT and 0 otherwise.
        reverse_order: number instances (and name files) against the spatial order.
        file_names: ``"instance"`` (``IM00001.dcm`` ...) or ``"random"`` (seeded hex names without extension).
        image_type: ImageType values.
        series_number: SeriesNumber.
        seed: seed for UIDs and random file names.
        extra_tags: pydicom keyword -> value set on every slice (applied last, so it can override anything).

    Returns:
        The written paths in slice (k) order.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume must be a non-empty 3D array (i, j, k), got shape {vol.shape}")
    modality = modality.upper()
    if modality not in SOP_CLASS_FOR_MODALITY:
        raise ValueError(f"unsupported modality {modality!r}; valid: {', '.join(SOP_CLASS_FOR_MODALITY)}")
    if rescale_intercept is None:
        rescale_intercept = -1024.0 if modality == "CT" else 0.0
    if not (math.isfinite(rescale_slope) and rescale_slope != 0):
        raise ValueError(f"rescale_slope must be finite and non-zero, got {rescale_slope!r}")
    if not np.all(np.isfinite(vol)):
        raise ValueError("volume contains NaN or infinite values")
    stored = np.round((vol.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(
            f"volume range [{float(vol.min())}, {float(vol.max())}] does not fit int16 with slope "
            f"{rescale_slope} and intercept {rescale_intercept}"
        )
    stored = stored.astype(np.int16)
    f_r, f_c, row_spacing, col_spacing, step, origin = _geometry(affine)

    n = vol.shape[2]
    series_uid = series_uid or _uid(
        seed, "series", modality, series_number, series_description, vol.shape, np.round(affine, 6).tolist()
    )
    study_uid = study_uid or _uid(seed, "study")
    for_uid = frame_of_reference_uid or _uid(seed, "frame-of-reference")
    instance_numbers = [n - k if reverse_order else k + 1 for k in range(n)]
    names = _file_names(n, instance_numbers, file_names, seed)
    base = _base_dataset(
        modality,
        series_uid,
        study_uid,
        for_uid,
        patient_name,
        patient_id,
        series_description,
        series_number,
        image_type,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    iop = [_ds(float(v)) for v in (*f_r, *f_c)]
    pixel_spacing = [_ds(row_spacing), _ds(col_spacing)]
    thickness = _ds(float(np.linalg.norm(step)))
    paths: list[Path] = []
    for k in range(n):
        sop_uid = _uid(series_uid, "instance", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS_FOR_MODALITY[modality]
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(names[k], {}, file_meta=meta, preamble=b"\0" * 128)
        for keyword, value in base.items():
            setattr(ds, keyword, value)
        position = origin + k * step
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = [_ds(float(v)) for v in position]
        ds.ImageOrientationPatient = iop
        ds.SliceLocation = _ds(float(position @ np.cross(f_r, f_c)))
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[0])
        if modality != "MR" or (rescale_slope, rescale_intercept) != (1.0, 0.0):
            ds.RescaleIntercept = _ds(float(rescale_intercept))
            ds.RescaleSlope = _ds(float(rescale_slope))
        for keyword, value in _MODALITY_TAGS.get(modality, {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        paths.append(atomic_write_bytes(out / names[k], buffer.getvalue()))
    logger.debug("wrote %d %s slices to %s", n, modality, out)
    return paths
