"""The shipped configs load, and the training sections refuse bad values naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_training_helpers import tiny_config

from medseg.config import load_config
from medseg.errors import ConfigError
from medseg.training.run import public_config, resolve_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["base", "demo", "ct_organs", "isles_ctp", "2d"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert len(config.train.patch_size) == config.data.spatial_dims
    assert config.data.labels[0] == "background"


def test_demo_is_unetpp_with_dice_boundary_on_perfusion_maps():
    config = load_config(CONFIGS / "demo.yaml")
    assert config.data.channel_names == ["CBF", "MTT", "CBV"]
    assert config.network.name == "unetpp" and config.network.deep_supervision
    assert config.loss.name == "dice_ce_boundary"
    assert config.loss.build_options()["dice"] == {"include_background": False, "to_onehot_y": True}
    assert config.tracking.registered_model == "medseg-demo-perfusion"


def test_overrides_apply_to_a_loaded_config():
    config = resolve_config(tiny_config(), ["train.epochs=7", "network.features=[2, 4]"])
    assert config.train.epochs == 7 and config.network.features == [2, 4]
    assert public_config(tiny_config(datalist={"path": "/data/DOE^JOHN"}))["datalist"]["path"] is None


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"network": {"name": "vnet"}}, "network.name: unknown network 'vnet'"),
        ({"network": {"options": {"in_channels": 4}}}, "network.options: ['in_channels'] are set elsewhere"),
        ({"loss": {"name": "dice", "options": {"to_onehot_y": False}}}, "loss.options.to_onehot_y"),
        (
            {"loss": {"name": "dice_boundary", "options": {"dice": {"to_onehot_y": False}}}},
            "loss.options.dice.to_onehot_y",
        ),
        ({"loss": {"name": "focal"}}, "unknown loss 'focal'"),
        ({"train": {"patch_size": [16, 16]}}, "train.patch_size: expected 3 sizes"),
        ({"train": {"optimizer": "adam"}}, "train.optimizer: 'adam' is not one of"),
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1"),
        ({"train": {"val_fraction": 1.0}}, "train.val_fraction: must be in (0, 1)"),
        ({"train": {"folds": 5, "fold": 5}}, "train.fold: must be in 0..4"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"train": {"cache": "ram"}}, "train.cache: 'ram' is not one of"),
        ({"augmentation": {"flip_axes": [3]}}, "augmentation.flip_axes"),
        ({"augmentation": {"scale_range": [1.2, 0.8]}}, "augmentation.scale_range"),
        ({"augmentation": {"noise_prob": 2}}, "augmentation.noise_prob: must be a probability"),
        ({"inference": {"overlap": 1.0}}, "inference.overlap"),
        ({"data": {"slice_axis": 2}}, "data.slice_axis: only for 2D models"),
        (
            {
                "data": {"spatial_dims": 2, "slice_axis": 2, "spacing": [1.0, 1.0]},
                "train": {"patch_size": [16, 16]},
                "augmentation": {"rotate_deg": [10]},
            },
            "data.spacing: expected 3 positive values",
        ),
        ({"tracking": {"alias": "latest"}}, "tracking.alias"),
    ],
)
def test_training_sections_name_the_bad_key(overlay, message):
    with pytest.raises(ConfigError) as info:
        tiny_config(**overlay)
    assert message in str(info.value)
