"""Postprocessing: largest connected component and small-object removal on hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.errors import ConfigError
from medseg.inference.components import largest_component, remove_small
from medseg.inference.postprocess import Postprocess, Postprocessd


def _volume() -> np.ndarray:
    """Label 1: a 27-voxel cube, an 8-voxel cube, and one voxel touching the big cube only at a corner.
    Label 2: a 10-voxel bar and a 5-voxel bar."""
    v = np.zeros((16, 16, 12), dtype=np.uint8)
    v[1:4, 1:4, 1:4] = 1  # 27 voxels
    v[4, 4, 4] = 1  # corner-touching the big cube (diagonal neighbour of (3, 3, 3))
    v[10:12, 10:12, 8:10] = 1  # 8 voxels
    v[12, 0:10, 0] = 2  # 10 voxels
    v[14, 0:5, 6] = 2  # 5 voxels
    return v


def test_largest_component_full_connectivity_joins_corner_voxel() -> None:
    v = _volume()
    out = largest_component(v, labels=[1])
    assert out.dtype == v.dtype and out.shape == v.shape
    assert np.count_nonzero(out == 1) == 28  # 27 + the corner voxel
    assert out[4, 4, 4] == 1 and not out[10:12, 10:12, 8:10].any()
    np.testing.assert_array_equal(out == 2, v == 2)  # label 2 untouched
    assert np.count_nonzero(v == 1) == 36  # input not modified


def test_largest_component_face_connectivity_drops_corner_voxel() -> None:
    out = largest_component(_volume(), labels=None, connectivity=1)
    assert np.count_nonzero(out == 1) == 27
    assert out[4, 4, 4] == 0
    assert np.count_nonzero(out == 2) == 10 and out[14].sum() == 0


def test_largest_component_tie_keeps_first_in_raster_order() -> None:
    v = np.zeros((6, 10), dtype=np.int64)
    v[0:2, 6:8] = 3  # first in C order (row 0)
    v[3:5, 1:3] = 3
    out = largest_component(v)
    assert out[0:2, 6:8].tolist() == [[3, 3], [3, 3]]
    assert not out[3:5, 1:3].any()


def test_largest_component_tensor_in_tensor_out() -> None:
    t = torch.from_numpy(_volume().astype(np.int64))
    out = largest_component(t, connectivity=1)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert int((out == 1).sum()) == 27


def test_remove_small_anisotropic_spacing_threshold_is_inclusive() -> None:
    v = _volume()
    spacing = (1.0, 1.0, 2.5)  # 2.5 mm^3 per voxel: 8 voxels = 20 mm^3, 5 voxels = 12.5, 10 voxels = 25
    kept = remove_small(v, 20.0, spacing, connectivity=1)
    # corner voxel alone (2.5 mm^3) and the 5-voxel bar (12.5) go; the 8-voxel cube (exactly 20) stays
    assert kept[4, 4, 4] == 0 and kept[14].sum() == 0
    assert np.count_nonzero(kept == 1) == 27 + 8 and np.count_nonzero(kept == 2) == 10
    dropped = remove_small(v, 20.5, spacing, connectivity=1)
    assert np.count_nonzero(dropped == 1) == 27


def test_remove_small_per_label_thresholds() -> None:
    v = _volume()
    out = remove_small(v, {2: 30.0}, (1.0, 1.0, 2.5))
    assert np.count_nonzero(out == 2) == 0  # 25 and 12.5 mm^3 both below 30
    np.testing.assert_array_equal(out == 1, v == 1)  # label 1 not listed: untouched


def test_remove_small_spacing_changes_the_decision() -> None:
    v = np.zeros((8, 8), dtype=np.uint8)
    v[0:2, 0:2] = 1  # 4 pixels
    assert remove_small(v, 3.0, (0.5, 0.5)).sum() == 0  # 4 * 0.25 = 1 mm^2 < 3
    assert remove_small(v, 3.0, (1.0, 1.0)).sum() == 4  # 4 mm^2 >= 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connectivity": 4}, "connectivity must be in 1..3"),
        ({"labels": [0]}, "non-zero integer label values"),
        ({"labels": "1"}, "sequence of non-zero integer"),
    ],
)
def test_largest_component_argument_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        largest_component(_volume(), **kwargs)


def test_remove_small_argument_errors() -> None:
    with pytest.raises(ValueError, match="spacing must be a number or one value per axis"):
        remove_small(_volume(), 1.0, (1.0, 1.0))
    with pytest.raises(ValueError, match="min_volume_mm3 must be a finite number"):
        remove_small(_volume(), -1.0, 1.0)
    with pytest.raises(ValueError, match="label must hold integers"):
        remove_small(np.zeros((4, 4), dtype=np.float32), 1.0, 1.0)


def test_postprocess_on_metatensor_uses_affine_spacing_and_keeps_meta() -> None:
    affine = torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.from_numpy(_volume()[None].astype(np.int64)), affine=affine)
    post = Postprocess.from_config({"largest_component": [1], "min_volume_mm3": 20.0, "connectivity": 1})
    out = post(label)
    assert isinstance(out, MetaTensor) and out.shape == label.shape and out.dtype == torch.int64
    torch.testing.assert_close(out.affine, affine)
    arr = out.numpy()[0]
    assert np.count_nonzero(arr == 1) == 27  # removal drops the corner voxel, LCC then drops the 8-voxel cube
    assert np.count_nonzero(arr == 2) == 10  # 5-voxel bar (12.5 mm^3) removed, label 2 not in LCC list


def test_postprocess_plain_array_needs_spacing() -> None:
    post = Postprocess(min_volume_mm3=20.0)
    with pytest.raises(ValueError, match="needs the voxel spacing"):
        post(_volume()[None])
    out = post(_volume()[None], spacing=(1.0, 1.0, 2.5))
    assert np.count_nonzero(out[0] == 2) == 10


def test_postprocess_identity_and_shape_check() -> None:
    post = Postprocess.from_config({})
    assert post.is_identity
    v = _volume()[None]
    assert post(v) is v
    with pytest.raises(ValueError, match=r"channel-first label map \(1, \*spatial\)"):
        Postprocess(largest_component=True)(_volume())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"largest_componnet": True}, r"postprocess: unknown key\(s\) \['largest_componnet'\]; valid keys"),
        ({"largest_component": "yes"}, r"postprocess\.largest_component must be a sequence"),
        ({"largest_component": [1, 0]}, r"postprocess\.largest_component must hold non-zero integer"),
        ({"min_volume_mm3": "10"}, r"postprocess\.min_volume_mm3 must be a number"),
        (
            {"min_volume_mm3": {"liver": 10}},
            r"postprocess\.min_volume_mm3: keys must be integer label values",
        ),
        ({"min_volume_mm3": {1: -1}}, r"postprocess\.min_volume_mm3\[1\] must be a finite number"),
        ({"connectivity": 0}, r"postprocess\.connectivity must be 1, 2, 3"),
        ([1, 2], r"postprocess must be a mapping"),
    ],
)
def test_postprocess_config_errors_name_the_key(config: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Postprocess.from_config(config)  # type: ignore[arg-type]


def test_postprocessd_wrapper() -> None:
    data = {"pred": torch.from_numpy(_volume()[None].astype(np.int64)), "other": 1}
    out = Postprocessd("pred", largest_component=True, connectivity=1)(data)
    assert int((out["pred"] == 1).sum()) == 27 and out["other"] == 1
