"""The end-to-end demo (`make demo`, `medseg demo`): synthetic studies in, a registered model, segmented archive out.

Stages, each a library call:

1. data: CT studies as DICOM series in every orientation, a multimodal CBF/MTT/CBV training set as NIfTI, and a
   small archive of perfusion studies as DICOM (one series per map) with their truth labels;
2. geometry: ``medseg info`` / ``convert`` of the CT series, checked voxel for voxel against the reader;
3. training: ``configs/demo.yaml`` (3D UNet++, Dice + boundary loss) tracked in MLflow (embedded SQLite unless a
   tracking URI is given) and registered with the alias ``champion``;
4. segmentation: the registered model, loaded by its ``models:/NAME@champion`` URI, segments the archive
   (NIfTI + DICOM SEG + report + QC per study, resumable ledger); the labels are scored against the truth.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@dataclass
class DemoResult:
    """Where everything went and how well it did."""

    out: Path
    tracking_uri: str
    model_uri: str | None = None
    best_val_dice: float | None = None
    train_seconds: float = 0.0
    archive_dice: dict[str, float] = field(default_factory=dict)
    batch_table: str = ""
    seconds: float = 0.0


def make_data(out: Path, seed: int, n_train: int, n_archive: int) -> dict[str, Path]:
    from medseg.synthetic.dataset import write_ct_study, write_perfusion_archive, write_perfusion_dataset

    ct = out / "ct_archive"
    for i, orientation in enumerate(ORIENTATIONS):
        write_ct_study(ct / f"study_{i:02d}", orientation=orientation, shape=(48, 48, 32), seed=seed + i)
    write_ct_study(ct / "study_reversed", orientation="axial", shape=(48, 48, 32), seed=seed, reverse_order=True)
    dataset = write_perfusion_dataset(out / "perfusion_train", n_train, seed=seed)
    archive = out / "perfusion_archive"
    write_perfusion_archive(archive, n_archive, seed=seed + 10_000, truth_dir=out / "perfusion_truth")
    return {"ct": ct, "dataset": dataset, "archive": archive, "truth": out / "perfusion_truth"}


def check_conversion(ct_archive: Path, out: Path) -> int:
    """Convert every CT series to NIfTI and check voxels and affine against the DICOM reader."""
    import nibabel as nib

    from medseg.data.convert import convert_to_nifti
    from medseg.data.dicom import read_dicom
    from medseg.data.inspect import describe_path

    for line in describe_path(ct_archive):
        logger.info("info: %s", line)
    n = 0
    for study in sorted(p for p in ct_archive.iterdir() if p.is_dir()):
        target = convert_to_nifti(study, out / f"{study.name}.nii.gz", overwrite=True)
        vol, affine, _ = read_dicom(study)
        img = nib.load(str(target))
        if not np.array_equal(np.asarray(img.dataobj), vol) or not np.allclose(img.affine, affine, atol=1e-4):
            raise RuntimeError(f"{target.name}: converted volume differs from its DICOM series")
        n += 1
    logger.info("converted %d CT series to NIfTI; voxels and affines match the DICOM reader", n)
    return n


def score_archive(archive: Path, segmentations: Path, truth: Path) -> dict[str, float]:
    """Dice of each study's segmentation (found by its keyed output name) against the truth label."""
    from medseg.batch.naming import keyed_name, load_or_create_key
    from medseg.data.dicom import scan_dicom_tree
    from medseg.evaluate import evaluate

    key = load_or_create_key(segmentations)
    scores = {}
    for study in sorted(p for p in archive.iterdir() if p.is_dir()):
        study_uid = scan_dicom_tree(study).series[0].study_uid
        label = segmentations / keyed_name(key, "study", study_uid) / "label.nii.gz"
        rows = evaluate(label, truth / f"{study.name}.nii.gz", labels=[1])
        scores[study.name] = float(rows[0]["dice"])
    return scores


def run_demo(
    out: str | os.PathLike,
    *,
    env: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
    config: str | os.PathLike = DEFAULT_CONFIG,
    seed: int = 0,
    n_train: int = 20,
    n_archive: int = 4,
    overrides: tuple[str, ...] = (),
    observers: Sequence[Any] = (),
) -> DemoResult:
    """Run every stage into ``out`` (which must not hold a previous demo's data: pass a fresh folder).

    ``observers`` see the training hooks (e.g. :class:`medseg.training.progress.ConsoleProgress`)."""
    from medseg.batch import segment_archive
    from medseg.tracking import resolve_tracking_uri
    from medseg.workflows import train_and_register

    t0 = time.perf_counter()
    out = Path(out)
    data = make_data(out, seed, n_train, n_archive)
    check_conversion(data["ct"], out / "ct_nifti")

    uri = resolve_tracking_uri(tracking_uri, env or {}, out / "mlflow")
    result = DemoResult(out=out, tracking_uri=uri)
    t1 = time.perf_counter()
    trained = train_and_register(
        config, out / "train", tracking_uri=uri, datalist=data["dataset"], overrides=overrides, observers=observers
    )
    result.train_seconds = time.perf_counter() - t1
    result.best_val_dice = trained.train.best_metrics.get("val/dice_mean")
    if trained.model is None:
        raise RuntimeError(f"training did not register a model: {trained.train.status} {trained.train.error or ''}")
    result.model_uri = trained.model.alias_uri

    summary = segment_archive(data["archive"], out / "segmentations", result.model_uri, tracking_uri=uri,
                              progress=False)
    result.batch_table = summary.table()
    if not summary.ok:
        raise RuntimeError(f"archive segmentation did not finish cleanly:\n{summary.table()}")
    result.archive_dice = score_archive(data["archive"], out / "segmentations", data["truth"])
    result.seconds = time.perf_counter() - t0
    return result


def report_lines(r: DemoResult) -> list[str]:
    dice = ", ".join(f"{k} {v:.3f}" for k, v in r.archive_dice.items())
    return [
        f"demo finished in {r.seconds:.0f} s (training {r.train_seconds:.0f} s)",
        f"validation Dice of the best epoch: {r.best_val_dice:.3f}" if r.best_val_dice is not None else "",
        f"MLflow tracking URI: {r.tracking_uri}",
        f"registered model: {r.model_uri}",
        f"segmented archive: {r.out / 'segmentations'} ({len(r.archive_dice)} studies)",
        f"Dice against the truth: {dice}",
        r.batch_table,
    ]

