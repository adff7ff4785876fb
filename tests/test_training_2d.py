"""2D training: slice-wise on 3D volumes, and on plain 2D images."""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import tiny_config, write_2d_images, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.training import train
from medseg.training.data import make_dataset
from medseg.training.datalist import load_datalist
from medseg.training.transforms import build_train_transforms


def test_slice_wise_training_on_volumes(tmp_path):
    dataset = write_tiny_perfusion(tmp_path / "data", n=4)
    config = tiny_config(
        data={"spatial_dims": 2, "slice_axis": 2},
        train={"patch_size": [16, 16], "samples_per_case": 2, "cache": "disk"},
        augmentation={"rotate_deg": [15.0]},
    )
    # training patches are 2D slices of the cached 3D volume
    item = load_datalist(dataset, config.data.channel_names)[0].as_item()
    ds = make_dataset([item], build_train_transforms(config, needs_dist=False), cache="none")
    patches = ds[0]
    assert [tuple(p["image"].shape) for p in patches] == [(3, 16, 16)] * 2
    assert [tuple(p["label"].shape) for p in patches] == [(1, 16, 16)] * 2

    result = train(config, tmp_path / "work", datalist=dataset)
    assert result.status == "completed" and len(result.history) == 2
    cached = sorted(p.parent.name for p in (tmp_path / "work" / "cache").glob("v*/*/*.pt"))
    assert cached == ["train"] * 3  # the preprocessed training volumes, on disk (validation reads as segment does)
    spec = load_checkpoint(result.best_checkpoint).spec
    assert spec.spatial_dims == 2 and spec.network["spatial_dims"] == 2
    assert spec.contract.data.slice_axis == 2 and spec.config["data"]["slice_axis"] == 2
    dice = result.best_metrics["val/dice/infarct_core"]
    assert 0.0 <= dice <= 1.0 and result.best_metrics["val/dice_mean"] == dice
    with torch.no_grad():
        assert tuple(result.model(torch.randn(1, 3, 24, 24)).shape) == (1, 2, 24, 24)


def test_plain_2d_images_learn_two_classes(tmp_path):
    root = write_2d_images(tmp_path / "data", n=5)
    config = tiny_config(
        data={
            "channels": [{"name": "image", "normalization": {"name": "zscore"}}],
            "labels": {0: "background", 1: "disc", 2: "ellipse_1"},
            "spatial_dims": 2,
        },
        network={"features": [8, 16, 32]},
        train={
            "patch_size": [32, 32],
            "epochs": 12,
            "val_every": 4,
            "val_fraction": 0.2,
            "batch_size": 2,
            "samples_per_case": 4,
            "lr": 0.01,
            "crop_foreground": False,
        },
        augmentation={"rotate_deg": [15.0]},
    )
    result = train(config, tmp_path / "work", datalist=root)
    assert result.status == "completed"
    assert [h["epoch"] for h in result.history if "val/dice_mean" in h] == [3.0, 7.0, 11.0]
    spec = load_checkpoint(result.last_checkpoint).spec
    assert spec.spatial_dims == 2 and spec.channel_names == ["image"] and spec.contract.data.slice_axis is None
    # a real learning signal: loss goes down and both shapes are found on the held-out image
    assert result.history[-1]["train/loss"] < 0.75 * result.history[0]["train/loss"]
    assert result.best_metrics["val/dice/disc"] > 0.6
    assert result.best_metrics["val/dice/ellipse_1"] > 0.4
    assert result.best_metrics["val/dice_mean"] == pytest.approx(
        (result.best_metrics["val/dice/disc"] + result.best_metrics["val/dice/ellipse_1"]) / 2
    )
