"""Export round trips (torch.export program and ONNX via onnxruntime) for every registered network."""

from __future__ import annotations

import pytest
import torch

from medseg.atomic import TEMP_PREFIX
from medseg.nets import (
    OnnxRunner,
    available_networks,
    build_network,
    export_onnx,
    export_program,
    load_program,
)
from medseg.nets.export import _check_close

NETWORKS = available_networks()


def _trained_net(name: str, **kwargs):
    """A small 3D net with batch norm whose running statistics moved away from the defaults."""
    torch.manual_seed(0)
    net = build_network(
        name, spatial_dims=3, in_channels=2, out_channels=3, features=(4, 8, 16), norm="batch", **kwargs
    )
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 2, 12, 12, 12) * 2 + 1)
    return net


# export sizes: the example's own, other odd sizes, a multiple of the padding, another batch size, 1-voxel axes
CHECK_INPUTS = [(1, 9, 10, 11), (1, 5, 7, 3), (3, 8, 8, 8), (2, 13, 6, 9), (1, 1, 6, 1), (2, 7, 1, 1)]
TINY = (1, 3, 4, 1)  # padded to 4 x 4 x 4: a single bottleneck voxel


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_torch_export_round_trip_any_size(name, tmp_path):
    net = _trained_net(name, deep_supervision=True)
    path = export_program(net, torch.randn(1, 2, 9, 10, 11), tmp_path / "net.pt2")
    assert path.is_file()
    assert net.training, "export must restore the training mode"
    loaded = load_program(path)
    net.eval()
    with torch.no_grad():
        for batch, *size in CHECK_INPUTS:
            x = torch.randn(batch, 2, *size)
            out = loaded(x)
            assert isinstance(out, torch.Tensor)  # eval mode: one tensor even with deep supervision
            assert out.shape == (batch, 3, *size)
            torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
        # known torch.export limit: inputs at most 2**depth long on every axis (one bottleneck voxel) fail a guard
        with pytest.raises(AssertionError, match="Guard failed"):
            loaded(torch.randn(TINY[0], 2, *TINY[1:]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_round_trip_any_size(name, tmp_path):
    options = {"deep_supervision": True, "prune_depth": 1} if name == "unetpp" else {"upsample": "linear"}
    net = _trained_net(name, **options)
    path = export_onnx(net, torch.randn(1, 2, 9, 10, 11), tmp_path / "net.onnx")
    assert path.is_file()
    runner = OnnxRunner(path)
    net.eval()
    with torch.no_grad():
        for batch, *size in [*CHECK_INPUTS, TINY]:
            x = torch.randn(batch, 2, *size)
            out = runner(x)
            assert out.shape == (batch, 3, *size)
            torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
            numpy_out = runner.run_numpy(x.numpy())
            torch.testing.assert_close(torch.from_numpy(numpy_out), out, rtol=0, atol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_static_export_keeps_example_shape(tmp_path):
    net = _trained_net("unet").eval()
    path = export_program(
        net, torch.randn(1, 2, 8, 8, 8), tmp_path / "static.pt2", dynamic_batch=False, dynamic_spatial=False
    )
    loaded = load_program(path)
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError, match=r"Guard failed: x.size\(\)\[2\] == 8"):
        loaded(torch.randn(1, 2, 12, 8, 8))


def test_check_close_reports_mismatch():
    ref = torch.zeros(1, 2, 3)
    _check_close(ref, ref + 5e-5, 1e-4, 0.0, "x")
    with pytest.raises(
        RuntimeError, match=r"ONNX model: max \|difference\| to eager output 0.001 exceeds 0.0001"
    ):
        _check_close(ref, ref + 1e-3, 1e-4, 0.0, "ONNX model")
    with pytest.raises(RuntimeError, match=r"output shape \(1, 2, 4\) != eager \(1, 2, 3\)"):
        _check_close(ref, torch.zeros(1, 2, 4), 1e-4, 0.0, "ONNX model")
    with pytest.raises(RuntimeError, match="nan"):
        _check_close(ref, ref * float("nan"), 1e-4, 0.0, "ONNX model")


def test_example_with_wrong_rank_is_refused(tmp_path):
    net = _trained_net("unet")
    with pytest.raises(ValueError, match=r"example must be \(B, C, \*spatial\)"):
        export_program(net, torch.randn(2, 8), tmp_path / "x.pt2")
    assert not (tmp_path / "x.pt2").exists()
