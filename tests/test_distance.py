"""Tests of medseg.data.distance: signed distance maps for the boundary loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from medseg.data.distance import SignedDistanceMap, SignedDistanceMapd, signed_distance


def test_hand_values_1d_with_spacing():
    label = np.array([[0, 0, 1, 1, 1, 0, 0]])
    out = SignedDistanceMap(2, spacing=2.0)(label)
    assert out.dtype == np.float32 and out.shape == (2, 7)
    # class 1: outside +distance to the nearest object voxel, inside -distance to the nearest outside voxel (mm)
    np.testing.assert_array_equal(out[1], [4, 2, -2, -4, -2, 2, 4])
    # class 0 is the complement: signs flip
    np.testing.assert_array_equal(out[0], [-4, -2, 2, 4, 2, -2, -4])


def test_hand_values_2d_anisotropic():
    label = np.zeros((1, 5, 5), dtype=np.int64)
    label[0, 1:4, 2] = 1  # a vertical bar of 3 voxels in column 2
    out = SignedDistanceMap(2, spacing=(3.0, 1.0))(label)[1]
    # inside: nearest outside voxel is one column away (1 mm) for all three voxels
    np.testing.assert_allclose(out[1:4, 2], [-1, -1, -1])
    # row 0 above the bar: 3 mm straight up; row 0 col 3: sqrt(3^2 + 1^2)
    assert out[0, 2] == pytest.approx(3.0)
    assert out[0, 3] == pytest.approx(np.sqrt(10.0), rel=1e-6)
    # same row, two columns right: 2 mm
    assert out[2, 4] == pytest.approx(2.0)


def test_3d_matches_edt_and_signs():
    spacing = (2.5, 0.8, 1.2)
    label = np.zeros((1, 7, 9, 8), dtype=np.uint8)
    label[0, 2:5, 1:7, 3:8] = 1
    label[0, 3, 3:5, 4:6] = 2
    out = SignedDistanceMap(3, spacing=spacing)(label)
    for c in range(3):
        mask = label[0] == c
        expected = np.where(
            mask,
            -ndimage.distance_transform_edt(mask, sampling=spacing),
            ndimage.distance_transform_edt(~mask, sampling=spacing),
        )
        np.testing.assert_allclose(out[c], expected, rtol=1e-6)
        assert (out[c][mask] < 0).all() and (out[c][~mask] > 0).all()
    # the voxel of class 2 at (3, 3, 4) touches class 1 below it along axis 0 (2.5 mm) and along axis 1 (0.8 mm)
    assert out[2][3, 3, 4] == pytest.approx(-0.8)


def test_absent_and_full_classes_give_zero_maps():
    label = np.zeros((1, 4, 4), dtype=np.int64)
    out = SignedDistanceMap(3, spacing=1.0)(label)
    np.testing.assert_array_equal(out[1], 0)  # absent
    np.testing.assert_array_equal(out[2], 0)  # absent
    np.testing.assert_array_equal(out[0], 0)  # fills the image: no surface
    np.testing.assert_array_equal(signed_distance(np.zeros((3, 3), bool), (1.0, 1.0)), 0)


def test_onehot_input_equals_index_input():
    rng = np.random.default_rng(0)
    index = rng.integers(0, 3, size=(1, 6, 5, 4))
    onehot = np.stack([index[0] == c for c in range(3)]).astype(np.float32)
    transform = SignedDistanceMap(3, spacing=(1.0, 2.0, 0.5))
    np.testing.assert_array_equal(transform(index), transform(onehot))
    # a single binary mask with num_classes=1
    binary = (index == 1).astype(np.uint8)
    np.testing.assert_array_equal(
        SignedDistanceMap(1, spacing=(1.0, 2.0, 0.5))(binary)[0], transform(index)[1]
    )


def test_spacing_from_metatensor_affine():
    label = np.zeros((1, 6, 5, 4), dtype=np.int64)
    label[0, 1:4, 2:4, 1:3] = 1
    spacing = (0.5, 2.0, 3.0)
    # a rotation (x <-> y swap with a sign) times the spacing: pixdim comes from the column norms
    affine = np.array([[0.0, -2.0, 0.0, 10.0], [0.5, 0.0, 0.0, -4.0], [0.0, 0.0, 3.0, 1.0], [0, 0, 0, 1]])
    meta = MetaTensor(torch.from_numpy(label), affine=torch.from_numpy(affine))
    out = SignedDistanceMap(2)(meta)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, meta.affine)
    np.testing.assert_allclose(out.numpy(), SignedDistanceMap(2, spacing=spacing)(label), rtol=1e-6)
    # an explicit spacing wins over the metadata
    np.testing.assert_allclose(
        SignedDistanceMap(2, spacing=1.0)(meta).numpy(), SignedDistanceMap(2, 1.0)(label)
    )


def test_tensor_in_tensor_out():
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[0, 1:3, 1:3] = 1
    out = SignedDistanceMap(2, spacing=1.0)(label)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 4, 4)
    assert out[1, 1, 1].item() == -1.0 and out[1, 0, 0].item() == pytest.approx(np.sqrt(2.0))


def test_validation_errors():
    label = np.zeros((1, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="spacing is None and the label is not a MetaTensor"):
        SignedDistanceMap(2)(label)
    with pytest.raises(ValueError, match="num_classes"):
        SignedDistanceMap(0)
    with pytest.raises(ValueError, match="num_classes"):
        SignedDistanceMap(2.0)
    with pytest.raises(ValueError, match=r"one value per spatial axis \(2\)"):
        SignedDistanceMap(2, spacing=(1.0, 1.0, 1.0))(label)
    with pytest.raises(ValueError, match="finite and > 0"):
        SignedDistanceMap(2, spacing=(1.0, 0.0))(label)
    with pytest.raises(ValueError, match=r"integers in \[0, 1\], found \[3\]"):
        SignedDistanceMap(2, spacing=1.0)(label + 3)
    with pytest.raises(ValueError, match=r"found \[0.5\]"):
        SignedDistanceMap(2, spacing=1.0)(label + 0.5)
    with pytest.raises(ValueError, match=r"\(1, \*spatial\).*\(3, \*spatial\).*\(2, 4, 4\)"):
        SignedDistanceMap(3, spacing=1.0)(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        SignedDistanceMap(2, spacing=1.0)(np.full((2, 4, 4), 2))
    with pytest.raises(ValueError, match="channel-first"):
        SignedDistanceMap(2, spacing=1.0)(np.zeros(4))


def test_dict_wrapper():
    label = np.zeros((1, 5, 5), dtype=np.int64)
    label[0, 1:3, 1:4] = 1
    data = {"label": label, "image": np.ones((1, 5, 5))}
    out = SignedDistanceMapd("label", num_classes=2, spacing=(1.0, 2.0))(data)
    np.testing.assert_array_equal(out["dist"], SignedDistanceMap(2, spacing=(1.0, 2.0))(label))
    assert out["label"] is label and "dist" not in data
    two = SignedDistanceMapd(["a", "b"], num_classes=2, output_key=["da", "db"], spacing=1.0)(
        {"a": label, "b": 1 - label}
    )
    np.testing.assert_array_equal(two["da"], -two["db"])  # the complement flips the sign map of each class
    with pytest.raises(ValueError, match="one key per input key"):
        SignedDistanceMapd(["a", "b"], num_classes=2, output_key="dist", spacing=1.0)
    with pytest.raises(ValueError, match="must differ"):
        SignedDistanceMapd("label", num_classes=2, output_key="label", spacing=1.0)
    with pytest.raises(KeyError):
        SignedDistanceMapd("missing", num_classes=2, spacing=1.0)(data)
    assert "dist" not in SignedDistanceMapd("missing", 2, spacing=1.0, allow_missing_keys=True)(data)
