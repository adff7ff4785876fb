"""Shared helpers of the training tests: tiny synthetic datasets on disk and a tiny config (no tests here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import MedsegConfig, deep_merge, from_dict
from medseg.data.io import save_image, save_label
from medseg.synthetic.dataset import write_perfusion_dataset
from medseg.synthetic.images2d import make_2d_case

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {
        "channels": [
            {"name": n, "normalization": {"name": "zscore", "nonzero": True}} for n in ("CBF", "MTT", "CBV")
        ],
        "labels": {0: "background", 1: "infarct_core"},
    },
    "network": {"name": "unet", "features": [4, 8, 16]},
    "loss": {"name": "dice_ce"},
    "train": {
        "epochs": 2,
        "batch_size": 2,
        "samples_per_case": 1,
        "patch_size": [16, 16, 8],
        "lr": 0.01,
        "val_every": 1,
        "val_fraction": 0.25,
        "num_workers": 0,
        "device": "cpu",
        "num_threads": 1,  # tiny tensors: one thread is as fast and does not stall on a busy machine
        "qc_cases": 1,
    },
    "augmentation": {"rotate_prob": 0.5, "scale_prob": 0.5},
    "inference": {"sw_batch_size": 2},
}


def tiny_config(**overlay: Any) -> MedsegConfig:
    """The tiny 3D config, with ``overlay`` sections merged in."""
    return from_dict(MedsegConfig, deep_merge(copy.deepcopy(TINY), overlay))


def write_tiny_perfusion(root: Path, n: int = 4, shape: tuple[int, int, int] = (24, 24, 12)) -> Path:
    """``n`` tiny CBF/MTT/CBV cases; returns the dataset.json path."""
    return write_perfusion_dataset(root, n, shape=shape, seed=10)


def write_2d_images(root: Path, n: int = 4, shape: tuple[int, int] = (40, 40)) -> Path:
    """``n`` plain 2D image/label pairs in the folder layout (``root/case_k/image.nii.gz, label.nii.gz``).

    Stored as (H, W, 1) NIfTI volumes, which ``load_volume(spatial_dims=2)`` reads as 2D images.
    """
    for k in range(n):
        case = make_2d_case(shape=shape, seed=k, n_classes=2, spacing=(0.8, 0.8))
        affine = np.diag([case.spacing[0], case.spacing[1], 1.0, 1.0])
        save_image(case.image[..., None], root / f"case_{k}" / "image.nii.gz", affine=affine)
        save_label(case.label[..., None], root / f"case_{k}" / "label.nii.gz", affine=affine)
    return root
