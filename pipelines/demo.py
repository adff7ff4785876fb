#!/usr/bin/env python
"""The demo that `make demo` runs: synthetic studies in, NIfTI out, every geometry checked.

Stages (each a library call; this file only wires them):
  1. write a small synthetic archive: CT studies as DICOM series (axial, coronal, sagittal, oblique,
     reversed slice order) and multimodal CBF/MTT/CBV perfusion cases as NIfTI;
  2. `medseg info` on the archive; `medseg convert` of every series to NIfTI, checked against the reader.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg.cli import main as medseg_cli  # noqa: E402

log = logging.getLogger("medseg.demo")
ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique")


def stage_data(out: Path, seed: int) -> tuple[Path, Path]:
    from medseg.synthetic.dataset import write_ct_study, write_perfusion_dataset

    archive = out / "archive"
    for i, orientation in enumerate(ORIENTATIONS):
        write_ct_study(archive / f"study_{i:02d}", orientation=orientation, shape=(64, 64, 40), seed=seed + i)
    write_ct_study(archive / "study_reversed", orientation="axial", shape=(64, 64, 40), seed=seed, reverse_order=True)
    dataset = write_perfusion_dataset(out / "perfusion", 4, seed=seed)
    return archive, dataset


def stage_convert(archive: Path, out: Path) -> None:
    import nibabel as nib

    from medseg.data.dicom import read_dicom

    if medseg_cli(["info", str(archive)]) != 0:
        raise SystemExit("medseg info failed")
    for study in sorted(p for p in archive.iterdir() if p.is_dir()):
        target = out / "nifti" / f"{study.name}.nii.gz"
        if medseg_cli(["convert", str(study), str(target), "--force", "--modality", "CT"]) != 0:
            raise SystemExit(f"medseg convert failed for {study.name}")
        vol, affine, _ = read_dicom(study)
        img = nib.load(str(target))
        if not np.array_equal(np.asarray(img.dataobj), vol) or not np.allclose(img.affine, affine, atol=1e-4):
            raise SystemExit(f"{target.name}: converted volume differs from the DICOM series")
        log.info("%s: voxels and affine match the DICOM series", target.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (recreated)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("monai", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    archive, dataset = stage_data(args.out, args.seed)
    log.info("synthetic archive at %s, perfusion dataset %s", archive, dataset)
    stage_convert(archive, args.out)
    log.info("demo finished in %.1f s; outputs in %s", time.perf_counter() - t0, args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
