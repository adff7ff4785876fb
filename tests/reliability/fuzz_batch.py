"""Seeded DICOM fuzzing through a whole ``medseg segment`` batch: one archive of many 20-slice series, one slice of
each mutated (as in :mod:`fuzz`: truncations and byte flips, half confined to groups 0020/0028/7FE0), one run.

The run must survive every mutant and account for every discovered item (DONE + QUARANTINED + FAILED ==
discovered), and no mutant that touched a geometry or pixel-format value (category ``format``) may end DONE with a
changed geometry or label. A DONE output is attributed to the series whose expected label it is closest to; the
model thresholds the CT values, so the expected label of a series is known exactly.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from fuzz import N_SLICES, mutate
from inputs import CANARY_FOLDER, element_map, write_ct

from medseg.checkpoint import ModelSpec
from medseg.contract import DataContract
from medseg.inference.options import InferenceOptions

THRESHOLD_HU = -500.0
GEOMETRY_TOL_MM = 0.02


class _Threshold(torch.nn.Module):
    """Label 1 exactly where the CT value exceeds ``threshold`` (default -500 HU)."""

    def __init__(self, threshold: float = THRESHOLD_HU) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, :1]
        return torch.cat([torch.zeros_like(first), (first - self.threshold) / 100.0], dim=1)


def threshold_predictor(threshold: float = THRESHOLD_HU):
    from medseg.inference import Predictor

    spec = ModelSpec(network={"name": "threshold"}, contract=DataContract.from_dict({"data": {"channels": [{"name": "CT", "normalization": {"name": "none"}, "series": {"modality": "CT"}}], "labels": {0: "background", 1: "dense"}, "spacing": None, "orientation": "RAS", "spatial_dims": 3}, "patch_size": [16, 16, 16], "inference": {"overlap": 0.25, "sw_batch_size": 4}}))  # fmt: skip
    return Predictor(_Threshold(threshold), spec, InferenceOptions(device="cpu"))


@dataclass
class BatchFuzzResult:
    discovered: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    categories: Counter = field(default_factory=Counter)
    done_same: int = 0
    done_changed: list[str] = field(default_factory=list)  # allowed: pixel / rescale / other mutants
    violations: list[str] = field(
        default_factory=list
    )  # format mutants (or unattributable) DONE with changes
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        return {
            "mutants": sum(self.categories.values()),
            "discovered items": self.discovered,
            **{f"items {k}": v for k, v in sorted(self.counts.items())},
            "DONE unchanged": self.done_same,
            "DONE changed (pixel/rescale/other mutants)": len(self.done_changed),
            "violations": len(self.violations),
            "seconds": round(self.seconds, 1),
        }


def _write_archive(
    root: Path, n: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray, list[tuple[str, int | None]]]:
    rng = np.random.default_rng(seed)
    expected, categories, affine = [], [], None
    for i in range(n):
        volume, affine, files = write_ct(root / CANARY_FOLDER / f"s{i:04d}", N_SLICES, seed=seed * 10_000 + i)
        expected.append(volume > THRESHOLD_HU)
        victim = [0, N_SLICES // 2, N_SLICES - 1][int(rng.integers(3))]
        original = files[victim].read_bytes()
        elements = element_map(files[victim])
        mutated, _kind, _offset, category = mutate(rng, original, elements, targeted=i % 2 == 1)
        files[victim].write_bytes(mutated)
        categories.append(category)
    return expected, affine, categories


def run_batch_fuzz(workdir: Path, n_mutants: int, seed: int = 0) -> BatchFuzzResult:
    """Write ``n_mutants`` mutated series under ``workdir`` and segment them all in one batch run."""
    from medseg.batch import segment_archive

    archive, out = workdir / "archive", workdir / "out"
    expected, affine, categories = _write_archive(archive, n_mutants, seed)
    result = BatchFuzzResult(categories=Counter(c for c, _ in categories))
    start = time.perf_counter()
    summary = segment_archive(
        archive, out, threshold_predictor(), progress=False, formats=("nifti", "report")
    )
    result.seconds = time.perf_counter() - start
    result.discovered = summary.total
    result.counts = {
        "DONE": summary.done, "QUARANTINED": summary.quarantined, "FAILED": summary.failed,
        "PENDING": summary.pending,
    }  # fmt: skip
    result.reasons = dict(summary.reasons())
    stack = np.stack(expected).astype(bool)
    for label_file in sorted(out.glob("*/label.nii.gz")):
        img = nib.load(str(label_file))
        data = np.asarray(img.dataobj).astype(bool)
        where = label_file.parent.name
        if data.shape != stack.shape[1:] or not np.allclose(img.affine, affine, atol=GEOMETRY_TOL_MM, rtol=0):
            result.violations.append(f"{where}: DONE with shape {data.shape} / another affine")
            continue
        differences = (stack != data).reshape(len(stack), -1).sum(axis=1)
        best = int(np.argmin(differences))
        if differences[best] == 0:
            result.done_same += 1
        elif categories[best][0] == "format" or differences[best] > data[..., 0].size:
            result.violations.append(
                f"{where}: DONE, {int(differences[best])} voxels off series s{best:04d} "
                f"(mutant category {categories[best][0]}, element {categories[best][1]})"
            )
        else:
            result.done_changed.append(f"s{best:04d} ({categories[best][0]})")
    return result
