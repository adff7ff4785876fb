"""Multimodal case assembly: channel order, geometry checks, resampling, label checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseg.data.channels import assemble_channels, grid_distance_mm, load_label
from medseg.errors import InputError, ReasonCode

AFF = np.array([[1.5, 0, 0, -20.0], [0, 1.5, 0, 10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def _nii(path, data, affine=AFF):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(1)
    maps = {n: rng.normal(i * 10, 1, size=(12, 10, 6)).astype(np.float32) for i, n in enumerate(["CBF", "MTT", "CBV"])}
    paths = {n: _nii(tmp_path / f"{n.lower()}.nii.gz", v) for n, v in maps.items()}
    return maps, paths


def test_channels_stacked_in_spec_order(case):
    maps, paths = case
    img = assemble_channels(paths, ["MTT", "CBV", "CBF"])
    assert tuple(img.shape) == (3, 12, 10, 6)
    for c, name in enumerate(["MTT", "CBV", "CBF"]):
        np.testing.assert_array_equal(img[c].numpy(), maps[name])
    assert img.meta["channel_names"] == ["MTT", "CBV", "CBF"]
    np.testing.assert_allclose(img.affine.numpy(), AFF)


def test_missing_channel_lists_expected_and_present(case):
    _, paths = case
    del paths["CBV"]
    with pytest.raises(InputError) as info:
        assemble_channels(paths, ["CBF", "MTT", "CBV"])
    assert info.value.code == ReasonCode.MISSING_CHANNEL
    assert "CBV" in str(info.value) and "'CBF', 'MTT'" in str(info.value)


def test_channel_off_grid_is_refused_naming_both_files(case, tmp_path):
    maps, paths = case
    shifted = AFF.copy()
    shifted[0, 3] += 2.0
    paths["MTT"] = _nii(tmp_path / "mtt_shifted.nii.gz", maps["MTT"], shifted)
    with pytest.raises(InputError) as info:
        assemble_channels(paths, ["CBF", "MTT", "CBV"])
    err = info.value
    assert err.code == ReasonCode.CHANNEL_GEOMETRY_MISMATCH
    assert "mtt_shifted.nii.gz" in str(err) and "cbf.nii.gz" in str(err)
    assert "2 mm" in str(err)


def test_channel_within_tolerance_is_accepted(case, tmp_path):
    maps, paths = case
    near = AFF.copy()
    near[0, 3] += 1e-4
    paths["MTT"] = _nii(tmp_path / "mtt_near.nii.gz", maps["MTT"], near)
    assert assemble_channels(paths, ["CBF", "MTT", "CBV"], tol_mm=1e-3).shape[0] == 3


def test_resample_onto_reference_grid(case, tmp_path):
    maps, paths = case
    # MTT on a grid of half the in-plane resolution covering the same field of view: a smooth ramp in x
    fine = AFF.copy()
    fine[0, 0] = 0.75
    fine[0, 3] = AFF[0, 3] - 0.375
    x_world = fine[0, 3] + 0.75 * np.arange(24)
    ramp = np.broadcast_to(x_world[:, None, None], (24, 10, 6)).astype(np.float32)
    paths["MTT"] = _nii(tmp_path / "mtt_fine.nii.gz", ramp, fine)
    img = assemble_channels(paths, ["CBF", "MTT", "CBV"], resample=True)
    assert tuple(img.shape) == (3, 12, 10, 6)
    expected_x = AFF[0, 3] + 1.5 * np.arange(12)
    np.testing.assert_allclose(img[1, :, 4, 3].numpy(), expected_x, atol=1e-3)


def test_label_checks(case, tmp_path):
    maps, paths = case
    img = assemble_channels(paths, ["CBF", "MTT", "CBV"])
    lab = np.zeros((12, 10, 6), np.uint8)
    lab[3:6, 3:6, 2:4] = 1
    good = load_label(_nii(tmp_path / "lab.nii.gz", lab), img, {0: "bg", 1: "lesion"}, reference_path=paths["CBF"])
    assert int(good.sum()) == 18

    lab2 = lab.copy()
    lab2[0, 0, 0] = 7
    with pytest.raises(InputError) as info:
        load_label(_nii(tmp_path / "lab7.nii.gz", lab2), img, {0: "bg", 1: "lesion"}, reference_path=paths["CBF"])
    assert info.value.code == ReasonCode.LABEL_VALUES
    assert "[7]" in str(info.value) and "lab7.nii.gz" in str(info.value) and "cbf.nii.gz" in str(info.value)

    with pytest.raises(InputError) as info:
        load_label(_nii(tmp_path / "small.nii.gz", lab[:10]), img, {0: "bg", 1: "lesion"}, reference_path=paths["CBF"])
    assert info.value.code == ReasonCode.LABEL_GEOMETRY_MISMATCH
    assert "small.nii.gz" in str(info.value) and "cbf.nii.gz" in str(info.value)


def test_grid_distance():
    b = AFF.copy()
    b[:3, :3] *= 1.01  # 1 % spacing error grows with distance from the origin voxel
    assert grid_distance_mm(AFF, (10, 10, 10), b, (10, 10, 10)) == pytest.approx(0.27, abs=1e-9)
    assert grid_distance_mm(AFF, (10, 10, 10), AFF, (10, 10, 9)) == float("inf")
