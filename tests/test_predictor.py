"""Predictor: a thresholding model gives back exactly the phantom's label in the input's own geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.checkpoint import ModelSpec
from medseg.contract import DataContract
from medseg.inference import Predictor, resolve_device
from medseg.inference.options import InferenceOptions
from medseg.inference.prepare import CropRule
from medseg.synthetic.phantoms import make_affine

LEVELS = torch.tensor([0.0, 100.0, 200.0, 300.0])


class ThresholdNet(torch.nn.Module):
    """Logits -(x - level_k)^2: the argmax is the class whose intensity level is nearest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = LEVELS.to(x.device).view(1, -1, *([1] * (x.ndim - 2)))
        return -((x - levels) ** 2)


def _spec(
    spacing=None,
    *,
    spatial_dims=3,
    patch_size=(16, 16, 16),
    slice_axis=None,
    overlap=0.5,
    crop=None,
    channels=("CT",),
) -> ModelSpec:
    return ModelSpec(
        network={"name": "threshold"},
        contract=DataContract.from_dict(
            {
                "data": {
                    "channels": [
                        {"name": n, "normalization": {"name": "none"}, "series": None} for n in channels
                    ],
                    "labels": {0: "background", 1: "a", 2: "b", 3: "c"},
                    "spacing": spacing,
                    "orientation": "RAS",
                    "spatial_dims": spatial_dims,
                    "slice_axis": slice_axis,
                },
                "patch_size": list(patch_size),
                "inference": {"overlap": overlap, "sw_batch_size": 2},
                "crop": crop,
            }
        ),
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
    image = MetaTensor(
        torch.as_tensor(LEVELS.numpy()[lab][None], dtype=torch.float32), affine=torch.as_tensor(affine)
    )
    pred = Predictor(ThresholdNet(), _spec(), InferenceOptions(device="cpu", tta=tta)).predict(image)
    assert tuple(pred.shape) == (1, *lab.shape)
    assert torch.equal(pred.affine.double(), torch.as_tensor(affine))
    np.testing.assert_array_equal(pred[0].numpy(), lab)


def test_channel_count_checked():
    image = MetaTensor(torch.zeros(2, 8, 8, 8), affine=torch.eye(4))
    with pytest.raises(ValueError, match=r"expects 1 channel\(s\) \['CT'\], the image has 2"):
        Predictor(ThresholdNet(), _spec(), InferenceOptions(device="cpu")).predict(image)


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
    image = MetaTensor(
        torch.as_tensor(LEVELS.numpy()[lab][None], dtype=torch.float32), affine=torch.as_tensor(affine)
    )
    spec = _spec(spatial_dims=2, patch_size=(16, 16), slice_axis=slice_axis)
    pred = Predictor(ThresholdNet2D(), spec, InferenceOptions(device="cpu", tta=True)).predict(image)
    np.testing.assert_array_equal(pred[0].numpy(), lab)


# ------------------------------------------------------------------------------------------------ lean engine
def _ct_like(shape=(40, 36, 22), corner=(8, 7, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Air (-1000) around a box of "body" (24 x 22 x 14 voxels at ``corner``) holding organs at LEVELS."""
    lab = np.zeros(shape, np.int64)
    body = tuple(slice(c, c + n) for c, n in zip(corner, (24, 22, 14), strict=True))
    sub = _phantom((24, 22, 14))
    lab[body] = sub
    image = LEVELS.numpy()[lab].astype(np.float32)
    image[lab == 0] = -1000.0
    image[body][sub == 0] = 0.0  # soft tissue: background level inside the body
    return image, lab


def _crop_spec(spacing=(1.4, 1.3, 2.2), margin=2, overlap=0.5) -> ModelSpec:
    spacing = None if spacing is None else list(spacing)
    return _spec(spacing=spacing, overlap=overlap, crop={"threshold": -500.0, "margin": margin})


@pytest.mark.parametrize("axcodes,rotation", [("LPS", (0, 0, 0)), ("RAS", (10, -20, 15))])
def test_foreground_crop_gives_the_labels_of_the_whole_grid_with_fewer_windows(axcodes, rotation):
    """A model that predicts background outside the body: cropping changes nothing but the work done."""
    image, _ = _ct_like(shape=(70, 40, 40), corner=(40, 9, 20))
    affine = make_affine(image.shape, (1.0, 0.9, 1.6), axcodes=axcodes, rotation_deg=rotation)
    mt = MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(affine))
    cropped = Predictor(ThresholdNet(), _crop_spec(), InferenceOptions(device="cpu"))
    whole = Predictor(ThresholdNet(), _crop_spec(), InferenceOptions(device="cpu", crop_foreground=False))
    a, b = cropped.predict(mt), whole.predict(mt)
    assert cropped.crop is not None and whole.crop is None
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert set(np.unique(a.numpy())) == {0, 1, 2, 3}
    assert cropped.inferer.last_windows <= whole.inferer.last_windows * 2 / 3


@pytest.mark.parametrize("overlap", [0.5, 0.0])
def test_crop_keeps_the_whole_grid_result_inside_the_box_for_any_network(overlap):
    """Only windows touching the box run, so inside it even a window-dependent network gives the same labels."""
    from medseg.inference.prepare import foreground_box, model_grid

    image, _ = _ct_like(shape=(70, 40, 40), corner=(40, 9, 20))
    affine = make_affine(image.shape, (1.0, 0.9, 1.6), axcodes="LAI")
    mt = MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(affine))
    spec = _crop_spec(overlap=overlap)
    net = SmoothNet().eval()
    a = Predictor(net, spec, InferenceOptions(device="cpu")).predict(mt)[0].numpy()
    b = Predictor(net, spec, InferenceOptions(device="cpu", crop_foreground=False)).predict(mt)[0].numpy()
    grid = model_grid(mt, "RAS", spec.contract.data.spacing)
    box = foreground_box(mt.as_tensor(), grid, CropRule(-500.0, 2))
    inside = np.ones(image.shape, dtype=bool)
    for model_axis, mp in enumerate(grid.maps):  # study voxels whose nearest model voxel is in the box
        study = np.arange(image.shape[mp.src_axis])
        u = (study - mp.offset) / mp.scale
        r = np.floor(np.clip(u, 0, grid.shape[model_axis] - 1) + 0.5)
        view = [1, 1, 1]
        view[mp.src_axis] = -1
        inside &= ((r >= box[model_axis][0]) & (r < box[model_axis][1])).reshape(view)
    assert 0 < inside.sum() < inside.size / 2
    np.testing.assert_array_equal(a[inside], b[inside])
    assert (a[~inside] == 0).all() and (b[~inside] != 0).any()  # the network does predict labels in the air


def test_windows_run_for_the_box_widened_by_the_reach_of_interpolation(monkeypatch):
    """Study voxels at the box border interpolate the next model plane: it must get its whole-grid value too."""
    from medseg.inference.prepare import foreground_box, model_grid

    image, _ = _ct_like(shape=(70, 40, 40), corner=(40, 9, 20))
    mt = MetaTensor(
        torch.from_numpy(image)[None], affine=torch.as_tensor(make_affine(image.shape, (1.0, 0.9, 1.6)))
    )
    predictor = Predictor(ThresholdNet(), _crop_spec(), InferenceOptions(device="cpu"))
    regions = []
    layout = predictor.inferer.layout
    monkeypatch.setattr(
        predictor.inferer, "layout", lambda shape, region: regions.append(region) or layout(shape, region)
    )
    predictor.predict(mt)
    grid = model_grid(mt, "RAS", predictor.spec.contract.data.spacing)
    box = foreground_box(mt.as_tensor(), grid, predictor.crop)
    expected = tuple((max(b0 - 1, 0), min(b1 + 1, n)) for (b0, b1), n in zip(box, grid.shape, strict=True))
    assert regions == [expected] and expected != grid.whole


def test_crop_requested_for_a_model_trained_without_it():
    with pytest.raises(ValueError, match="was not trained with a foreground crop"):
        Predictor(ThresholdNet(), _spec(), InferenceOptions(device="cpu", crop_foreground=True))


class SmoothNet(torch.nn.Module):
    """A fixed random 3D network with spatial context (not flip-symmetric), for comparisons with MONAI."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.b = torch.nn.Conv3d(6, classes, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x / 100.0))) * 4.0


def test_predict_equals_the_monai_tutorial_pipeline():
    """Preprocess, sliding_window_inference, Invertd(nearest_interp=False) on the logits, argmax (no crop)."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import Invertd

    from medseg.data.preprocess import build_preprocess

    image, _ = _ct_like()
    affine = make_affine(image.shape, (1.0, 0.9, 1.6), axcodes="PIL", rotation_deg=(5, 0, -10))
    mt = MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(affine))
    spec = _spec(spacing=[1.4, 1.3, 2.2])
    net = SmoothNet().eval()
    ours = Predictor(net, spec, InferenceOptions(device="cpu", channels_last=False)).predict(mt)
    transform = build_preprocess("image", None, spec.contract.data.spacing, "RAS", normalizers=[{"name": "none"}])
    pre = transform({"image": mt})["image"]
    with torch.no_grad():
        logits = sliding_window_inference(
            pre[None], spec.contract.patch_size, 2, net, overlap=0.5, mode="gaussian"
        )[0]
    inverted = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(
        {"image": pre, "pred": logits}
    )["pred"]
    expected = inverted.argmax(0)
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == (1, *image.shape)
    assert torch.equal(ours.affine.double(), torch.as_tensor(affine))
    assert len(np.unique(expected.numpy())) == 4  # the comparison is not trivial
    assert int((ours[0].long() != expected).sum()) <= 2  # float rounding at exact ties only


def test_probabilities_equal_softmax_of_monai_sliding_window():
    from monai.inferers import sliding_window_inference

    net = SmoothNet().eval()
    x = torch.randn(2, 1, 21, 37, 18) * 100
    probs = Predictor(net, _spec(), InferenceOptions(device="cpu")).probabilities(x)
    with torch.no_grad():
        expected = torch.softmax(
            sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.5, mode="gaussian"), 1
        )
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


def test_tta_averages_logits_of_all_mirrorings_inside_each_window():
    net = SmoothNet().eval()
    x = torch.randn(2, 1, 16, 16, 16) * 100
    got = Predictor(
        net, _spec(), InferenceOptions(device="cpu", tta=True, channels_last=False)
    ).window_scores(x)
    flips = [[], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]]
    with torch.no_grad():
        expected = sum(torch.flip(net(torch.flip(x, f)), f) for f in flips) / 8
        plain = net(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # mirroring does change the result of this network


def test_channels_last_gives_the_same_scores():
    from medseg.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 4, features=(4, 8, 16), norm="batch").eval()
    x = torch.randn(1, 1, 24, 20, 18)
    plain = Predictor(net, _spec(), InferenceOptions(device="cpu", channels_last=False)).probabilities(x)
    fast = Predictor(net, _spec(), InferenceOptions(device="cpu", channels_last=True))
    assert next(fast.network.parameters()).is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast.probabilities(x), plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm,expected", [("batch", True), ("instance", False), ("none", True)])
def test_channels_last_by_default_only_where_exact(norm, expected):
    from medseg.nets import UNet

    net = UNet(3, 1, 4, features=(4, 8), norm=norm)
    assert Predictor(net, _spec(), InferenceOptions(device="cpu")).channels_last is expected
    assert Predictor(net, _spec(), InferenceOptions(device="cpu", channels_last=False)).channels_last is False


def test_predict_never_allocates_a_full_volume_score_buffer(monkeypatch):
    """Only ring buffers about one window deep; MONAI's full-volume inference and inversion are not used."""
    import monai.inferers.inferer
    import monai.inferers.utils
    import monai.transforms

    def refuse(*args, **kwargs):
        raise AssertionError("full-volume MONAI path used")

    monkeypatch.setattr(monai.inferers.utils, "sliding_window_inference", refuse)
    monkeypatch.setattr(monai.inferers.inferer, "sliding_window_inference", refuse)
    monkeypatch.setattr(monai.transforms.Invertd, "__call__", refuse)
    image, lab = _ct_like(shape=(120, 40, 30), corner=(50, 9, 8))
    mt = MetaTensor(
        torch.from_numpy(image)[None], affine=torch.as_tensor(make_affine(image.shape, (1.0, 1.0, 1.0)))
    )
    predictor = Predictor(
        ThresholdNet(), _crop_spec(spacing=(1.0, 1.0, 1.0), margin=0), InferenceOptions(device="cpu")
    )
    pred = predictor.predict(mt)
    np.testing.assert_array_equal(pred[0].numpy(), lab)
    (k, *ring), weight_ring = predictor.inferer.last_allocations
    assert k == 4 and weight_ring == (1, *ring)
    assert ring[0] == 16  # along the slab axis: one window deep, of 120 planes
    assert int(np.prod(ring)) * 4 <= 0.25 * (4 * 120 * 40 * 30)  # a fifth of the K-channel volume of the grid


def test_2d_model_on_2d_images():
    lab = _phantom()[:, :, 9]
    affine2d = torch.tensor([[0.8, 0.0, -10.0], [0.0, -0.7, 12.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    image = MetaTensor(torch.as_tensor(LEVELS.numpy()[lab][None], dtype=torch.float32), affine=affine2d)
    spec = _spec(spacing=None, spatial_dims=2, patch_size=(16, 16))
    pred = Predictor(ThresholdNet2D(), spec, InferenceOptions(device="cpu", tta=True)).predict(image)
    assert tuple(pred.shape) == (1, *lab.shape)
    np.testing.assert_array_equal(pred[0].numpy(), lab)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_matches_cpu_labels():
    image, lab = _ct_like()
    mt = MetaTensor(
        torch.from_numpy(image)[None], affine=torch.as_tensor(make_affine(image.shape, (1.0, 1.0, 1.0)))
    )
    pred = Predictor(
        ThresholdNet(), _crop_spec(spacing=(1.0, 1.0, 1.0)), InferenceOptions(device="cuda", amp=True)
    ).predict(mt)
    np.testing.assert_array_equal(pred[0].numpy(), lab)


def test_segment_file_reads_the_stored_dtype_and_writes_the_label_on_the_study_grid(tmp_path):
    import nibabel as nib

    from medseg.inference.segment import segment_file

    image, lab = _ct_like(shape=(50, 40, 30), corner=(12, 9, 8))
    affine = make_affine(image.shape, (1.0, 0.9, 1.6), axcodes="LPS")
    src = tmp_path / "ct.nii.gz"
    nii = nib.Nifti1Image(image.astype(np.int16), affine)
    nii.header.set_slope_inter(1.0, 0.0)
    nib.save(nii, str(src))
    spec = _crop_spec(
        spacing=None
    )  # the study's own grid: the threshold model then returns the phantom's label
    predictor = Predictor(ThresholdNet(), spec, InferenceOptions(device="cpu"))
    seen = []
    original = predictor.predict
    predictor.predict = lambda img: seen.append(img.dtype) or original(img)
    result = segment_file(predictor, src, tmp_path / "out" / "label.nii.gz")
    assert seen == [torch.int16]  # no float32 copy of the study
    written = nib.load(str(result.output))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), lab)
    np.testing.assert_array_equal(result.label[0].numpy(), lab)
    assert set(result.seconds) == {"read", "predict", "write"}


def test_segment_file_refuses_multichannel_models(tmp_path):
    from medseg.inference.segment import segment_file

    spec = _spec(channels=("T1", "T2"))
    with pytest.raises(ValueError, match=r"expects 2 \['T1', 'T2'\]; use Predictor.predict_case"):
        segment_file(
            Predictor(ThresholdNet(), spec, InferenceOptions(device="cpu")),
            tmp_path / "x.nii.gz",
            tmp_path / "y.nii.gz",
        )


def test_channel_argmax_matches_torch_including_ties():
    from medseg.inference.invert import channel_argmax

    torch.manual_seed(0)
    scores = torch.randint(0, 3, (5, 7, 6, 4)).float()  # many ties: the first maximum must win
    np.testing.assert_array_equal(channel_argmax(scores).numpy(), scores.argmax(0).numpy())
    assert channel_argmax(scores, torch.int16).dtype == torch.int16
