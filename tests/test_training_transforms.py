"""Training transform chains: invariants of crops, distance maps, normalization and the rotate/zoom augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.data.distance import SignedDistanceMap
from medseg.errors import ConfigError
from medseg.training.data import make_dataset
from medseg.training.datalist import load_datalist
from medseg.training.transforms import (
    RandRotateScaled,
    build_train_transforms,
    build_val_transforms,
    patch_roi,
)

BOUNDARY_LOSS = {"name": "dice_boundary", "options": {"dice": {"include_background": False}}}


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    dataset = write_tiny_perfusion(tmp_path_factory.mktemp("tt") / "data", n=1)
    return load_datalist(dataset, ["CBF", "MTT", "CBV"])[0].as_item()


def _deterministic_part(chain: Compose) -> Compose:
    first = chain.get_index_of_first(lambda t: hasattr(t, "set_random_state"))
    return Compose(chain.transforms[:first])


def test_patches_carry_matching_distance_maps(item):
    config = tiny_config(
        loss=BOUNDARY_LOSS,
        augmentation={"rotate_prob": 0.0, "scale_prob": 0.0},
        train={"samples_per_case": 4},
    )
    chain = build_train_transforms(config, needs_dist=True)
    chain.set_random_state(seed=3)
    samples = chain(dict(item))
    assert len(samples) == 4
    n_foreground = 0
    for s in samples:
        image, label, dist = s["image"], s["label"], s["dist"]
        assert tuple(image.shape) == (3, 16, 16, 8) and tuple(label.shape) == (1, 16, 16, 8)
        assert tuple(dist.shape) == (2, 16, 16, 8) and dist.dtype == torch.float32
        assert set(torch.unique(label).tolist()) <= {0.0, 1.0}
        # crops and flips moved the maps with the label: negative exactly inside each class
        assert torch.equal(dist[1] < 0, label[0] == 1)
        assert torch.equal(dist[0] < 0, label[0] == 0)
        n_foreground += int((label == 1).any())
    assert n_foreground >= 2  # pos_fraction 0.67 over 4 patches (seeded)


def test_normalization_uses_the_whole_native_image(item):
    """The foreground crop does not change intensities: a cropped training case is a window of the val case."""
    plain = [{"name": n, "normalization": {"name": "zscore"}} for n in ("CBF", "MTT", "CBV")]
    config = tiny_config(data={"channels": plain}, train={"foreground_margin": 1})
    train_case = _deterministic_part(build_train_transforms(config, needs_dist=False))(dict(item))
    val_case = build_val_transforms(config)(dict(item))
    full, crop = val_case["image"], train_case["image"]
    assert tuple(full.shape) == (3, 24, 24, 12) and crop.shape[1] < 24  # the zero background was cropped
    offset = np.linalg.solve(np.asarray(full.affine), np.asarray(crop.affine))[:3, 3]
    start = np.round(offset).astype(int)
    window = tuple(slice(o, o + n) for o, n in zip(start, crop.shape[1:], strict=True))
    assert np.allclose(offset, start, atol=1e-6)
    assert torch.equal(crop.as_tensor(), full.as_tensor()[(slice(None), *window)])
    assert torch.equal(train_case["label"].as_tensor(), val_case["label"].as_tensor()[(slice(None), *window)])
    # zscore statistics of the whole image (a crop would have left out the zero background)
    mtt = full[1].as_tensor().double()
    assert float(mtt.mean()) == pytest.approx(0.0, abs=1e-5) and float(mtt.std()) == pytest.approx(
        1.0, rel=1e-3
    )


def test_zoom_rescales_distance_maps():
    yy, xx = np.mgrid[:48, :48]
    disk = ((yy - 24) ** 2 + (xx - 24) ** 2 <= 10**2).astype(np.float32)[None]
    label = MetaTensor(torch.from_numpy(disk))
    dist = SignedDistanceMap(num_classes=2, spacing=1.0)(label)
    aug = RandRotateScaled(
        ["label", "dist"], ["nearest", "bilinear"], 2, [0.0], 0.0, (1.3, 1.3), 1.0, dist_keys=["dist"]
    )
    out = aug({"label": label, "dist": dist})
    assert aug.zoom == pytest.approx(1.3)
    area = float(out["label"].sum())
    assert area == pytest.approx(float(disk.sum()) * 1.3**2, rel=0.05)
    # the map at the centre is minus the (zoomed) radius, and agrees with the map of the zoomed label
    recomputed = SignedDistanceMap(num_classes=2, spacing=1.0)(out["label"])
    assert float(out["dist"][1, 24, 24]) == pytest.approx(-13.0, abs=0.8)
    assert float(recomputed[1, 24, 24]) == pytest.approx(-13.0, abs=0.8)
    assert float((out["dist"][1] - recomputed[1]).abs().median()) < 0.5


def test_rotation_is_replayable_from_the_seed():
    label = MetaTensor(torch.zeros(1, 20, 20, 10))
    label[0, 5:12, 6:15, 2:8] = 1
    aug = RandRotateScaled(["label"], ["nearest"], 3, [0.0, 0.0, 30.0], 1.0, (1.0, 1.0), 0.0)
    runs = []
    for _ in range(2):
        aug.set_random_state(seed=7)
        runs.append(aug({"label": label})["label"])
    assert aug.angles is not None and aug.angles[:2] == [0.0, 0.0] and abs(aug.angles[2]) <= np.deg2rad(30)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], label)


def test_slice_wise_patch_is_a_single_slice():
    config = tiny_config(
        data={"spatial_dims": 2, "slice_axis": 1},
        train={"patch_size": [16, 8]},
        augmentation={"rotate_deg": [15.0]},
    )
    assert patch_roi(config.data, config.train.patch_size) == [16, 1, 8]
    assert patch_roi(tiny_config().data, [16, 16, 8]) == [16, 16, 8]


def test_disk_cache_gives_the_same_samples(item, tmp_path):
    config = tiny_config(loss=BOUNDARY_LOSS, train={"samples_per_case": 2})
    runs = []
    for cache in ("none", "disk", "disk"):  # the second disk run reads the cached case back
        ds = make_dataset(
            [dict(item)], build_train_transforms(config, needs_dist=True), cache, tmp_path / "cache"
        )
        ds.transform.set_random_state(seed=5)
        runs.append(ds[0])
    assert len(list((tmp_path / "cache").iterdir())) == 1
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            for key in ("image", "label", "dist"):
                assert torch.equal(a[key], b[key]), key
    with pytest.raises(ConfigError, match="train.cache_dir"):
        make_dataset([dict(item)], build_train_transforms(config, needs_dist=True), "disk", None)
