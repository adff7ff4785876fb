"""Slab-streamed sliding window: same windows and blending as MONAI, bounded buffers, ring aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from medseg.errors import ConfigError
from medseg.inference.aggregate import SlabAggregator
from medseg.inference.sliding import (
    SlidingWindow,
    SlidingWindowConfig,
    choose_slab_axis,
    ring_capacity,
    scan_starts,
)


def _random_net(dims: int, out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(
        conv(2, 4, 3, padding=1), torch.nn.Tanh(), conv(4, out_channels, 3, padding=1)
    ).eval()


@pytest.mark.parametrize(
    "size,roi,overlap",
    [(37, 16, 0.5), (16, 16, 0.5), (17, 16, 0.25), (50, 7, 0.5), (9, 1, 0.5), (100, 64, 0.75), (33, 10, 0.0)],
)
def test_scan_starts_match_monai(size, roi, overlap):
    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    expected = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
    assert scan_starts(size, roi, overlap) == expected


def test_layout_starts_sorted_along_the_slab_axis_and_complete():
    layout = SlidingWindow(SlidingWindowConfig((8, 8, 8), 0.5, 2, "gaussian"), slab_axis=1).layout(
        (20, 30, 11)
    )
    starts = layout.starts
    assert [s[1] for s in starts] == sorted(s[1] for s in starts)
    assert len(starts) == len(set(starts)) == layout.total == 4 * 7 * 2
    assert layout.hull == ((0, 20), (0, 30), (0, 11))


@pytest.mark.parametrize(
    "shape,roi,batch,axis",
    [
        ((2, 23, 17, 30), (8, 8, 8), 3, None),  # odd sizes, slab axis chosen
        ((2, 23, 17, 30), (8, 8, 8), 1, 0),
        ((2, 23, 17, 30), (16, 5, 9), 5, 1),  # windows batches spanning several layers of the slab axis
        ((2, 6, 17, 30), (8, 8, 8), 2, 0),  # smaller than the window along axis 0: padded like MONAI
        ((2, 31, 19), (8, 8), 3, None),
        ((2, 31, 19), (32, 8), 2, 1),
    ],
)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_equals_monai_sliding_window_inference(shape, roi, batch, axis, mode):
    torch.manual_seed(1)
    dims = len(shape) - 1
    net = _random_net(dims)
    x = torch.randn(2, *shape)  # a batch of two images
    with torch.no_grad():
        expected = sliding_window_inference(x, roi, batch, net, overlap=0.5, mode=mode)
        ours = SlidingWindow(SlidingWindowConfig(roi, 0.5, batch, mode), slab_axis=axis)(x, net)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.argmax(1), expected.argmax(1))


def test_slabs_tile_the_image_in_order_and_buffers_stay_one_window_deep():
    net = _random_net(3, out_channels=5)
    shape = (1 * 2, 61, 20, 23)
    x = torch.randn(*shape)
    sw = SlidingWindow(SlidingWindowConfig((8, 8, 8), 0.5, 4, "gaussian"))
    with torch.no_grad():
        slabs = list(sw.slabs(x, net))
    axis = slabs[0].axis
    assert axis == 0  # 61 / 8 is the largest volume-to-window ratio
    assert [s.start for s in slabs] == [0] + [s.stop for s in slabs[:-1]]
    assert slabs[-1].stop == 61
    assert all(s.scores.shape == (5, s.stop - s.start, 20, 23) for s in slabs)
    full = 5 * 61 * 20 * 23
    sizes = [int(np.prod(a)) for a in sw.last_allocations]
    assert len(sizes) == 2  # the score ring and the weight ring, nothing else
    ring_planes = sw.last_allocations[0][1]
    assert ring_planes == 8  # one window deep, although batches of 4 windows span two layers
    assert max(sizes) <= full * ring_planes / 61
    assert max(s.stop - s.start for s in slabs) <= ring_planes


@pytest.mark.parametrize("axis", [None, 0, 2])
def test_layout_restricted_to_a_region_keeps_the_whole_grid_values_inside_it(axis):
    net = _random_net(3)
    x = torch.randn(2, 41, 30, 23)
    sw = SlidingWindow(SlidingWindowConfig((8, 8, 8), 0.5, 3, "gaussian"), slab_axis=axis)
    region = ((20, 27), (3, 9), (15, 23))
    layout = sw.layout(x.shape[1:], region)
    whole = sw.layout(x.shape[1:])
    assert len(layout.starts) < len(whole.starts) == layout.total == whole.total
    hull = layout.hull
    assert all(h0 <= r0 < r1 <= h1 for (h0, h1), (r0, r1) in zip(hull, region, strict=True))
    with torch.no_grad():
        full = sw(x[None], net)[0]
        part = torch.cat(
            [
                s.scores.clone()
                for s in sw.slabs(x[(slice(None), *(slice(a, b) for a, b in hull))], net, layout)
            ],
            dim=1 + layout.axis,
        )
    assert part.shape[1:] == layout.hull_shape
    inner = tuple(slice(r0 - h0, r1 - h0) for (h0, _), (r0, r1) in zip(hull, region, strict=True))
    torch.testing.assert_close(
        part[(slice(None), *inner)], full[(slice(None), *(slice(a, b) for a, b in region))]
    )


def test_layout_of_a_grid_smaller_than_the_window_pads_like_monai():
    net = _random_net(2)
    x = torch.randn(1, 2, 5, 30)
    sw = SlidingWindow(SlidingWindowConfig((8, 8), 0.5, 2, "gaussian"))
    layout = sw.layout((5, 30), ((1, 4), (10, 14)))
    assert layout.before == (1, 0) and layout.padded == (8, 30) and layout.hull[0] == (0, 5)
    with torch.no_grad():
        expected = sliding_window_inference(x, (8, 8), 2, net, overlap=0.5, mode="gaussian")[0]
        part = torch.cat(
            [s.scores.clone() for s in sw.slabs(x[0][:, :, slice(*layout.hull[1])], net, layout)],
            1 + layout.axis,
        )
    torch.testing.assert_close(
        part[:, 1:4, 10 - layout.hull[1][0] : 14 - layout.hull[1][0]], expected[:, 1:4, 10:14]
    )


def test_layout_validation():
    sw = SlidingWindow(SlidingWindowConfig((8, 8), 0.5, 2, "gaussian"))
    with pytest.raises(ValueError, match="is not a non-empty box inside the grid"):
        sw.layout((20, 20), ((5, 5), (0, 20)))
    with pytest.raises(ValueError, match="a 2D window cannot slide over a grid of spatial shape"):
        sw.layout((20, 20, 20))
    with pytest.raises(ValueError, match=r"image of spatial shape \(20, 20\) for a hull of \(8, 20\)"):
        list(sw.slabs(torch.zeros(1, 20, 20), net_identity, sw.layout((20, 20), ((0, 4), (0, 20)))))


def net_identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_ring_capacity_is_one_window_whatever_the_batch():
    starts = (
        SlidingWindow(SlidingWindowConfig((8, 8), 0.5, 1, "gaussian"), slab_axis=0).layout((30, 8)).starts
    )
    assert [s[0] for s in starts] == [0, 4, 8, 12, 16, 20, 22]  # one window per layer
    assert ring_capacity(starts, (8, 8), 0) == 8
    assert ring_capacity([(0, 0), (0, 4), (3, 0), (3, 4)], (8, 8), 0) == 8
    assert ring_capacity([(0, 0), (6, 0)], (2, 8), 0) == 2  # a gap between windows: nothing to keep


@pytest.mark.parametrize("batch", [1, 3, 7, 100])
def test_batches_spanning_layers_still_use_a_one_window_ring(batch):
    net = _random_net(3)
    x = torch.randn(2, 30, 11, 9)
    sw = SlidingWindow(SlidingWindowConfig((8, 8, 8), 0.5, batch, "gaussian"), slab_axis=0)
    with torch.no_grad():
        expected = sliding_window_inference(x[None], (8, 8, 8), batch, net, overlap=0.5, mode="gaussian")
        ours = sw(x[None], net)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert sw.last_allocations[0][1] == 8


def test_choose_slab_axis_prefers_the_longest_axis_relative_to_the_window():
    assert choose_slab_axis((100, 200, 50), (64, 64, 64)) == 1
    assert choose_slab_axis((30, 200, 200), (1, 96, 96)) == 0


def test_aggregator_rejects_out_of_order_and_oversized_windows():
    agg = SlabAggregator((10, 4), axis=0, capacity=5)
    w = torch.ones(1, 4, 4)
    agg.add((0, 0), w, w)
    assert [(s.start, s.stop) for s in agg.flush(2)] == [(0, 2)]
    with pytest.raises(ValueError, match="arrives after planes up to 2 were finalized"):
        agg.add((1, 0), w, w)
    with pytest.raises(ValueError, match=r"do not fit the ring of 5 planes"):
        agg.add((4, 0), w, w)
    with pytest.raises(ValueError, match="capacity must be in 1..10"):
        SlabAggregator((10, 4), axis=0, capacity=11)


def test_aggregator_wraps_around_the_ring():
    agg = SlabAggregator((7,), axis=0, capacity=3)
    out = []
    for start in range(5):  # windows of 3 planes at 0..4 with weight 1 and value = start
        agg.add((start,), torch.full((1, 3), float(start)), torch.ones(1, 3))
        out += [s.scores.clone() for s in agg.flush(start + 1 if start < 4 else 7)]
    values = torch.cat(out, dim=1)[0]
    expected = [np.mean([s for s in range(5) if s <= p < s + 3]) for p in range(7)]
    np.testing.assert_allclose(values.numpy(), expected)


def test_unfinished_planes_are_refused():
    agg = SlabAggregator((6,), axis=0, capacity=6)
    agg.add((0,), torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="finalized before every window"):
        list(agg.flush(5))


def test_network_output_shape_is_checked():
    sw = SlidingWindow(SlidingWindowConfig((4, 4), 0.5, 2, "gaussian"))
    with pytest.raises(ValueError, match=r"the network returned shape \(2, 1, 2, 2\)"):
        list(sw.slabs(torch.zeros(1, 8, 8), lambda w: w[:, :, :2, :2]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"roi_size": (0, 4)}, "positive sizes"),
        ({"roi_size": (4, 4), "overlap": 1.0}, r"must be in \[0, 1\)"),
        ({"roi_size": (4, 4), "sw_batch_size": 0}, "must be >= 1"),
        ({"roi_size": (4, 4), "mode": "mean"}, "'mean' is not one of gaussian, constant"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SlidingWindowConfig(**kwargs)
