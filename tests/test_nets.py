"""Contract suite run over every registered network, plus UNet / UNet++ specific behaviour (wiring, pruning)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from medseg.errors import ConfigError
from medseg.nets import UNet, UNetPlusPlus, available_networks, build_network, network_config

NETWORKS = available_networks()
SMALL = (4, 8, 16)  # depth 2: inputs padded to multiples of 4


def _net(name: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("features", SMALL)
    return build_network(
        name, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
    )


def test_registry_lists_both_networks():
    assert NETWORKS == ["unet", "unetpp"]


# ----------------------------------------------------------------------------------------------- shapes, any size
SHAPE_CASES = [
    (2, (37, 30), 1, 1, 2),
    (2, (37, 30), 2, 3, 4),
    (2, (5, 1), 2, 1, 2),  # smaller than one bottleneck voxel
    (3, (33, 34, 35), 1, 1, 2),
    (3, (33, 34, 35), 2, 3, 4),
    (3, (16, 8, 12), 1, 2, 3),  # already a multiple of 4: no padding
]


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(("spatial_dims", "size", "batch", "cin", "cout"), SHAPE_CASES)
def test_output_shape_matches_input(name, spatial_dims, size, batch, cin, cout):
    net = _net(name, spatial_dims, cin, cout)
    x = torch.randn(batch, cin, *size)
    for training in (True, False):
        net.train(training)
        y = net(x)
        assert isinstance(y, torch.Tensor)
        assert y.shape == (batch, cout, *size)
        assert y.dtype == torch.float32
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NETWORKS)
def test_deeper_network_odd_size(name):
    net = _net(name, 3, features=(2, 4, 8, 16)).eval()  # multiple of 8
    y = net(torch.randn(1, 1, 9, 17, 7))
    assert y.shape == (1, 2, 9, 17, 7)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_padding_is_zeros_at_high_end_and_cropped_back(name, spatial_dims):
    """An odd-sized input gives the top-left corner of the output for the explicitly zero-padded input."""
    net = _net(name, spatial_dims).eval()
    size = (13, 6, 7)[:spatial_dims]
    x = torch.randn(1, 1, *size)
    padded_size = [math.ceil(s / 4) * 4 for s in size]
    pads = []
    for s, p in zip(reversed(size), reversed(padded_size), strict=True):
        pads += [0, p - s]
    with torch.no_grad():
        y = net(x)
        y_padded = net(F.pad(x, pads))
    assert y_padded.shape[2:] == tuple(padded_size)
    corner = y_padded[(..., *[slice(0, s) for s in size])]
    torch.testing.assert_close(y, corner, rtol=0, atol=1e-6)
    # the crop is not trivially equal to another region of the padded output
    shifted = y_padded[(..., *[slice(p - s, p) for s, p in zip(size, padded_size, strict=True)])]
    assert not torch.allclose(y, shifted, atol=1e-3)


# --------------------------------------------------------------------------------------------- training behaviour
# every option set in 2D; in 3D the default and one set combining the other layer choices
OPTION_SETS = [
    (2, {}),
    (2, {"residual": True, "downsample": "strided"}),
    (2, {"upsample": "linear", "norm": "batch", "activation": "prelu", "dropout": 0.2}),
    (2, {"norm": "none", "activation": "gelu"}),
    (2, {"deep_supervision": True, "residual": True}),
    (3, {}),
    (
        3,
        {
            "deep_supervision": True,
            "residual": True,
            "downsample": "strided",
            "upsample": "linear",
            "dropout": 0.1,
        },
    ),
]


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(
    ("spatial_dims", "options"),
    OPTION_SETS,
    ids=[f"{d}d-" + ("-".join(f"{k}={v}" for k, v in o.items()) or "default") for d, o in OPTION_SETS],
)
def test_backward_gives_finite_grads_on_all_params(name, spatial_dims, options):
    net = _net(name, spatial_dims, 2, 3, **options).train()
    size = (19, 12) if spatial_dims == 2 else (11, 9, 6)
    out = net(torch.randn(2, 2, *size))
    outputs = out if isinstance(out, list) else [out]
    loss = sum(o.square().mean() for o in outputs)
    loss.backward()
    names = [n for n, _ in net.named_parameters()]
    assert names, "network has no parameters"
    for param_name, param in net.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
    # gradients reach the first convolution, not only the head
    first = next(p for n, p in net.named_parameters() if n.startswith("encoder.0"))
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NETWORKS)
def test_eval_is_deterministic_and_train_dropout_is_not(name):
    net = _net(name, 3, dropout=0.3, norm="batch")
    x = torch.randn(2, 1, 10, 9, 8)
    net.train()
    net(x)  # update BN running stats once
    with torch.no_grad():
        a, b = net(x), net(x)
        assert not torch.equal(a, b), "dropout should make training-mode calls differ"
        net.eval()
        c, d = net(x), net(x)
    assert torch.equal(c, d)


@pytest.mark.parametrize("name", NETWORKS)
def test_instance_norm_batch_items_are_independent(name):
    """With instance norm (default) in eval, each batch item's output does not depend on the others."""
    net = _net(name, 3).eval()
    x = torch.randn(2, 1, 9, 8, 7)
    with torch.no_grad():
        both = net(x)
        single = net(x[1:])
    torch.testing.assert_close(both[1:], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_list_in_training_tensor_in_eval(name, spatial_dims):
    net = _net(name, spatial_dims, 1, 3, features=(2, 4, 8, 16), deep_supervision=True)
    size = (21, 10) if spatial_dims == 2 else (9, 10, 11)
    x = torch.randn(2, 1, *size)
    net.train()
    outs = net(x)
    assert isinstance(outs, list)
    assert len(outs) == 3
    assert outs[0].shape == (2, 3, *size)  # main output first, full resolution
    for o in outs:
        assert o.shape[:2] == (2, 3)
    net.eval()
    y = net(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 3, *size)


@pytest.mark.parametrize("name", NETWORKS)
def test_config_rebuilds_same_network(name):
    net = _net(name, 2, 3, 4, features=(4, 8), upsample="linear", residual=True, deep_supervision=True)
    cfg = network_config(net)
    assert cfg["name"] == name
    json.dumps(cfg)  # serialisable as-is into a checkpoint
    rebuilt = build_network(**json.loads(json.dumps(cfg)))
    assert type(rebuilt) is type(net)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 3, 11, 7)
    net.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)
    # the returned dict is a copy
    cfg["features"].append(99)
    assert net.config["features"] == [4, 8]


