"""Preprocessing inside the foreground box and streamed inversion agree with MONAI's transforms and Invertd."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForeground, Invertd, Orientation, Spacing

from medseg.contract import CropRule, contract_from_config
from medseg.data.normalization import CTWindow, ZScore
from medseg.data.preprocess import build_preprocess
from medseg.errors import ConfigError
from medseg.inference.aggregate import Slab
from medseg.inference.invert import LabelInverter
from medseg.inference.prepare import foreground_box, model_grid, resample_box
from medseg.inference.resample import axis_maps, stencil
from medseg.synthetic.phantoms import make_affine

GRIDS = [
    ("RAS", (0, 0, 0), (1.2, 0.9, 2.0)),
    ("LPI", (0, 0, 0), (0.8, 1.3, 1.1)),
    ("PIR", (0, 0, 0), (1.0, 1.0, 2.5)),
    ("LAS", (15, -5, 25), (1.1, 0.7, 1.9)),  # oblique
]
TARGET = (1.5, 1.4, 2.2)


def _image(axcodes, rotation, spacing, shape=(29, 34, 21), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 100.0, size=shape).astype(np.float32) - 1000.0
    data[5:-6, 7:-4, 3:-2] += 1000.0  # a "body" above -500 HU away from the borders
    affine = make_affine(shape, spacing, axcodes=axcodes, rotation_deg=rotation)
    return MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(affine))


@dataclass
class Prepared:
    image: torch.Tensor
    grid: Any
    box: tuple[tuple[int, int], ...]


def prepare(image, normalizers, orientation, spacing, crop=None) -> Prepared:
    """The study preprocessed inside its foreground box (the whole model grid without ``crop``)."""
    grid = model_grid(image, orientation, spacing)
    box = foreground_box(image.as_tensor(), grid, crop) if crop is not None else grid.whole
    return Prepared(resample_box(image, normalizers, grid, box), grid, box)


@pytest.mark.parametrize("axcodes,rotation,spacing", GRIDS)
@pytest.mark.parametrize("normalizer", [CTWindow(40, 400), ZScore()])
def test_prepare_equals_training_preprocessing(axcodes, rotation, spacing, normalizer):
    image = _image(axcodes, rotation, spacing)
    expected = build_preprocess("image", None, TARGET, "RAS", normalizers=[normalizer])({"image": image})[
        "image"
    ]
    ours = prepare(image, [normalizer], "RAS", TARGET)
    assert ours.grid.shape == tuple(expected.shape[1:]) and ours.box == ours.grid.whole
    np.testing.assert_allclose(ours.grid.affine, np.asarray(expected.affine), atol=1e-9)
    torch.testing.assert_close(ours.image, expected.as_tensor(), rtol=0, atol=2e-5)


def test_prepare_reads_fortran_ordered_volumes_in_chunks(monkeypatch):
    import medseg.inference.prepare as prep

    monkeypatch.setattr(prep, "CHUNK_VOXELS", 500)  # many chunks
    image = _image("LPI", (0, 0, 0), (0.8, 1.3, 1.1))
    fortran = MetaTensor(torch.from_numpy(np.asfortranarray(image[0].numpy()))[None], affine=image.affine)
    assert fortran.stride()[1] == 1
    expected = prepare(image, [CTWindow(40, 400)], "RAS", TARGET)
    ours = prepare(fortran, [CTWindow(40, 400)], "RAS", TARGET, crop=CropRule(-500.0, 2))
    b = ours.box
    torch.testing.assert_close(
        ours.image, expected.image[:, b[0][0] : b[0][1], b[1][0] : b[1][1], b[2][0] : b[2][1]]
    )


@pytest.mark.parametrize("axcodes,rotation,spacing", GRIDS)
@pytest.mark.parametrize("margin", [0, 2])
def test_foreground_box_contains_the_training_crop(axcodes, rotation, spacing, margin):
    """Training: threshold mask on the raw image, resampled with nearest neighbours, bounding box + margin."""
    image = _image(axcodes, rotation, spacing)
    mask = MetaTensor((image.as_tensor() > -500.0).float(), affine=image.affine.clone())
    grid_mask = Spacing(pixdim=TARGET, mode="nearest", padding_mode="zeros")(
        Orientation(axcodes="RAS", labels=None)(mask)
    )
    cropper = CropForeground(margin=margin, allow_smaller=True)
    start, end = cropper.compute_bounding_box(grid_mask)
    grid = model_grid(image, "RAS", TARGET)
    box = foreground_box(image.as_tensor(), grid, CropRule(-500.0, margin))
    for (b0, b1), s, e in zip(box, start, end, strict=True):
        assert b0 <= s and e <= b1  # contains the training box
        assert s - b0 <= 1 and b1 - e <= 1  # and is at most one voxel larger per side
    assert any(b1 - b0 < n for (b0, b1), n in zip(box, grid.shape, strict=True))  # it does crop


def test_no_voxel_above_threshold_keeps_the_whole_grid(caplog):
    image = _image("RAS", (0, 0, 0), (1.2, 0.9, 2.0))
    grid = model_grid(image, "RAS", TARGET)
    assert foreground_box(image.as_tensor(), grid, CropRule(5000.0, 2)) == grid.whole
    assert "no voxel above the foreground threshold" in caplog.text


def test_crop_rule_from_training_config():
    from test_training_helpers import tiny_config

    assert contract_from_config(tiny_config(train={"crop_foreground": False})).crop is None
    config = tiny_config(train={"crop_foreground": True, "foreground_threshold": -500, "foreground_margin": 3})
    assert contract_from_config(config).crop == CropRule(-500.0, 3)
    with pytest.raises(ConfigError, match="margin: must be >= 0"):
        CropRule(0.0, -1)


def _stream(inverter: LabelInverter, scores: torch.Tensor, axis: int, sizes) -> torch.Tensor:
    start = 0
    for n in sizes:
        stop = min(start + n, scores.shape[1 + axis])
        idx = [slice(None)] * scores.ndim
        idx[1 + axis] = slice(start, stop)
        lent = scores[tuple(idx)].clone()
        inverter.add(Slab(axis, start, stop, lent))
        lent.fill_(float("nan"))  # slab buffers are only lent to the inverter
        start = stop
        if start == scores.shape[1 + axis]:
            break
    return inverter.result()


@pytest.mark.parametrize("axcodes,rotation,spacing", GRIDS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_streamed_inversion_equals_invertd_on_logits_then_argmax(axcodes, rotation, spacing, axis):
    """The MONAI tutorial way: Invertd(nearest_interp=False) on the K-channel output, then argmax."""
    image = _image(axcodes, rotation, spacing)
    transform = build_preprocess("image", None, TARGET, "RAS", normalizers=[CTWindow(40, 400)])
    pre = transform({"image": image})["image"]
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool3d(torch.randn(1, 4, *pre.shape[1:]), 5, stride=1, padding=2)[0]
    logits = MetaTensor(smooth, affine=pre.affine.clone())
    inv = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(
        {"image": pre, "pred": logits}
    )["pred"]
    expected = inv.argmax(0)
    maps = axis_maps(np.asarray(pre.affine), np.asarray(image.affine))
    full_box = tuple((0, n) for n in pre.shape[1:])
    ours = _stream(
        LabelInverter(image.shape[1:], maps, pre.shape[1:], full_box), smooth, axis, [3, 1, 5, 7, 100]
    )
    assert ours.dtype == torch.uint8 and ours.shape == image.shape[1:]
    differ = (ours.long() != expected).sum().item()
    assert differ <= 2, f"{differ} voxels differ"  # float32 rounding of interpolation weights at near-ties


def test_inversion_outside_the_box_is_background_and_inside_matches_full():
    image = _image("LPI", (0, 0, 0), (0.8, 1.3, 1.1))
    grid = model_grid(image, "RAS", TARGET)
    affine, shape = grid.affine, grid.shape
    torch.manual_seed(3)
    scores = torch.randn(3, *shape)
    scores[0] -= 10.0  # background never wins inside the box
    maps = axis_maps(affine, np.asarray(image.affine))
    full = _stream(
        LabelInverter(image.shape[1:], maps, shape, tuple((0, n) for n in shape)), scores, 0, [4] * 50
    )
    box = ((3, shape[0] - 2), (2, shape[1] - 4), (1, shape[2] - 1))
    sub = scores[:, box[0][0] : box[0][1], box[1][0] : box[1][1], box[2][0] : box[2][1]]
    cropped = _stream(LabelInverter(image.shape[1:], maps, shape, box), sub, 1, [2] * 50)
    # slabs of a hull one voxel wider than the box: inside the box, exactly the labels of the whole grid
    hull = tuple((a - 1, b + 1) for a, b in box)
    wider = scores[:, hull[0][0] : hull[0][1], hull[1][0] : hull[1][1], hull[2][0] : hull[2][1]]
    widened = _stream(LabelInverter(image.shape[1:], maps, shape, hull, box), wider, 2, [3] * 50)
    # study voxels whose nearest model voxel is inside the box, and whose stencil stays inside it
    inside = np.ones(image.shape[1:], dtype=bool)
    interior = np.ones(image.shape[1:], dtype=bool)
    for o, mp in enumerate(maps):
        u = np.clip(mp.coords(np.arange(image.shape[1 + o])), 0, shape[mp.src_axis] - 1)
        b0, b1 = box[mp.src_axis]
        r = np.floor(u + 0.5)
        view = [1] * 3
        view[o] = -1
        inside &= ((r >= b0) & (r < b1)).reshape(view)
        interior &= ((np.floor(u) >= b0) & (np.floor(u) + 1 <= b1 - 1)).reshape(view)
    assert (cropped.numpy()[~inside] == 0).all() and (widened.numpy()[~inside] == 0).all()
    assert (cropped.numpy()[inside] > 0).all()
    np.testing.assert_array_equal(cropped.numpy()[interior], full.numpy()[interior])
    assert (cropped.numpy()[inside] != full.numpy()[inside]).any()  # clamped to the box at its border
    np.testing.assert_array_equal(widened.numpy()[inside], full.numpy()[inside])


def test_inverter_refuses_a_box_outside_its_hull():
    with pytest.raises(ValueError, match="is not a non-empty box inside the hull"):
        LabelInverter((4, 4), axis_maps(np.eye(3), np.eye(3)), (4, 4), ((1, 3), (0, 4)), ((0, 3), (0, 4)))


def test_axis_maps_refuse_rotated_grids():
    a = make_affine((4, 4, 4), (1, 1, 1))
    b = make_affine((4, 4, 4), (1, 1, 1), rotation_deg=(0, 0, 10))
    with pytest.raises(ValueError, match="not axis-aligned"):
        axis_maps(a, b)


@pytest.mark.parametrize(("shear", "accepted"), [(1e-6, True), (1e-3, True), (5e-3, False)])
def test_model_grid_of_a_slightly_sheared_study(shear, accepted):
    """Scanner headers carry orientations to ~6 digits and the reader accepts up to 1e-3 of shear; MONAI's
    Spacing removes the shear, so the model grid is then off-axis by about that much: accepted up to AXIS_TOL."""
    affine = make_affine((40, 40, 20), (0.7, 0.7, 2.5), rotation_deg=(20, 10, 5))
    affine[:3, 2] += shear * 2.5 * affine[:3, 0] / 0.7  # the slice axis leans towards the first axis
    image = MetaTensor(torch.zeros(1, 40, 40, 20), affine=torch.as_tensor(affine))
    if not accepted:
        with pytest.raises(ValueError, match="not axis-aligned"):
            model_grid(image, "RAS", (1.0, 1.0, 3.0))
        return
    grid = model_grid(image, "RAS", (1.0, 1.0, 3.0))
    # every model voxel centre, mapped separably, is within shear x extent of where the exact affine puts it
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1).reshape(-1, 3)
    exact = np.linalg.solve(affine, grid.affine)[:3] @ np.c_[idx, np.ones(len(idx))].T
    approx = np.stack([mp.coords(idx[:, d]) for d, mp in enumerate(grid.maps)])
    for d, mp in enumerate(grid.maps):
        err_mm = np.abs(exact[mp.src_axis] - approx[d]).max() * np.linalg.norm(affine[:3, mp.src_axis])
        assert err_mm <= 2 * shear * 60.0 + 1e-9  # 60 mm: the largest extent of this grid


def test_stencil_clamps_to_border_and_box():
    st = stencil(np.array([-0.7, 0.25, 4.5, 9.9]), size=8)
    np.testing.assert_array_equal(st.lo, [0, 0, 4, 7])
    np.testing.assert_array_equal(st.hi, [0, 1, 5, 7])
    np.testing.assert_allclose(st.weight, [0.0, 0.25, 0.5, 0.0])
    boxed = stencil(np.array([1.5, 2.5, 6.5]), size=8, lo_bound=2, hi_bound=5)
    np.testing.assert_array_equal(boxed.lo, [2, 2, 5])
    np.testing.assert_array_equal(boxed.hi, [2, 3, 5])
