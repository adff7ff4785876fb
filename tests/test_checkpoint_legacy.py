"""A checkpoint written before the data contract (format 1) loads through one conversion and segments identically.

``tests/data/legacy_v1`` was made by ``make_fixture.py`` with medseg at commit f2e0a9d (before the contract): a
tiny CT model trained with a 2 x 2 x 3 mm grid, a foreground crop (threshold -500 HU, margin 3) that format 1 kept
only in the training config, and largest-component + 30 mm^3 postprocessing; ``expected_label.npy`` is what that
medseg's ``Predictor`` gave on ``study_CT.nii.gz``. ``batch_out_f2e0a9d`` and ``batch_out_8931c0b`` are the output
folders that medseg's ``segment_archive`` made of a copy of that study with that model at those commits
(``make_batch_output.py``): their ledgers hold the fingerprints of those times, over the format-1 spec and over the
whole format-2 spec.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.batch import LEDGER_FILE, segment_archive
from medseg.batch.provenance import batch_provenance, earlier_fingerprints, run_fingerprint
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
from medseg.errors import ConfigError
from medseg.inference import InferenceOptions, Predictor

DATA = Path(__file__).parent / "data" / "legacy_v1"
MODEL, STUDY = DATA / "model_v1.pt", DATA / "study_CT.nii.gz"
OLD_INPUT_MTIME_NS = 1_700_000_000_000_000_000  # of the study copy in those runs (make_batch_output.py)
# output folders of older medseg -> which of earlier_fingerprints() their ledger holds
OLD_OUTPUTS = {"f2e0a9d": 1, "8931c0b": 0}


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


def _old_folder(tmp_path: Path, commit: str) -> tuple[Path, Path]:
    """The archive of the old run (``first/``) plus a new study (``second/``), and a copy of the old output folder."""
    root = tmp_path / "in"
    for name in ("first", "second"):
        (root / name).mkdir(parents=True)
        shutil.copyfile(STUDY, root / name / "study_CT.nii.gz")
    os.utime(root / "first" / "study_CT.nii.gz", ns=(OLD_INPUT_MTIME_NS, OLD_INPUT_MTIME_NS))
    out = shutil.copytree(DATA / f"batch_out_{commit}", tmp_path / "out")
    return root, out


def _ledger(out: Path) -> tuple[str, list[tuple]]:
    """(recorded model fingerprint, [(key, status, attempts, checksums)])."""
    with contextlib.closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
        (fingerprint,) = conn.execute("SELECT value FROM meta WHERE name = 'model_fingerprint'").fetchone()
        rows = conn.execute("SELECT key, status, attempts, checksums FROM items ORDER BY key").fetchall()
    return fingerprint, rows


@pytest.mark.parametrize("commit", sorted(OLD_OUTPUTS))
def test_an_output_folder_of_an_older_medseg_resumes_with_its_model(tmp_path, commit):
    root, out = _old_folder(tmp_path, commit)
    old_fingerprint, [old_row] = _ledger(out)
    old_label = out / old_row[0] / "label.nii.gz"
    old_stat = old_label.stat()
    predictor = Predictor.from_checkpoint(MODEL, InferenceOptions(device="cpu"))
    provenance = batch_provenance(predictor)
    # the folder holds the fingerprint of its time: not the current form, one of the earlier ones
    assert old_fingerprint != run_fingerprint(predictor, provenance)
    assert earlier_fingerprints(predictor, provenance)[OLD_OUTPUTS[commit]] == old_fingerprint

    summary = segment_archive(root, out, MODEL, InferenceOptions(device="cpu"), formats=("nifti",), progress=False)

    assert (summary.done, summary.already_done, summary.processed, summary.redone) == (2, 1, 1, 0)
    fingerprint, rows = _ledger(out)
    assert fingerprint == run_fingerprint(predictor, provenance)  # rewritten in the current form
    assert old_row in rows  # the DONE item was not redone: same attempts, same checksums
    after = old_label.stat()
    assert (after.st_ino, after.st_mtime_ns) == (old_stat.st_ino, old_stat.st_mtime_ns)
    assert old_label.read_bytes() == (DATA / f"batch_out_{commit}" / old_row[0] / "label.nii.gz").read_bytes()
    (new_key,) = {r[0] for r in rows} - {old_row[0]}
    expected = np.load(DATA / "expected_label.npy")
    for key in (old_row[0], new_key):  # what the old medseg wrote and what this one adds agree
        np.testing.assert_array_equal(np.asarray(nib.load(out / key / "label.nii.gz").dataobj), expected)

    again = segment_archive(root, out, MODEL, InferenceOptions(device="cpu"), formats=("nifti",), progress=False)
    assert (again.already_done, again.processed) == (2, 0)


@pytest.mark.parametrize("commit", sorted(OLD_OUTPUTS))
def test_an_output_folder_of_an_older_medseg_refuses_another_model_or_settings(tmp_path, commit):
    root, out = _old_folder(tmp_path, commit)
    before = _ledger(out)
    payload = torch.load(MODEL, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3  # same format-1 spec, other weights
    other = tmp_path / "other_v1.pt"
    torch.save(payload, other)
    assert payload["format_version"] == 1

    settings = (
        (other, InferenceOptions(device="cpu")),
        (MODEL, InferenceOptions(device="cpu", tta=True)),
        (MODEL, InferenceOptions(device="cpu", crop_foreground=False)),  # older fingerprints did not hold the crop
    )
    for model, options in settings:
        with pytest.raises(ConfigError, match="different model or inference settings"):
            segment_archive(root, out, model, options, formats=("nifti",), progress=False)
        assert _ledger(out) == before  # nothing recorded, the old fingerprint kept