# ---------------------------------------------------------------------------------------------------- validation
BAD_OPTIONS = [
    ({"norm": "group"}, ["norm='group'", "'batch', 'instance', 'none'"]),
    ({"activation": "swish"}, ["activation='swish'", "'relu'", "'leakyrelu'", "'prelu'", "'gelu'"]),
    ({"upsample": "nearest"}, ["upsample='nearest'", "'deconv', 'linear'"]),
    ({"downsample": "avgpool"}, ["downsample='avgpool'", "'maxpool', 'strided'"]),
    ({"spatial_dims": 4}, ["spatial_dims=4", "2, 3"]),
    ({"spatial_dims": 2.0}, ["spatial_dims must be a positive integer"]),
    ({"features": (8,)}, ["features needs at least 2 levels"]),
    ({"features": (8, 0)}, ["features[1] must be a positive integer"]),
    ({"features": 16}, ["features must be a sequence"]),
    ({"dropout": 1.0}, ["dropout must be in [0, 1)"]),
    ({"dropout": "0.1"}, ["dropout must be a number"]),
    ({"in_channels": 0}, ["in_channels must be a positive integer"]),
    ({"out_channels": 1.5}, ["out_channels must be a positive integer"]),
    ({"residual": "yes"}, ["residual must be true or false"]),
    ({"deep_supervision": 1}, ["deep_supervision must be true or false"]),
]


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(
    ("bad", "fragments"), BAD_OPTIONS, ids=lambda v: str(v) if isinstance(v, dict) else ""
)
def test_invalid_option_raises_value_error_naming_it(name, bad, fragments):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": SMALL, **bad}
    with pytest.raises(ValueError) as info:
        build_network(name, **kwargs)
    assert isinstance(info.value, ConfigError)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("name", NETWORKS)
