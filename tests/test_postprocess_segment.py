"""Postprocessing wired through segmentation: config -> model spec -> Predictor -> ``medseg segment``.

A thresholding network segments an image holding three objects of known size (a large box, a 27-voxel cube and
an 8-voxel cube) on an anisotropic, LAS grid; which objects survive tells which settings were applied and that
volumes were measured in mm^3 with the study's own voxel size.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from test_batch_support import ThresholdNet, threshold_spec

from medseg.checkpoint import Checkpoint, save_checkpoint
from medseg.cli import main as cli_main
from medseg.config import load_config, to_dict
from medseg.contract import DataContract
from medseg.errors import ConfigError
from medseg.inference import Predictor
from medseg.inference.options import InferenceOptions
from medseg.nets import build_network
from medseg.nets.registry import NETWORKS
from medseg.synthetic.phantoms import make_affine
from medseg.training.run import build_model_spec

SHAPE = (40, 36, 20)
SPACING = (1.5, 1.5, 2.5)  # 5.625 mm^3 per voxel
VOXEL_MM3 = 1.5 * 1.5 * 2.5
BIG = (slice(4, 20), slice(4, 20), slice(4, 14))  # 2560 voxels
MEDIUM = (slice(28, 31), slice(26, 29), slice(4, 7))  # 27 voxels = 151.9 mm^3
SMALL = (slice(30, 32), slice(6, 8), slice(15, 17))  # 8 voxels = 45 mm^3


def _truth() -> dict[str, np.ndarray]:
    """Label maps of what each setting must keep."""
    out = {}
    for name, parts in {
        "all": (BIG, MEDIUM, SMALL),
        "big+medium": (BIG, MEDIUM),
        "big": (BIG,),
    }.items():
        lab = np.zeros(SHAPE, np.uint8)
        for box in parts:
            lab[box] = 1
        out[name] = lab
    return out


TRUTH = _truth()


def _image() -> MetaTensor:
    hu = np.where(TRUTH["all"] > 0, 40.0, -1000.0).astype(np.float32)
    affine = make_affine(SHAPE, SPACING, axcodes="LAS")
    return MetaTensor(torch.from_numpy(hu[None]), affine=torch.as_tensor(affine))


def _spec(postprocess: dict | None):
    spec = threshold_spec()
    if postprocess is not None:
        data = spec.contract.to_dict()
        data["inference"]["postprocess"] = postprocess
        spec.contract = DataContract.from_dict(data, "model spec")
    return spec


def _predict(spec_pp: dict | None, **kw) -> np.ndarray:
    predictor = Predictor(ThresholdNet(), _spec(spec_pp), InferenceOptions(device="cpu", **kw))
    label = predictor.predict(_image())
    assert tuple(label.shape) == (1, *SHAPE)
    np.testing.assert_allclose(label.affine.numpy(), _image().affine.numpy())
    return label[0].numpy()


def test_threshold_objects_are_what_the_test_assumes() -> None:
    assert int(TRUTH["all"][MEDIUM].sum()) * VOXEL_MM3 == pytest.approx(151.875)
    assert int(TRUTH["all"][SMALL].sum()) * VOXEL_MM3 == pytest.approx(45.0)
    np.testing.assert_array_equal(_predict(None), TRUTH["all"])  # older specs: no postprocessing


@pytest.mark.parametrize(
    ("settings", "kept"),
    [
        (
            {"min_volume_mm3": 40.0},
            "all",
        ),  # 8 voxels = 45 mm^3 > 40: kept (it would go if voxels were 1 mm^3)
        ({"min_volume_mm3": 50.0}, "big+medium"),
        ({"min_volume_mm3": {1: 152.0}}, "big"),
        ({"largest_component": True}, "big"),
        ({"largest_component": [1], "min_volume_mm3": 10.0, "connectivity": 1}, "big"),
        ({"largest_component": False, "min_volume_mm3": None}, "all"),
    ],
)
def test_model_spec_settings_are_applied_on_the_study_grid(settings, kept) -> None:
    np.testing.assert_array_equal(_predict(settings), TRUTH[kept])


def test_predictor_argument_overrides_the_model_settings() -> None:
    model = {"largest_component": True, "min_volume_mm3": 50.0}
    np.testing.assert_array_equal(_predict(model), TRUTH["big"])
    np.testing.assert_array_equal(_predict(model, postprocess=True), TRUTH["big"])
    np.testing.assert_array_equal(_predict(model, postprocess=False), TRUTH["all"])
    # a mapping replaces only the keys it names
    np.testing.assert_array_equal(
        _predict(model, postprocess={"largest_component": False}), TRUTH["big+medium"]
    )
    np.testing.assert_array_equal(
        _predict(model, postprocess={"largest_component": False, "min_volume_mm3": 1.0}), TRUTH["all"]
    )


def test_bad_settings_are_config_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"postprocess: unknown key\(s\) \['min_volume'\]"):
        _predict(None, postprocess={"min_volume": 5})
    with pytest.raises(ConfigError, match=r"model spec: inference.postprocess.largest_component"):
        _predict({"largest_component": "yes"})
    with pytest.raises(ConfigError, match="postprocess: must be None, true, false or a mapping"):
        _predict(None, postprocess=3)
    with pytest.raises(
        ConfigError, match=r"label value\(s\) \[2, 7\] are not labels of the model; its labels"
    ):
        _predict(None, postprocess={"largest_component": [1, 7], "min_volume_mm3": {2: 5.0}})


def test_config_settings_reach_the_model_spec(tmp_path: Path) -> None:
    config = load_config(
        Path(__file__).parents[1] / "configs" / "demo.yaml",
        ["inference.postprocess.min_volume_mm3={1: 20}", "inference.postprocess.connectivity=1"],
    )
    net = build_network("unet", spatial_dims=3, in_channels=3, out_channels=2, features=[4, 8])
    spec = build_model_spec(config, net)
    assert to_dict(spec.contract.inference.postprocess) == {
        "largest_component": True,  # from configs/demo.yaml
        "min_volume_mm3": {1: 20.0},
        "connectivity": 1,
    }
    path = save_checkpoint(tmp_path / "model.pt", Checkpoint(state_dict=net.state_dict(), spec=spec))
    predictor = Predictor.from_checkpoint(path, InferenceOptions(device="cpu"))
    assert predictor.postprocess.to_config() == to_dict(spec.contract.inference.postprocess)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inference.postprocess.largest_component=[2]"], r"label value\(s\) \[2\] are not in data.labels"),
        (["inference.postprocess.min_volume_mm3=-1"], "min_volume_mm3 must be a finite number"),
        (["inference.postprocess.min_volume_mm3={3: 5}"], r"label value\(s\) \[3\]"),
        (["inference.postprocess.connectivity=4"], "connectivity must be 1, 2, 3"),
        (["inference.postprocess.sizes=4"], "unknown key 'inference.postprocess.sizes'"),
    ],
)
def test_bad_config_settings_are_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Path(__file__).parents[1] / "configs" / "demo.yaml", overrides)


def test_2d_config_refuses_3d_connectivity() -> None:
    with pytest.raises(ConfigError, match=r"connectivity: must be 1..2 for data.spatial_dims=2"):
        load_config(
            Path(__file__).parents[1] / "configs" / "2d.yaml", ["inference.postprocess.connectivity=3"]
        )


# ------------------------------------------------------------------------------------------------ medseg segment
@pytest.fixture
def model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoint of the thresholding network whose spec asks for the largest component."""
    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)
    spec = _spec({"largest_component": True, "min_volume_mm3": None, "connectivity": None})
    return save_checkpoint(tmp_path / "threshold.pt", Checkpoint(state_dict={}, spec=spec))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    image = _image()
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(image[0].numpy().astype(np.int16), image.affine.numpy()), path)
    return path


