"""Shared pieces of the batch tests: a thresholding model, a synthetic archive with bad studies and canary
identifiers, and a command-line entry for running a batch in a subprocess (the SIGKILL test).

No tests here; the module is imported by ``test_batch*.py`` and by ``python -c`` in a subprocess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from model_specs import channel, contract

from medseg.checkpoint import ModelSpec
from medseg.inference import Predictor
from medseg.inference.options import InferenceOptions
from medseg.synthetic.dataset import write_ct_study
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series
from medseg.synthetic.phantoms import make_ct_phantom

CANARY_NAME = "CANARYNAME"
CANARY_ID = "CANARYID"
CANARY_FOLDER = "CANARYFOLDER"
CANARIES = (CANARY_NAME, CANARY_ID, CANARY_FOLDER)
THRESHOLD_HU = -500.0
SHAPE = (24, 24, 12)
NAME_KEY = bytes(range(32))  # a fixed naming key, so two output folders name items alike
ORIENTATIONS = ("axial", "coronal", "sagittal", "oblique", "reversed")


class ThresholdNet(torch.nn.Module):
    """Logits (0, (x - threshold) / 100) on the first channel: label 1 exactly where the value exceeds -500 HU.

    ``delay_s`` sleeps in every forward pass (to slow a run down for the kill test).
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        first = x[:, :1]
        return torch.cat([torch.zeros_like(first), (first - THRESHOLD_HU) / 100.0], dim=1)


def threshold_spec(channels: tuple[tuple[str, str], ...] = (("CT", "CT"),), body: str = "body") -> ModelSpec:
    """A spec whose channels are ``(name, modality rule)`` pairs; label 1 is named ``body``."""
    return ModelSpec(
        network={"name": "threshold"},
        contract=contract(
            [channel(name, modality=modality) for name, modality in channels],
            {0: "background", 1: body},
            inference={"overlap": 0.5, "sw_batch_size": 2},
        ),
    )


def threshold_predictor(
    delay_s: float = 0.0, channels: tuple[tuple[str, str], ...] = (("CT", "CT"),)
) -> Predictor:
    return Predictor(ThresholdNet(delay_s), threshold_spec(channels), InferenceOptions(device="cpu"))


@dataclass
class Archive:
    root: Path
    good: list[Path]  # study folders expected DONE
    bad: dict[str, Path]  # reason code -> study folder


def _study(root: Path, i: int) -> Path:
    return root / f"{CANARY_FOLDER}_{i:02d}"


def write_good_study(root: Path, i: int) -> Path:
    folder = _study(root, i)
    orientation = ORIENTATIONS[i % len(ORIENTATIONS)]
    write_ct_study(
        folder,
        orientation="axial" if orientation == "reversed" else orientation,
        reverse_order=orientation == "reversed",
        shape=SHAPE,
        spacing=(1.5, 1.5, 2.5),
        seed=i,
        patient_name=f"{CANARY_NAME}^P{i:02d}",
        patient_id=f"{CANARY_ID}{i:02d}",
        n_organs=2,
    )
    return folder


def write_archive(root: Path, n_good: int = 17, bad: bool = True) -> Archive:
    """``n_good`` small CT studies in five orientations and, with ``bad``, three broken ones."""
    good = [write_good_study(root, i) for i in range(n_good)]
    bad_studies: dict[str, Path] = {}
    if bad:
        truncated = write_good_study(root, 100)
        victim = sorted((truncated / "CT").iterdir())[6]
        victim.write_bytes(victim.read_bytes()[:-300])  # cut inside the pixel data
        bad_studies["TRUNCATED_PIXEL_DATA"] = truncated

        missing = write_good_study(root, 101)
        sorted((missing / "CT").iterdir())[5].unlink()
        bad_studies["MISSING_SLICE"] = missing

        mr = _study(root, 102)
        affine = affine_for("axial", spacing=(1.5, 1.5, 2.5), shape=SHAPE)
        image = make_ct_phantom(shape=SHAPE, seed=102, affine=affine, n_organs=2).image
        write_dicom_series(
            np.round(np.clip(image, 0, None)),
            affine,
            mr / "MR",
            modality="MR",
            series_description="t1",
            patient_name=f"{CANARY_NAME}^MR",
            patient_id=f"{CANARY_ID}MR",
            seed=102,
        )
        bad_studies["WRONG_MODALITY"] = mr
    return Archive(root, good, bad_studies)


def cli(argv: list[str]) -> None:
    """``INPUT OUTPUT KEY_HEX DELAY_S``: a batch run with the slowed thresholding model (for subprocesses)."""
    from medseg.batch import segment_archive

    inp, out, key_hex, delay = argv
    segment_archive(
        inp, out, threshold_predictor(float(delay)), name_key=bytes.fromhex(key_hex), progress=False
    )


def register_threshold() -> None:
    """Register :class:`ThresholdNet` as the network ``"threshold"`` (a worker / Ray actor set-up hook)."""
    from medseg.nets.registry import NETWORKS

    NETWORKS["threshold"] = ThresholdNet


def save_threshold_checkpoint(path: Path, delay_s: float = 0.0) -> Path:
    """A checkpoint of the thresholding model (``delay_s`` per forward pass: per sliding window batch)."""
    from medseg.checkpoint import Checkpoint, save_checkpoint

    spec = threshold_spec()
    if delay_s:
        spec.network = {"name": "threshold", "delay_s": delay_s}
    return save_checkpoint(path, Checkpoint({}, spec))
