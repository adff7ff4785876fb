"""Predictor: a thresholding model gives back exactly the phantom's label in the input's own geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.checkpoint import ModelSpec
from medseg.inference import Predictor, resolve_device
from medseg.synthetic.phantoms import make_affine

LEVELS = torch.tensor([0.0, 100.0, 200.0, 300.0])


class ThresholdNet(torch.nn.Module):
    """Logits -(x - level_k)^2: the argmax is the class whose intensity level is nearest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = LEVELS.to(x.device).view(1, -1, *([1] * (x.ndim - 2)))
        return -((x - levels) ** 2)


def _spec(spacing=None) -> ModelSpec:
    return ModelSpec(
        network={"name": "threshold"},
        channels=[{"name": "CT", "normalization": {"name": "none"}, "series": None}],
        labels={0: "background", 1: "a", 2: "b", 3: "c"},
        spacing=spacing,
        orientation="RAS",
        spatial_dims=3,
        patch_size=[16, 16, 16],
        inference={"overlap": 0.5, "sw_batch_size": 2},
    )


def _phantom(shape=(30, 26, 20)) -> np.ndarray:
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    lab = np.zeros(shape, np.int64)
    lab[((ii - 12) / 8) ** 2 + ((jj - 12) / 6) ** 2 + ((kk - 9) / 5) ** 2 < 1] = 1
    lab[(ii > 20) & (jj > 15)] = 2
    lab[(kk < 4) & (ii < 8)] = 3
    return lab


@pytest.mark.parametrize(
    "axcodes,rotation",
    [("RAS", (0, 0, 0)), ("LAS", (0, 0, 0)), ("PIR", (0, 0, 0)), ("RAS", (20, 0, 30))],
)
@pytest.mark.parametrize("tta", [False, True])
def test_threshold_model_returns_label_on_input_grid(axcodes, rotation, tta):
    lab = _phantom()
    affine = make_affine(lab.shape, (0.9, 1.1, 2.0), axcodes=axcodes, rotation_deg=rotation)
    image = MetaTensor(torch.as_tensor(LEVELS.numpy()[lab][None], dtype=torch.float32), affine=torch.as_tensor(affine))
    pred = Predictor(ThresholdNet(), _spec(), device="cpu", tta=tta).predict(image)
    assert tuple(pred.shape) == (1, *lab.shape)
    assert torch.equal(pred.affine.double(), torch.as_tensor(affine))
    np.testing.assert_array_equal(pred[0].numpy(), lab)


def test_channel_count_checked():
    image = MetaTensor(torch.zeros(2, 8, 8, 8), affine=torch.eye(4))
    with pytest.raises(ValueError, match=r"expects 1 channel\(s\) \['CT'\], the image has 2"):
        Predictor(ThresholdNet(), _spec(), device="cpu").predict(image)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


class ThresholdNet2D(ThresholdNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise AssertionError(f"2D network got a {x.ndim - 2}D input")
        return super().forward(x)


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_2d_model_runs_slice_wise_on_volumes(slice_axis):
    lab = _phantom()
    affine = make_affine(lab.shape, (0.9, 1.1, 2.0), axcodes="LAS")
    image = MetaTensor(torch.as_tensor(LEVELS.numpy()[lab][None], dtype=torch.float32), affine=torch.as_tensor(affine))
    spec = _spec()
    spec.spatial_dims = 2
    spec.patch_size = [16, 16]
    spec.inference["slice_axis"] = slice_axis
    pred = Predictor(ThresholdNet2D(), spec, device="cpu", tta=True).predict(image)
    np.testing.assert_array_equal(pred[0].numpy(), lab)
