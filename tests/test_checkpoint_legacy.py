"""A checkpoint written before the data contract (format 1) loads through one conversion and segments identically.

``tests/data/legacy_v1`` was made by ``make_fixture.py`` with medseg at commit f2e0a9d (before the contract): a
tiny CT model trained with a 2 x 2 x 3 mm grid, a foreground crop (threshold -500 HU, margin 3) that format 1 kept
only in the training config, and largest-component + 30 mm^3 postprocessing; ``expected_label.npy`` is what that
medseg's ``Predictor`` gave on ``study_CT.nii.gz``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.batch import segment_archive
from medseg.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    ModelSpec,
    load_checkpoint,
    save_checkpoint,
)
from medseg.contract import CropRule, upgrade_spec
from medseg.data.io import load_volume
from medseg.inference import InferenceOptions, Predictor

DATA = Path(__file__).parent / "data" / "legacy_v1"
MODEL, STUDY = DATA / "model_v1.pt", DATA / "study_CT.nii.gz"


def test_the_fixture_is_format_1():
    payload = torch.load(MODEL, weights_only=True)
    assert payload["format_version"] == 1 and "contract" not in payload["spec"]
    assert FORMAT_VERSION == 2


def test_format_1_spec_becomes_the_contract_it_implied():
    contract = load_checkpoint(MODEL).spec.contract
    assert contract.crop == CropRule(-500.0, 3)  # from the training config, where format 1 kept it
    assert contract.data.spacing == [2.0, 2.0, 3.0] and contract.data.orientation == "RAS"
    assert contract.channel_names == ["CT"] and contract.labels == {0: "background", 1: "organ_1", 2: "organ_2"}
    assert contract.channels[0].normalization == {"name": "ct_window", "center": 50, "width": 400}
    assert contract.patch_size == [16, 16, 8]
    assert (contract.inference.overlap, contract.inference.sw_batch_size) == (0.5, 2)
    assert contract.inference.postprocess.largest_component is True
    assert contract.inference.postprocess.min_volume_mm3 == 30.0
    assert contract.data.resample_channels is False


def test_format_1_defaults_are_those_inference_used():
    """No crop without ``train.crop_foreground``; margin 2 and threshold 0 when only the flag was stored."""
    spec = dict(torch.load(MODEL, weights_only=True)["spec"])
    spec["config"] = {}
    assert ModelSpec.from_dict(spec).contract.crop is None
    spec["config"] = {"train": {"crop_foreground": True}}
    assert ModelSpec.from_dict(spec).contract.crop == CropRule(0.0, 2)
    spec["inference"] = {}
    assert ModelSpec.from_dict(spec).contract.inference.postprocess.largest_component is False
    bad = {k: v for k, v in spec.items() if k != "patch_size"}
    with pytest.raises(CheckpointError, match=r"missing \['patch_size'\]"):
        ModelSpec.from_dict(bad)
    assert upgrade_spec(upgrade_spec(spec)) == upgrade_spec(spec)  # current data passes through unchanged


def test_old_checkpoint_segments_identically_by_predictor_and_batch(tmp_path):
    expected = np.load(DATA / "expected_label.npy")
    assert 0 < int((expected > 0).sum()) < expected.size  # the fixture's label is not trivial
    predictor = Predictor.from_checkpoint(MODEL, InferenceOptions(device="cpu"))
    label = predictor.predict(load_volume(STUDY))
    np.testing.assert_array_equal(label[0].numpy(), expected)

    summary = segment_archive(STUDY, tmp_path / "out", MODEL, InferenceOptions(device="cpu"), formats=("nifti",),
                              progress=False)  # fmt: skip
    assert summary.done == 1
    written = next((tmp_path / "out").glob("*/label.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj), expected)


def test_resaved_old_checkpoint_is_format_2_with_the_same_contract(tmp_path):
    old = load_checkpoint(MODEL)
    path = save_checkpoint(tmp_path / "v2.pt", Checkpoint(old.state_dict, old.spec))
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2 and set(payload["spec"]) == {"network", "contract", "config",
                                                                        "medseg_version"}
    assert load_checkpoint(path).spec.contract == old.spec.contract