def test_wrong_input_raises_clear_error(name):
    net = _net(name, 3, 2, 2)
    with pytest.raises(ValueError, match=r"expected 2 input channels, got 1"):
        net(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"3D network, got shape \(1, 2, 8, 8\)"):
        net(torch.randn(1, 2, 8, 8))


# ------------------------------------------------------------------------------------------------ UNet specific
def test_unet_encoder_halves_size_and_follows_widths():
    net = UNet(3, 1, 2, features=(4, 8, 16, 32)).eval()
    seen = {}
    for i, stage in enumerate(net.encoder):
        stage.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, tuple(out.shape)))
    net(torch.randn(1, 1, 17, 16, 9))  # padded to 24, 16, 16
    assert seen == {
        0: (1, 4, 24, 16, 16),
        1: (1, 8, 12, 8, 8),
        2: (1, 16, 6, 4, 4),
        3: (1, 32, 3, 2, 2),
    }


def test_unet_deep_supervision_levels_are_ceil_sizes():
    net = UNet(3, 1, 2, features=(2, 4, 8, 16), deep_supervision=True).train()
    outs = net(torch.randn(1, 1, 17, 16, 9))
    assert [tuple(o.shape[2:]) for o in outs] == [(17, 16, 9), (9, 8, 5), (5, 4, 3)]


def test_unet_without_deep_supervision_has_no_aux_heads():
    assert len(UNet(2, 1, 2, features=SMALL).aux_heads) == 0
    assert len(UNet(2, 1, 2, features=(4, 8, 16, 32), deep_supervision=True).aux_heads) == 2


def test_unet_deep_supervision_aux_output_is_its_head_on_the_decoder_level():
    net = UNet(2, 1, 2, features=SMALL, deep_supervision=True).train()
    captured = {}
    net.decoder[0].register_forward_hook(lambda m, inp, out: captured.__setitem__("level1", out))
    x = torch.randn(1, 1, 12, 8)
    outs = net(x)
    torch.testing.assert_close(outs[1], net.aux_heads[0](captured["level1"]))


def test_unet_parameter_count_is_the_classic_unet():
    """Exact count for features (4, 8), 2D, instance norm: checks widths, bias rules and the deconv."""
    net = UNet(2, 1, 3, features=(4, 8))
    enc0 = (1 * 4 * 9) + 2 * 4 + (4 * 4 * 9) + 2 * 4  # convs without bias, norm weight+bias
    enc1 = (4 * 8 * 9) + 2 * 8 + (8 * 8 * 9) + 2 * 8
    up = 8 * 4 * 4 + 4  # 2x2 transposed conv 8 -> 4 with bias
    dec = (8 * 4 * 9) + 2 * 4 + (4 * 4 * 9) + 2 * 4  # concat of 4 + 4 channels
    head = 4 * 3 + 3
    assert sum(p.numel() for p in net.parameters()) == enc0 + enc1 + up + dec + head


# ---------------------------------------------------------------------------------------------- UNet++ specific
def test_unetpp_matches_the_nested_definition():
    """Depth 2 by hand: X(i,j) = H([X(i,0..j-1), Up(X(i+1,j-1))]), output = head(X(0,2))."""
    net = UNetPlusPlus(2, 1, 2, features=SMALL).eval()
    x = torch.randn(1, 1, 12, 8)
    with torch.no_grad():
        x00 = net.encoder[0](x)
        x10 = net.encoder[1](x00)
        x20 = net.encoder[2](x10)
        x01 = net.nodes[0][0].block(torch.cat([x00, net.nodes[0][0].up(x10)], 1))
        x11 = net.nodes[1][0].block(torch.cat([x10, net.nodes[1][0].up(x20)], 1))
        x02 = net.nodes[0][1].block(torch.cat([x00, x01, net.nodes[0][1].up(x11)], 1))
        expected = net.heads[0](x02)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    assert [len(row) for row in net.nodes] == [2, 1]


