"""Invertible preprocessing: reorient + resample + normalize, then invert a label back to the original grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.data.preprocess import build_preprocess, invert_to_original, resample_label_to
from medseg.errors import InputError, ReasonCode
from medseg.synthetic.phantoms import Phantom, make_affine, make_ct_phantom

TARGET = (1.5, 1.5, 1.5)
CENTER = (10.0, -5.0, 30.0)


def _case(
    shape, spacing, axcodes="RAS", rotation=(0.0, 0.0, 0.0), seed=0, n_organs=4
) -> tuple[Phantom, dict]:
    affine = make_affine(shape, spacing, axcodes, rotation, center=CENTER)
    ph = make_ct_phantom(shape, seed=seed, n_organs=n_organs, noise_hu=5.0, affine=affine)
    data = {
        "image": MetaTensor(torch.from_numpy(ph.image[None].copy()), affine=torch.from_numpy(affine)),
        "label": MetaTensor(torch.from_numpy(ph.label[None].copy()), affine=torch.from_numpy(affine)),
    }
    return ph, data


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _world_centroid(label: np.ndarray, affine: np.ndarray, lab: int) -> np.ndarray:
    idx = np.argwhere(label == lab).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


def _preprocess(data: dict, **kwargs):
    tf = build_preprocess("image", "label", TARGET, **kwargs)
    return tf, tf(data)


# Pure flips / permutations (and an oblique grid) with the target spacing: no interpolation anywhere.
EXACT_CASES = {
    "LAS": ((40, 36, 20), TARGET, "LAS", (0.0, 0.0, 0.0)),
    "LPI": ((40, 36, 20), TARGET, "LPI", (0.0, 0.0, 0.0)),
    "PIR": ((36, 20, 40), TARGET, "PIR", (0.0, 0.0, 0.0)),
    "oblique": ((40, 36, 20), TARGET, "LPS", (12.0, -8.0, 20.0)),
}
# Spacing changes: nearest-neighbour resampling there and back.
RESAMPLED_CASES = {
    "LPI-anisotropic": ((80, 80, 40), (1.2, 1.0, 3.0), "LPI", (0.0, 0.0, 0.0)),
    "RAS-anisotropic": ((80, 80, 40), (1.2, 1.2, 2.5), "RAS", (0.0, 0.0, 0.0)),
    "oblique-resampled": ((80, 80, 40), (1.0, 1.0, 2.0), "LPS", (12.0, -8.0, 20.0)),
}


@pytest.mark.parametrize("name", list(EXACT_CASES))
def test_permutation_and_flip_invert_exactly(name):
    shape, spacing, codes, rot = EXACT_CASES[name]
    ph, data = _case(shape, spacing, codes, rot)
    tf, out = _preprocess(data)
    img, lab = out["image"], out["label"]
    if name != "oblique":
        assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
        np.testing.assert_allclose(np.abs(img.affine.numpy()[:3, :3]), np.diag(TARGET), atol=1e-6)
        assert sorted(img.shape[1:]) == sorted(shape)
    inv = invert_to_original(lab.to(torch.uint8), img, tf)
    assert isinstance(inv, MetaTensor) and inv.dtype == torch.uint8
    assert tuple(inv.shape) == (1, *shape)
    np.testing.assert_allclose(inv.affine.numpy(), ph.affine, atol=1e-5)
    np.testing.assert_array_equal(inv[0].numpy(), ph.label)


@pytest.mark.parametrize("name", list(RESAMPLED_CASES))
def test_spacing_change_inverts_to_original_grid(name):
    shape, spacing, codes, rot = RESAMPLED_CASES[name]
    ph, data = _case(shape, spacing, codes, rot)
    tf, out = _preprocess(data)
    img, lab = out["image"], out["label"]
    np.testing.assert_allclose(np.linalg.norm(img.affine.numpy()[:3, :3], axis=0), TARGET, atol=1e-6)
    assert tuple(img.shape[1:]) == tuple(lab.shape[1:])
    torch.testing.assert_close(img.affine, lab.affine)
    assert set(np.unique(lab.numpy())) <= set(range(5))  # nearest: no interpolated label values

    inv = invert_to_original(lab.to(torch.uint8), img, tf)
    assert tuple(inv.shape) == (1, *shape)
    np.testing.assert_allclose(inv.affine.numpy(), ph.affine, atol=1e-5)
    back = inv[0].numpy()
    assert _dice(back > 0, ph.label > 0) >= 0.94
    assert _dice(back == 1, ph.label == 1) >= 0.95  # liver: the structure spanning many voxels
    for k in ph.label_names:  # small organs (a few hundred voxels) lose more to nearest-neighbour boundaries
        assert _dice(back == k, ph.label == k) >= 0.85, k


@pytest.mark.parametrize("name", list(EXACT_CASES) + list(RESAMPLED_CASES))
def test_world_centroids_preserved(name):
    shape, spacing, codes, rot = {**EXACT_CASES, **RESAMPLED_CASES}[name]
    ph, data = _case(shape, spacing, codes, rot)
    _, out = _preprocess(data)
    lab = out["label"]
    voxel = max(max(spacing), max(TARGET))
    for k in ph.label_names:
        before = _world_centroid(ph.label, ph.affine, k)
        after = _world_centroid(lab[0].numpy(), lab.affine.numpy(), k)
        assert np.linalg.norm(after - before) < voxel, (k, before, after)


def test_resampled_label_matches_phantom_drawn_on_target_grid():
    """Geometry check independent of the round trip: the phantom sampled directly on the preprocessed grid."""
    shape, spacing, codes, rot = RESAMPLED_CASES["RAS-anisotropic"]
    _, data = _case(shape, spacing, codes, rot, seed=1)
    _, out = _preprocess(data)
    lab = out["label"]
    truth = make_ct_phantom(tuple(lab.shape[1:]), seed=1, n_organs=4, noise_hu=5.0, affine=lab.affine.numpy())
    assert _dice(lab[0].numpy() == 1, truth.label == 1) >= 0.94
    assert _dice(lab[0].numpy() > 0, truth.label > 0) >= 0.92
    # and the image intensities went along: liver voxels of the truth grid are liver-bright in the resampled image
    liver = truth.label == 1
    assert abs(float(out["image"][0].numpy()[liver].mean()) - truth.hu[1]) < 15.0


def test_normalization_inside_the_chain_is_skipped_by_inversion():
    ph, data = _case((40, 36, 20), (1.2, 1.2, 2.5), "LAS")
    tf, out = _preprocess(data, normalizers=[{"name": "ct_window", "center": 40, "width": 400}])
    img = out["image"]
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert float(img.max()) > 0.5 and float(img.min()) < 0.01
    inv = invert_to_original(out["label"], img, tf)
    assert tuple(inv.shape) == (1, *ph.label.shape)
    np.testing.assert_allclose(inv.affine.numpy(), ph.affine, atol=1e-5)


def test_channel_count_checked_in_chain():
    _, data = _case((40, 36, 20), TARGET, "LAS")
    tf = build_preprocess(
        "image", "label", TARGET, normalizers=[{"name": "zscore"}] * 2, channel_names=["CT", "PET"]
    )
    with pytest.raises(ValueError, match=r"expected 2 channel\(s\) \(CT, PET\), got 1"):
        tf(data)


def test_probabilities_invert_with_linear_mode():
    ph, data = _case((40, 36, 20), (1.2, 1.2, 2.5), "LPI")
    tf, out = _preprocess(data)
    probs = torch.stack([(out["label"][0] == k).float() for k in range(5)])  # one-hot "probabilities"
    inv = invert_to_original(probs, out["image"], tf, nearest=False)
    assert inv.dtype == torch.float32 and tuple(inv.shape) == (5, *ph.label.shape)
    values = inv.numpy()
    assert values.min() >= -1e-6 and values.max() <= 1 + 1e-6
    assert len(np.unique(values)) > 3  # linear interpolation produced intermediate values
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=1e-5)
    assert _dice(values[1] > 0.5, ph.label == 1) >= 0.9


def test_resample_label_to_other_grid():
    shape = (40, 36, 20)
    ph, data = _case(shape, TARGET, "RAS")
    las_affine = make_affine(shape, TARGET, "LAS", center=CENTER)
    out = resample_label_to(data["label"], las_affine, shape)
    assert out.dtype == torch.uint8
    np.testing.assert_allclose(out.affine.numpy(), las_affine, atol=1e-6)
    np.testing.assert_array_equal(out[0].numpy(), ph.label[::-1])
    # resampling the preprocessed label straight to the original grid agrees with the traced inversion
    ph2, data2 = _case((48, 48, 24), (1.2, 1.0, 3.0), "LPI")
    tf, pre = _preprocess(data2)
    direct = resample_label_to(pre["label"].to(torch.uint8), ph2.affine, ph2.label.shape)
    inverted = invert_to_original(pre["label"].to(torch.uint8), pre["image"], tf)
    assert (direct[0].numpy() != inverted[0].numpy()).mean() < 0.001


# ---------------------------------------------------------------- errors


def test_label_on_another_grid_is_refused():
    _, data = _case((40, 36, 20), TARGET, "RAS")
    data["label"] = MetaTensor(
        data["label"].as_tensor(), affine=torch.from_numpy(make_affine((40, 36, 20), TARGET, "LAS"))
    )
    with pytest.raises(InputError, match="'label' .* is not on the grid of 'image'") as err:
        build_preprocess("image", "label", TARGET)(data)
    assert err.value.code is ReasonCode.LABEL_GEOMETRY_MISMATCH
    data["label"] = MetaTensor(torch.zeros(1, 40, 36, 21), affine=data["image"].affine)
    with pytest.raises(InputError) as err:
        build_preprocess("image", "label", TARGET)(data)
    assert err.value.code is ReasonCode.LABEL_GEOMETRY_MISMATCH


def test_plain_tensor_and_missing_channel_axis_refused():
    _, data = _case((40, 36, 20), TARGET, "RAS")
    tf = build_preprocess("image", None, TARGET)
    with pytest.raises(InputError, match="must be a MetaTensor carrying its affine") as err:
        tf({"image": data["image"].as_tensor()})
    assert err.value.code is ReasonCode.MISSING_GEOMETRY
    with pytest.raises(InputError, match=r"must be channel-first with 3 spatial dims") as err:
        tf({"image": data["image"][0]})
    assert err.value.code is ReasonCode.WRONG_DIMENSIONS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_spacing": (1.5, 0.0, 1.5)}, "target_spacing must be 2 or 3 positive numbers"),
        ({"target_spacing": (1.5,)}, "target_spacing must be 2 or 3 positive numbers"),
        ({"orientation": "RA"}, "has 2 axis codes but target_spacing has 3"),
        ({"orientation": "RAR"}, "must name each of the first 3 of the R/L, A/P, S/I axes once"),
        ({"orientation": "XYZ"}, "must name each of the first 3"),
        ({"keys_label": "image"}, r"both image and label keys"),
    ],
)
def test_build_preprocess_validation(kwargs, message):
    args = {"keys_image": "image", "keys_label": "label", "target_spacing": TARGET, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_preprocess(**args)


def test_invert_validation():
    _, data = _case((40, 36, 20), (1.2, 1.2, 2.5), "LAS")
    tf, out = _preprocess(data)
    with pytest.raises(ValueError, match=r"pred must be channel-first .* on the preprocessed grid"):
        invert_to_original(out["label"][None], out["image"], tf)
    with pytest.raises(ValueError, match="was not preprocessed by this transform"):
        invert_to_original(out["label"], out["image"], tf, key="ct")
    with pytest.raises(ValueError, match="with its applied_operations"):
        invert_to_original(out["label"], data["image"], tf)


def test_2d_round_trip():
    affine = np.diag([0.7, -0.7, 1.0, 1.0])
    affine[:2, 3] = [3.0, 40.0]
    label = np.zeros((30, 40), dtype=np.uint8)
    label[5:20, 10:30] = 1
    data = {
        "image": MetaTensor(
            torch.from_numpy(label[None].astype(np.float32)), affine=torch.from_numpy(affine)
        ),
        "label": MetaTensor(torch.from_numpy(label[None].copy()), affine=torch.from_numpy(affine)),
    }
    tf = build_preprocess("image", "label", (1.0, 1.0), orientation="RA")
    out = tf(data)
    assert nib.aff2axcodes(out["image"].affine.numpy())[:2] == ("R", "A")
    inv = invert_to_original(out["label"].to(torch.uint8), out["image"], tf)
    assert tuple(inv.shape) == (1, 30, 40)
    np.testing.assert_allclose(inv.affine.numpy(), affine, atol=1e-5)
    assert _dice(inv[0].numpy() == 1, label == 1) >= 0.95
