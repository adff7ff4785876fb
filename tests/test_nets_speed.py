"""Channels-last execution of the 3D networks: the accurate instance norm and the ``memory_format`` setting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import ConfigError
from medseg.nets import UNet, UNetPlusPlus, build_network
from medseg.nets.instance_norm import InstanceNorm, instance_norm

CL = torch.channels_last_3d


def _features_with_large_mean(dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.randn(2, 8, 12, 10, 9, dtype=dtype) * 2 + 50).contiguous(memory_format=CL)


def test_instance_norm_channels_last_matches_group_norm_values_and_gradients():
    x = _features_with_large_mean(torch.float64).requires_grad_()
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 8, 12, 10, 9, dtype=torch.float64)
    ours = instance_norm(x, w, b)
    assert ours.is_contiguous(memory_format=CL)
    grads = torch.autograd.grad(ours, (x, w, b), dy)
    x_ref = x.detach().contiguous().requires_grad_()
    ref = F.group_norm(x_ref, 8, w, b, 1e-5)
    ref_grads = torch.autograd.grad(ref, (x_ref, w, b), dy)
    assert torch.allclose(ours, ref, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-9), (got - want).abs().max()
    assert torch.autograd.gradcheck(
        instance_norm, (x[:1, :3, :4, :3, :3].detach().requires_grad_(), w[:3], b[:3])
    )


def test_instance_norm_module_is_accurate_in_float32_channels_last():
    x = _features_with_large_mean(torch.float32)
    norm = InstanceNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
        exact = F.group_norm(x.double().contiguous(), 8, norm.weight.double(), norm.bias.double(), 1e-5)
        got = norm(x)
    assert got.is_contiguous(memory_format=CL)
    # torch's own channels-last group norm is off by ~1e-2 on such features; ours is at float rounding
    assert (got.double() - exact).abs().max() < 2e-5


@pytest.mark.parametrize("cls", [UNet, UNetPlusPlus])
def test_channels_last_forward_and_gradients_match_contiguous(cls):
    torch.manual_seed(0)
    net = cls(3, 2, 3, features=(4, 8, 16), deep_supervision=True)
    x = torch.randn(2, 2, 20, 17, 16) * 3 + 10  # padded to 20x20x16 inside
    grads = {}
    outs = {}
    for fmt in ("contiguous", "channels_last"):
        net.memory_format = fmt
        net.zero_grad()
        out = net(x)
        assert all(o.is_contiguous() for o in out)
        sum(o.square().mean() for o in out).backward()
        outs[fmt] = [o.detach() for o in out]
        grads[fmt] = {k: p.grad.clone() for k, p in net.named_parameters()}
    for a, b in zip(outs["contiguous"], outs["channels_last"], strict=True):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    for key, g in grads["contiguous"].items():
        assert torch.allclose(g, grads["channels_last"][key], rtol=1e-3, atol=1e-5), key


def test_memory_format_is_a_runtime_setting_not_architecture():
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, features=[4, 8])
    x = torch.randn(1, 1, 8, 8, 8)
    assert net.memory_format == "auto"
    assert net.channels_last_for(x)  # CPU, 3D
    assert "memory_format" not in net.config
    net.memory_format = "contiguous"
    assert not net.channels_last_for(x)
    with pytest.raises(ConfigError, match="memory_format"):
        net.memory_format = "nhwc"
    net2d = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, features=[4, 8])
    net2d.memory_format = "channels_last"
    assert not net2d.channels_last_for(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("cls", [UNet, UNetPlusPlus])
def test_channels_last_reaches_every_full_resolution_layer_from_a_one_channel_input(cls):
    # a 1-channel tensor has the same layout in both formats, so the first conv's output is put channels-last
    net = cls(3, 1, 2, features=(4, 8))
    net.memory_format = "channels_last"
    layouts = []
    for module in net.modules():
        if isinstance(module, InstanceNorm):
            module.register_forward_pre_hook(
                lambda mod, inp: layouts.append(
                    not inp[0].is_contiguous() and inp[0].is_contiguous(memory_format=CL)
                )
            )
    out = net(torch.randn(2, 1, 8, 8, 8))
    assert out.is_contiguous()
    assert layouts and all(layouts), layouts


def test_auto_layout_follows_a_measurement_that_leaves_the_rng_alone():
    from medseg.nets.family import channels_last_faster

    state = torch.get_rng_state()
    decision = channels_last_faster(4, torch.get_num_threads())
    assert torch.equal(state, torch.get_rng_state())
    assert isinstance(decision, bool)
    net = UNet(3, 1, 2, features=(4, 8))
    assert net.channels_last_for(torch.randn(1, 1, 8, 8, 8)) is decision


def test_auto_layout_decision_can_be_first_made_under_inference_mode():
    from medseg.nets.family import channels_last_faster

    channels_last_faster.cache_clear()
    net = UNet(3, 1, 2, features=(4, 8)).eval()
    with torch.inference_mode():
        out = net(torch.randn(1, 1, 8, 8, 8))
    assert out.shape == (1, 2, 8, 8, 8)