def test_unetpp_deep_supervision_order_is_deepest_first():
    net = UNetPlusPlus(2, 1, 2, features=(2, 4, 8, 16), deep_supervision=True).train()
    x = torch.randn(1, 1, 16, 16)
    captured = {}
    top_row = net._top_row

    def spy(inp, depth):
        captured["top"] = top_row(inp, depth)
        return captured["top"]

    net._top_row = spy
    outs = net(x)
    assert len(outs) == 3
    for k, out in enumerate(outs):  # outs[k] = head(X(0, depth - k))
        j = 3 - k
        torch.testing.assert_close(out, net.heads[j - 1](captured["top"][j - 1]))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_unetpp_pruned_eval_equals_head_of_full_network(level):
    net = UNetPlusPlus(3, 1, 2, features=(2, 4, 8, 16), deep_supervision=True)  # instance norm, no dropout
    x = torch.randn(2, 1, 13, 9, 10)
    with torch.no_grad():
        full = net.train()(x)  # [X(0,3), X(0,2), X(0,1)] heads; instance norm: same in train and eval
        net.eval()
        net.prune_depth = level
        pruned = net(x)
    assert pruned.shape == (2, 2, 13, 9, 10)
    torch.testing.assert_close(pruned, full[3 - level], rtol=1e-5, atol=1e-5)
    if level < 3:
        assert not torch.allclose(pruned, full[0], atol=1e-4)


@pytest.mark.parametrize("level", [1, 2])
def test_unetpp_pruning_skips_deeper_nodes(level):
    net = UNetPlusPlus(3, 1, 2, features=(2, 4, 8, 16), deep_supervision=True, prune_depth=level).eval()
    called: set[str] = set()
    for i, stage in enumerate(net.encoder):
        stage.register_forward_hook(lambda *a, key=f"X({i},0)": called.add(key))
    for i, row in enumerate(net.nodes):
        for j, node in enumerate(row, start=1):
            node.register_forward_hook(lambda *a, key=f"X({i},{j})": called.add(key))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        net(x)
    expected = {f"X({i},{j})" for i in range(4) for j in range(4) if i + j <= level}
    assert called == expected

    def flops(model):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        return counter.get_total_flops()

    pruned_flops = flops(net)
    net.prune_depth = None
    assert pruned_flops < 0.8 * flops(net)


def test_unetpp_pruning_applies_in_eval_only():
    net = UNetPlusPlus(2, 1, 2, features=SMALL, deep_supervision=True, prune_depth=1).train()
    assert len(net(torch.randn(1, 1, 8, 8))) == 2
    assert net.config["prune_depth"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"deep_supervision": True, "prune_depth": 0},
            "prune_depth must be None or an integer in 1..2, got 0",
        ),
        ({"deep_supervision": True, "prune_depth": 3}, "in 1..2, got 3"),
        ({"deep_supervision": True, "prune_depth": True}, "got True"),
        ({"prune_depth": 1}, "prune_depth=1 needs deep_supervision=True"),
    ],
)
def test_unetpp_invalid_prune_depth(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        UNetPlusPlus(2, 1, 2, features=SMALL, **kwargs)
    net = UNetPlusPlus(2, 1, 2, features=SMALL, deep_supervision=kwargs.get("deep_supervision", False))
    with pytest.raises(ValueError, match="prune_depth"):
        net.prune_depth = kwargs["prune_depth"]
    net.prune_depth = 2  # the full depth is always allowed
    assert net.prune_depth == 2


def test_unetpp_without_deep_supervision_has_one_head():
    assert len(UNetPlusPlus(2, 1, 2, features=SMALL).heads) == 1
    assert len(UNetPlusPlus(2, 1, 2, features=SMALL, deep_supervision=True).heads) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NETWORKS)
def test_runs_on_cuda(name):
    net = _net(name, 3).cuda().eval()
    y = net(torch.randn(1, 1, 9, 10, 11, device="cuda"))
    assert y.device.type == "cuda"
    assert y.shape == (1, 2, 9, 10, 11)
