"""Writing synthetic datasets to disk: multimodal NIfTI cases for training, DICOM studies for conversion/segmentation.

Layout of a NIfTI dataset (the folder layout medseg's datalists read)::

    root/
      case_000/CBF.nii.gz  MTT.nii.gz  CBV.nii.gz  label.nii.gz
      case_001/...
      dataset.json          # {"channels": [...], "labels": {...}, "cases": [{"case_id", "channels", "label"}]}

A DICOM archive is a tree ``root/<study>/<series>/*.dcm`` with dummy patient tags.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from medseg.atomic import atomic_write_text
from medseg.data.io import save_image, save_label
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series
from medseg.synthetic.perfusion import make_perfusion_case
from medseg.synthetic.phantoms import make_ct_phantom

logger = logging.getLogger(__name__)


def _write_case(root: Path, index: int, images: Mapping[str, np.ndarray], label: np.ndarray, affine: Any) -> dict:
    """``root/case_NNN/<CHANNEL>.nii.gz`` + ``label.nii.gz``; the case's datalist entry (paths relative to root)."""
    folder = root / f"case_{index:03d}"
    paths = {
        name: str(save_image(arr, folder / f"{name}.nii.gz", affine=affine).relative_to(root))
        for name, arr in images.items()
    }
    written = save_label(label, folder / "label.nii.gz", affine=affine)
    return {"case_id": folder.name, "channels": paths, "label": str(written.relative_to(root))}


def _write_datalist(
    root: Path, channels: Sequence[str], label_names: Mapping[int, str], cases: list[dict], what: str
) -> Path:
    meta = {"channels": list(channels), "labels": {str(k): v for k, v in label_names.items()}, "cases": cases}
    out = root / "dataset.json"
    atomic_write_text(out, json.dumps(meta, indent=2))
    logger.info("wrote %d %s cases to %s", len(cases), what, root)
    return out


def write_perfusion_dataset(
    root: str | os.PathLike,
    n_cases: int,
    *,
    shape: Sequence[int] = (64, 64, 24),
    seed: int = 0,
    noise_scale: float = 1.0,
) -> Path:
    """Write ``n_cases`` CBF/MTT/CBV perfusion phantoms with lesion labels; return the ``dataset.json`` path."""
    root = Path(root)
    cases = []
    channels: list[str] = []
    label_names: dict[int, str] = {}
    for i in range(n_cases):
        case = make_perfusion_case(shape=shape, seed=seed + i, noise_scale=noise_scale)
        channels = list(case.channels)
        label_names = {0: "background", **{int(k): v for k, v in case.label_names.items() if int(k) != 0}}
        cases.append(_write_case(root, i, case.channels, case.label, case.affine))
    return _write_datalist(root, channels, label_names, cases, "perfusion")


def write_ct_dataset(
    root: str | os.PathLike,
    n_cases: int,
    *,
    shape: Sequence[int] = (48, 48, 32),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    seed: int = 0,
    n_organs: int = 4,
) -> Path:
    """Write ``n_cases`` CT phantoms (``CT.nii.gz`` in HU + organ ``label.nii.gz``); return the ``dataset.json`` path."""
    root = Path(root)
    cases = []
    label_names: dict[int, str] = {}
    for i in range(n_cases):
        ph = make_ct_phantom(shape=shape, spacing=spacing, seed=seed + i, n_organs=n_organs)
        label_names = {0: "background", **{int(k): v for k, v in ph.label_names.items()}}
        cases.append(_write_case(root, i, {"CT": np.round(ph.image)}, ph.label, ph.affine))
    return _write_datalist(root, ["CT"], label_names, cases, "CT")


@dataclass(frozen=True)
class SyntheticStudy:
    """One written DICOM study: where it is and the phantom's truth in the series' own grid."""

    folder: Path
    series_folder: Path
    orientation: str
    label: np.ndarray
    affine: np.ndarray


def write_ct_study(
    folder: str | os.PathLike,
    *,
    orientation: str = "axial",
    shape: Sequence[int] = (64, 64, 40),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    seed: int = 0,
    reverse_order: bool = False,
    patient_name: str = "ANON^SYNTHETIC",
    patient_id: str = "SYNTH0001",
    n_organs: int = 4,
) -> SyntheticStudy:
    """Write one CT phantom as a DICOM series in ``orientation`` (axial/coronal/sagittal/oblique)."""
    folder = Path(folder)
    affine = affine_for(orientation, spacing=spacing, shape=shape)  # type: ignore[arg-type]
    ph = make_ct_phantom(shape=shape, seed=seed, affine=affine, n_organs=n_organs)
    series_folder = folder / "CT"
    # UIDs unique per study folder (and reproducible): two studies written with one seed stay two series
    key = (folder.name, orientation, seed, reverse_order, tuple(shape), tuple(spacing))
    write_dicom_series(
        np.round(ph.image),
        affine,
        series_folder,
        modality="CT",
        series_description=f"synthetic CT {orientation}",
        patient_name=patient_name,
        patient_id=patient_id,
        reverse_order=reverse_order,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        seed=seed,
        study_uid=generate_uid(entropy_srcs=["study", *map(str, key)]),
        series_uid=generate_uid(entropy_srcs=["series", *map(str, key)]),
        frame_of_reference_uid=generate_uid(entropy_srcs=["for", *map(str, key)]),
    )
    return SyntheticStudy(folder, series_folder, orientation, ph.label, affine)


def write_perfusion_archive(
    root: str | os.PathLike,
    n_studies: int,
    *,
    shape: Sequence[int] = (64, 64, 24),
    seed: int = 1000,
    truth_dir: str | os.PathLike | None = None,
    patient_prefix: str = "SYNTH",
) -> list[Path]:
    """Write ``n_studies`` perfusion studies as DICOM: per study one series per map (CBF, MTT, CBV).

    The maps are stored as derived CT images with a RescaleSlope of 0.01 (two decimals); their series
    descriptions are ``"<MAP> map"`` so that series rules (``description: "^CBF"``) pick the channels. The truth
    labels are written to ``truth_dir/<study>.nii.gz`` on the series grid when ``truth_dir`` is given.
    """
    root = Path(root)
    folders = []
    for i in range(n_studies):
        case = make_perfusion_case(shape=shape, seed=seed + i)
        folder = root / f"study_{i:03d}"
        key = (folder.name, seed + i, tuple(shape))
        shared = {
            "study_uid": generate_uid(entropy_srcs=["pstudy", *map(str, key)]),
            "frame_of_reference_uid": generate_uid(entropy_srcs=["pfor", *map(str, key)]),
            "patient_name": f"{patient_prefix}^{i:03d}",
            "patient_id": f"{patient_prefix}{i:05d}",
        }
        for n, (name, arr) in enumerate(case.channels.items(), start=1):
            write_dicom_series(
                arr, case.affine, folder / name, modality="CT", series_description=f"{name} map",
                series_uid=generate_uid(entropy_srcs=["pseries", name, *map(str, key)]), series_number=n,
                rescale_slope=0.01, rescale_intercept=0.0, image_type=("DERIVED", "SECONDARY", "PERFUSION"),
                seed=seed + i, **shared,
            )
        if truth_dir is not None:
            save_label(case.label, Path(truth_dir) / f"{folder.name}.nii.gz", affine=case.affine)
        folders.append(folder)
    logger.info("wrote %d perfusion studies as DICOM", n_studies)
    return folders
