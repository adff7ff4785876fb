"""Layer factory, blocks, padding helpers and the network registry."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError
from medseg.nets import UNet, UNetPlusPlus, available_networks, build_network, network_config
from medseg.nets.blocks import ConvNormAct, EncoderStage, ResidualBlock, Upsample
from medseg.nets.family import UNetFamily
from medseg.nets.instance_norm import InstanceNorm
from medseg.nets.layers import ACTIVATIONS, NORMS, LayerFactory
from medseg.nets.shapes import crop_padding, pad_to_multiple


# ---------------------------------------------------------------------------------------------- layer factory
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_factory_makes_layers_of_the_right_dimension(spatial_dims):
    f = LayerFactory(spatial_dims)
    conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
    assert type(f.conv(2, 4)) is conv_cls
    assert type(f.max_pool()) is {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
    assert type(f.conv_transpose(4, 2)) is {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
    x = torch.randn(1, 2, *([6] * spatial_dims))
    assert f.conv(2, 4)(x).shape == (1, 4, *([6] * spatial_dims))
    assert f.conv(2, 4, stride=2)(x).shape == (1, 4, *([3] * spatial_dims))
    assert f.max_pool()(x).shape == (1, 2, *([3] * spatial_dims))
    assert f.conv_transpose(2, 3)(x).shape == (1, 3, *([12] * spatial_dims))
    assert f.linear_mode == {2: "bilinear", 3: "trilinear"}[spatial_dims]


def test_conv_has_bias_only_without_norm():
    assert LayerFactory(3, norm="instance").conv(2, 4).bias is None
    assert LayerFactory(3, norm="batch").conv(2, 4).bias is None
    assert LayerFactory(3, norm="none").conv(2, 4).bias is not None
    assert LayerFactory(3, norm="none").norm_layer(4) is None
    assert isinstance(LayerFactory(3, norm="batch").norm_layer(4), nn.BatchNorm3d)
    assert isinstance(LayerFactory(2, norm="batch").norm_layer(4), nn.BatchNorm2d)


def test_tables_list_the_documented_names():
    assert set(NORMS) == {"batch", "instance", "none"}
    assert {"relu", "leakyrelu", "prelu", "gelu"} <= set(ACTIVATIONS)
    for name in ACTIVATIONS:
        act = LayerFactory(2, activation=name).act_layer(3)
        assert isinstance(act, nn.Module), name
        y = act(torch.tensor([[-1.0, 0.0, 2.0]]).reshape(1, 3, 1))
        assert y[0, 2, 0] > 1.5, name  # all are ~identity for positive inputs


@pytest.mark.parametrize("activation", [name for name, (_, kw) in ACTIVATIONS.items() if kw.get("inplace")])
def test_in_place_activations_give_the_same_gradients(activation):
    torch.manual_seed(0)
    block = ConvNormAct(LayerFactory(2, activation=activation), 2, 3)
    reference = copy.deepcopy(block)
    reference[2].inplace = False
    x = torch.randn(2, 2, 6, 5, requires_grad=True)
    grads = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    expected = torch.autograd.grad(reference(x).square().sum(), [x, *reference.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_prelu_has_one_slope_per_channel():
    block = ConvNormAct(LayerFactory(2, activation="prelu"), 2, 5)
    prelu = [m for m in block if isinstance(m, nn.PReLU)]
    assert len(prelu) == 1
    assert prelu[0].weight.shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 1}, "spatial_dims=1 is not valid; choose one of: 2, 3"),
        (
            {"spatial_dims": 3, "norm": "layer"},
            "norm='layer' is not valid; choose one of: 'batch', 'instance', 'none'",
        ),
        ({"spatial_dims": 3, "activation": "tanh"}, "activation='tanh' is not valid; choose one of: 'relu'"),
        ({"spatial_dims": 3, "dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
    ],
)
def test_factory_validation_messages(kwargs, message):
    with pytest.raises(ConfigError) as info:
        LayerFactory(**kwargs)
    assert message in str(info.value)


def test_dropout_layer_only_when_positive():
    assert LayerFactory(2).dropout_layer() is None
    layer = LayerFactory(2, dropout=0.25).dropout_layer()
    assert isinstance(layer, nn.Dropout)
    assert layer.p == 0.25
    block = ConvNormAct(LayerFactory(2, dropout=0.25), 1, 2)
    assert [type(m).__name__ for m in block] == ["Conv2d", "InstanceNorm", "LeakyReLU", "Dropout"]


# --------------------------------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("training", [True, False])
def test_instance_norm_equals_torch_instance_norm(training):
    torch.manual_seed(1)
    ours = InstanceNorm(5)
    ref = nn.InstanceNorm3d(5, affine=True)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(5))
        ours.bias.copy_(torch.randn(5))
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    ours.train(training)
    ref.train(training)
    x = torch.randn(2, 5, 6, 7, 3) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_residual_block_shortcut():
    f = LayerFactory(2)
    same = ResidualBlock(f, 4, 4)
    assert isinstance(same.shortcut, nn.Identity)
    down = ResidualBlock(f, 4, 8, stride=2)
    assert isinstance(down.shortcut[0], nn.Conv2d)
    assert down.shortcut[0].stride == (2, 2)
    assert down(torch.randn(1, 4, 10, 6)).shape == (1, 8, 5, 3)
    # with the residual branch zeroed the block is act(shortcut(x))
    with torch.no_grad():
        for p in same.conv2.parameters():
            p.zero_()
        x = torch.randn(1, 4, 5, 5)
        torch.testing.assert_close(same(x), F.leaky_relu(x, 0.01))


@pytest.mark.parametrize("downsample", ["maxpool", "strided"])
def test_encoder_stage_halves_size(downsample):
    stage = EncoderStage(LayerFactory(3), 2, 6, downsample=downsample, residual=False)
    assert stage(torch.randn(1, 2, 8, 6, 4)).shape == (1, 6, 4, 3, 2)
    assert isinstance(stage[0], nn.MaxPool3d) == (downsample == "maxpool")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_linear_upsample_equals_interpolate_then_conv(spatial_dims):
    """The 1x1 conv is applied before the interpolation; that is exact because they commute."""
    torch.manual_seed(0)
    up = Upsample(LayerFactory(spatial_dims), 3, 2, "linear")
    x = torch.randn(2, 3, *([5] * spatial_dims))
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    expected = up.conv(F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False))
    out = up(x)
    assert out.shape == (2, 2, *([10] * spatial_dims))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------------- padding
def test_pad_to_multiple_returns_input_itself_when_divisible():
    x = torch.randn(1, 1, 8, 16, 4)
    padded, pads = pad_to_multiple(x, 4)
    assert padded is x
    assert pads == [0, 0, 0, 0, 0, 0]
    assert crop_padding(padded, pads) is padded


def test_pad_to_multiple_pads_high_end_with_zeros():
    x = torch.ones(1, 1, 5, 3)
    padded, pads = pad_to_multiple(x, 4)
    assert pads == [0, 1, 0, 3]  # last axis first, as F.pad wants
    assert padded.shape == (1, 1, 8, 4)
    assert padded[0, 0, :5, :3].eq(1).all()
    assert padded.sum() == 15
    torch.testing.assert_close(crop_padding(padded, pads), x)


def test_crop_padding_at_lower_resolution_keeps_ceil_size():
    x = torch.zeros(1, 1, 17, 9)
    padded, pads = pad_to_multiple(x, 8)  # 24 x 16
    assert padded.shape[2:] == (24, 16)
    half = torch.zeros(1, 1, 12, 8)
    quarter = torch.zeros(1, 1, 6, 4)
    assert crop_padding(half, pads, scale=2).shape[2:] == (9, 5)
    assert crop_padding(quarter, pads, scale=4).shape[2:] == (5, 3)


# -------------------------------------------------------------------------------------------------- registry
def test_available_networks_are_canonical_names():
    assert available_networks() == ["unet", "unetpp"]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("unet", UNet),
        ("UNet", UNet),
        ("unetpp", UNetPlusPlus),
        ("unetplusplus", UNetPlusPlus),
        ("UNet++", UNetPlusPlus),
    ],
)
def test_build_network_by_name_and_alias(name, cls):
    net = build_network(name, spatial_dims=2, in_channels=1, out_channels=2, features=(2, 4))
    assert type(net) is cls
    assert network_config(net)["name"] == cls.registry_name


def test_unknown_network_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_network("segformer", spatial_dims=3, in_channels=1, out_channels=2)
    message = str(info.value)
    assert "unknown network 'segformer'" in message
    for name in ("unet", "unetpp", "unetplusplus"):
        assert name in message


def test_unknown_and_missing_options_are_named():
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) for network 'unet': act, widths; accepted: "
        r"spatial_dims, in_channels, out_channels, features, norm, activation",
    ):
        build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, act="relu", widths=(2, 4))
    with pytest.raises(
        ValueError, match=r"missing option\(s\) for network 'unetpp': in_channels, out_channels"
    ):
        build_network("unetpp", spatial_dims=3)
    with pytest.raises(ValueError, match="network name must be a string"):
        build_network(None, spatial_dims=3)  # type: ignore[arg-type]


def test_unetpp_takes_the_family_options_and_prune_depth():
    """UNet++ spells out the options of the UNet family (explicit, type-checked signatures): they must stay the
    family's, in its order and with its defaults, plus ``prune_depth``."""
    family = dict(inspect.signature(UNetFamily.__init__).parameters)
    params = dict(inspect.signature(UNetPlusPlus).parameters)
    assert list(params) == [p for p in family if p != "self"] + ["prune_depth"]
    assert all(params[name].default == family[name].default for name in family if name != "self")
    assert params["prune_depth"].default is None
    with pytest.raises(ValueError, match=r"accepted: spatial_dims, .*, residual, deep_supervision, prune_depth$"):
        build_network("unetpp", spatial_dims=2, in_channels=1, out_channels=2, prune=1)
    net = UNetPlusPlus(2, 1, 3, (4, 8), norm="batch", deep_supervision=True, prune_depth=1)
    assert (net.out_channels, net.config["norm"], net.prune_depth) == (3, "batch", 1)


def test_network_config_rejects_foreign_modules():
    with pytest.raises(ValueError, match="Conv2d is not a registered medseg network"):
        network_config(nn.Conv2d(1, 1, 1))
