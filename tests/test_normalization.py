"""Per-channel normalization: hand-computed values, the name table, validation errors, metadata preservation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.data.normalization import (
    NORMALIZERS,
    ChannelNormalize,
    ChannelNormalized,
    CTWindow,
    NoNormalization,
    NormalizationSpec,
    PercentileClip,
    ZScore,
    build_normalizer,
)
from medseg.errors import ConfigError

# ---------------------------------------------------------------- known values


def test_ct_window_clips_and_rescales():
    x = np.array([-1000.0, -160.0, 40.0, 140.0, 240.0, 3000.0], dtype=np.float32)
    out = CTWindow(center=40, width=400)(x)  # window [-160, 240]
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-7)
    assert out.dtype == np.float32


def test_ct_window_custom_out_range():
    x = np.array([-200.0, 0.0, 50.0, 100.0, 500.0])
    out = CTWindow(center=0, width=200, out_range=(-1, 1))(x)  # window [-100, 100]
    np.testing.assert_allclose(out, [-1.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)


def test_zscore_population_statistics():
    x = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population sd sqrt(1.25)
    sd = math.sqrt(1.25)
    expected = [-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd]
    np.testing.assert_allclose(ZScore()(x), expected, rtol=1e-6)


def test_zscore_nonzero_uses_nonzero_voxels_and_keeps_zeros():
    x = np.array([[0.0, 2.0], [4.0, 0.0]])  # non-zero: mean 3, sd 1
    np.testing.assert_allclose(ZScore(nonzero=True)(x), [[0.0, -1.0], [1.0, 0.0]], atol=1e-7)


def test_zscore_with_mask_sets_outside_to_zero():
    x = np.array([10.0, 2.0, 4.0, 100.0])
    mask = np.array([0, 1, 1, 0])
    np.testing.assert_allclose(ZScore()(x, mask=mask), [0.0, -1.0, 1.0, 0.0], atol=1e-7)


def test_zscore_constant_image_gives_zeros_not_nan():
    out = ZScore()(np.full((3, 3), 7.0))
    np.testing.assert_array_equal(out, np.zeros((3, 3), dtype=np.float32))


def test_percentile_clip_rescale_hand_computed():
    x = np.arange(11, dtype=np.float64)  # 0..10; 10th percentile = 1, 90th = 9
    out = PercentileClip(lower=10, upper=90, then="rescale")(x)
    expected = (np.clip(x, 1, 9) - 1) / 8
    np.testing.assert_allclose(out, expected, atol=1e-7)
    assert out[0] == 0.0 and out[-1] == 1.0


def test_percentile_clip_zscore_hand_computed():
    x = np.arange(11, dtype=np.float64)
    # clipped: 1,1,2,...,9,9 -> mean 5, sum of squared deviations 92 over 11 values
    clipped = np.array([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9], dtype=np.float64)
    expected = (clipped - 5.0) / math.sqrt(92 / 11)
    np.testing.assert_allclose(PercentileClip(lower=10, upper=90)(x), expected, rtol=1e-6)


def test_percentile_interpolates_like_numpy():
    x = np.array([0.0, 10.0, 20.0, 30.0])
    # 50th percentile of 4 values lies halfway between 10 and 20 -> 15; 0th -> 0; rescale maps 15..30 to 0..1
    out = PercentileClip(lower=50, upper=100, then="rescale")(x)
    np.testing.assert_allclose(out, [0.0, 0.0, 5 / 15, 1.0], atol=1e-7)
    rng = np.random.default_rng(0)
    y = rng.normal(size=1001) ** 3
    lo, hi = np.percentile(y, [0.5, 99.5])
    np.testing.assert_allclose(
        PercentileClip(then="rescale")(y), (np.clip(y, lo, hi) - lo) / (hi - lo), atol=1e-6
    )


def test_none_only_casts():
    x = np.array([1, 2, 3], dtype=np.int16)
    out = NoNormalization()(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])


def test_tensor_in_tensor_out():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = ZScore()(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.mean().abs().item() < 1e-6


def test_ct_clip_zscore_uses_fixed_dataset_statistics():
    norm = build_normalizer("ct_clip_zscore", lower=-100.0, upper=300.0, mean=50.0, std=100.0)
    x = np.array([-1000.0, -100.0, 50.0, 150.0, 300.0, 2000.0], dtype=np.float32)
    expected = np.array([-1.5, -1.5, 0.0, 1.0, 2.5, 2.5], dtype=np.float32)
    np.testing.assert_allclose(norm(x), expected, atol=1e-6)
    # the same mapping whatever else is in the image (no image statistics) and whatever the mask
    np.testing.assert_allclose(norm(x[2:4]), expected[2:4], atol=1e-6)
    np.testing.assert_allclose(norm(x, mask=np.array([1, 0, 0, 0, 0, 0])), expected, atol=1e-6)
    assert norm.pointwise
    assert build_normalizer(norm.name, **norm.params()).params() == norm.params()

# ---------------------------------------------------------------- name table and validation


def test_table_names():
    assert set(NORMALIZERS) == {"ct_window", "ct_clip_zscore", "zscore", "percentile_clip", "none"}
    assert isinstance(build_normalizer("ct_window", center=40, width=400), CTWindow)
    assert isinstance(build_normalizer("none"), NoNormalization)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_normalizer("minmax")
    msg = str(err.value)
    assert "'minmax'" in msg
    for name in NORMALIZERS:
        assert name in msg


def test_unknown_parameter_is_named():
    with pytest.raises(
        ConfigError, match=r"'zscore': unknown parameter\(s\) centre; valid parameters: nonzero, eps"
    ):
        build_normalizer("zscore", centre=3)


def test_missing_required_parameter_is_named():
    with pytest.raises(ConfigError, match=r"'ct_window': missing required parameter\(s\) width"):
        build_normalizer("ct_window", center=40)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ct_window", {"center": 40, "width": 0}, "width must be > 0"),
        ("ct_window", {"center": 40, "width": -5}, "width must be > 0"),
        ("ct_window", {"center": float("nan"), "width": 400}, "center must be a finite number"),
        ("ct_window", {"center": 40, "width": 400, "out_range": (1, 0)}, "out_range must be increasing"),
        ("ct_window", {"center": 40, "width": 400, "out_range": (0, 1, 2)}, "out_range must be two numbers"),
        ("zscore", {"eps": 0}, "eps must be > 0"),
        ("zscore", {"nonzero": "yes"}, "nonzero must be true or false"),
        ("percentile_clip", {"lower": 99, "upper": 1}, "lower < upper"),
        ("percentile_clip", {"upper": 101}, "upper <= 100"),
        ("percentile_clip", {"then": "minmax"}, r"then must be one of \['zscore', 'rescale'\]"),
        ("ct_clip_zscore", {"lower": 100, "upper": -100, "mean": 0, "std": 1}, "need lower < upper"),
        ("ct_clip_zscore", {"lower": -100, "upper": 100, "mean": 0, "std": 0}, "std and eps must be > 0"),
        ("ct_clip_zscore", {"lower": -100, "upper": 100, "mean": float("inf"), "std": 1}, "mean must be a finite"),
    ],
)
def test_bad_parameter_values(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_normalizer(name, **params)


def test_spec_round_trip_and_validation():
    spec = NormalizationSpec.from_dict({"name": "ct_window", "center": 40, "width": 400})
    assert spec.to_dict() == {"name": "ct_window", "center": 40, "width": 400}
    assert isinstance(spec.build(), CTWindow)
    with pytest.raises(
        ConfigError, match="has no 'name'; valid names: ct_clip_zscore, ct_window, none, percentile_clip, zscore"
    ):
        NormalizationSpec.from_dict({"center": 40})
    with pytest.raises(ConfigError, match="width must be > 0"):
        NormalizationSpec.from_dict({"name": "ct_window", "center": 40, "width": 0})
    with pytest.raises(ConfigError, match="must be a mapping"):
        NormalizationSpec.from_dict(["zscore"])


def test_params_rebuild_identical_normalizer():
    norm = PercentileClip(lower=1, upper=99, then="rescale", nonzero=True)
    again = build_normalizer(norm.name, **norm.params())
    x = np.random.default_rng(1).normal(size=50)
    np.testing.assert_array_equal(norm(x), again(x))


# ---------------------------------------------------------------- per-channel application


def _two_channel() -> np.ndarray:
    ct = np.array([[-1000.0, -160.0], [40.0, 240.0]])
    mr = np.array([[1.0, 2.0], [3.0, 4.0]])
    return np.stack([ct, mr]).astype(np.float32)


def test_channel_normalize_applies_channel_c_to_channel_c():
    norm = ChannelNormalize([{"name": "ct_window", "center": 40, "width": 400}, ZScore()])
    out = norm(_two_channel())
    sd = math.sqrt(1.25)
    np.testing.assert_allclose(out[0], [[0.0, 0.0], [0.5, 1.0]], atol=1e-7)
    np.testing.assert_allclose(out[1], [[-1.5 / sd, -0.5 / sd], [0.5 / sd, 1.5 / sd]], rtol=1e-6)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32


def test_channel_normalize_keeps_metatensor_meta():
    affine = torch.tensor(
        [[0.0, 0.0, 2.0, 5.0], [0.0, -1.5, 0.0, 3.0], [1.0, 0.0, 0.0, -7.0], [0, 0, 0, 1.0]]
    )
    img = MetaTensor(
        torch.as_tensor(_two_channel())[..., None], affine=affine, meta={"filename_or_obj": "case1.nii.gz"}
    )
    img.applied_operations = [{"class": "Dummy"}]
    out = ChannelNormalize([CTWindow(40, 400), ZScore()])(img)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine.to(out.affine.dtype))
    assert out.meta["filename_or_obj"] == "case1.nii.gz"
    assert out.applied_operations == [{"class": "Dummy"}]
    np.testing.assert_allclose(out[0, ..., 0].numpy(), [[0.0, 0.0], [0.5, 1.0]], atol=1e-7)
    # the input is not modified
    assert img[0, 0, 0, 0].item() == -1000.0


def test_channel_count_mismatch_names_expected_and_got():
    norm = ChannelNormalize([ZScore(), ZScore()], channel_names=["CBF", "MTT"])
    with pytest.raises(
        ValueError, match=r"expected 2 channel\(s\) \(CBF, MTT\), got 3 \(input shape \(3, 4, 4\)\)"
    ):
        norm(np.zeros((3, 4, 4), dtype=np.float32))


def test_channel_normalize_construction_errors():
    with pytest.raises(ConfigError, match="non-empty list"):
        ChannelNormalize([])
    with pytest.raises(ConfigError, match="2 channel names"):
        ChannelNormalize([ZScore()], channel_names=["a", "b"])
    with pytest.raises(ConfigError, match="unknown normalizer 'foo'"):
        ChannelNormalize([{"name": "foo"}])


def test_dict_wrapper_with_mask_key():
    img = np.array([[[10.0, 2.0], [4.0, 100.0]]], dtype=np.float32)  # (1, 2, 2)
    mask = np.array([[[0, 1], [1, 0]]], dtype=np.uint8)
    out = ChannelNormalized(keys="image", normalizers=[ZScore()], mask_key="mask")(
        {"image": img, "mask": mask}
    )
    np.testing.assert_allclose(out["image"][0], [[0.0, -1.0], [1.0, 0.0]], atol=1e-7)
    np.testing.assert_array_equal(out["mask"], mask)
    with pytest.raises(KeyError, match="mask key 'mask' not in data keys"):
        ChannelNormalized(keys="image", normalizers=[ZScore()], mask_key="mask")({"image": img})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    x = torch.arange(11.0, device="cuda")[None]
    out = ChannelNormalize([PercentileClip(10, 90, then="rescale")])(x)
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy()[0], (np.clip(np.arange(11.0), 1, 9) - 1) / 8, atol=1e-6)