def _segment(
    study: Path, out: Path, model: Path, *options: str
) -> tuple[int, np.ndarray | None, dict | None]:
    code = cli_main(["segment", str(study), str(out), "--model", str(model), "--no-progress",
                     "--formats", "nifti,report", *options])  # fmt: skip
    labels = sorted(out.glob("*/label.nii.gz"))
    if code != 0 or not labels:
        return code, None, None
    assert len(labels) == 1
    img = nib.load(labels[0])
    np.testing.assert_allclose(img.affine, _image().affine.numpy(), atol=1e-6)
    report = json.loads((labels[0].parent / "report.json").read_text())
    return code, np.asarray(img.dataobj), report


def test_segment_applies_the_model_settings_and_reports_them(study, model_file, tmp_path) -> None:
    code, label, report = _segment(study, tmp_path / "default", model_file)
    assert code == 0
    np.testing.assert_array_equal(label, TRUTH["big"])
    assert report["provenance"]["postprocess"] == {
        "largest_component": True,
        "min_volume_mm3": None,
        "connectivity": None,
    }
    assert report["labels"]["body"]["voxels"] == int(TRUTH["big"].sum())


def test_segment_options_override_the_model_settings(study, model_file, tmp_path) -> None:
    code, label, report = _segment(study, tmp_path / "raw", model_file, "--no-postprocess")
    assert code == 0
    np.testing.assert_array_equal(label, TRUTH["all"])
    assert report["provenance"]["postprocess"] is None

    code, label, _ = _segment(
        study, tmp_path / "sized", model_file, "--largest-component", "--min-volume-mm3", "50"
    )
    assert code == 0
    np.testing.assert_array_equal(label, TRUTH["big"])


def test_segment_refuses_other_settings_in_an_existing_output_folder(
    study, model_file, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    assert _segment(study, out, model_file)[0] == 0
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*.nii.gz"))
    code, _, _ = _segment(study, out, model_file, "--no-postprocess")
    assert code == 2
    assert "postprocess" in capsys.readouterr().err
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*.nii.gz")) == before


def test_segment_refuses_labels_the_model_does_not_have(study, model_file, tmp_path, capsys) -> None:
    code, _, _ = _segment(study, tmp_path / "x", model_file, "--largest-component", "3")
    assert code == 2
    assert "label value(s) [3] are not labels of the model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_segment_refuses_contradictory_options(study, model_file, tmp_path, capsys) -> None:
    code, _, _ = _segment(study, tmp_path / "x", model_file, "--no-postprocess", "--largest-component", "1")
    assert code == 2
    assert "--no-postprocess cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
