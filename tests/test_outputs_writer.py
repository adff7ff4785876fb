"""write_case_outputs: every output of a case, in the input geometry, atomically, without patient identifiers."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import torch
from model_specs import CT_WINDOW, channel, contract
from monai.data import MetaTensor
from PIL import Image

from medseg.atomic import TEMP_PREFIX
from medseg.checkpoint import ModelSpec
from medseg.data.dicom import scan_dicom_tree
from medseg.data.io import load_volume, save_image
from medseg.outputs import FORMATS, model_provenance, uid_hash, write_case_outputs
from medseg.synthetic.dataset import write_ct_study

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}
CANARY_NAME, CANARY_ID, CANARY_FOLDER = "CANARYNAME^ZED", "CANARYID42", "CANARYFOLDER"
CONFIG = {"data": {"spacing": None}, "train": {"epochs": 1, "lr": 0.01}}


def _spec() -> ModelSpec:
    return ModelSpec(network={"name": "unet"}, contract=contract([channel("CT", CT_WINDOW)], LABELS), config=CONFIG)


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("writer")
    study = write_ct_study(
        root / CANARY_FOLDER,
        orientation="oblique",
        shape=(32, 28, 12),
        spacing=(1.2, 1.5, 2.5),
        reverse_order=True,
        patient_name=CANARY_NAME,
        patient_id=CANARY_ID,
    )
    image = load_volume(study.series_folder)
    label = MetaTensor(
        torch.from_numpy(study.label[None].astype(np.int64)),
        meta={**image.meta, "affine": image.affine.clone()},
    )
    ckpt = root / "model.pt"
    ckpt.write_bytes(b"not really weights")
    provenance = {
        **model_provenance(_spec(), checkpoint_path=ckpt, source_uri="models:/abdomen/3"),
        "case_id": "a1b2",
    }
    files = scan_dicom_tree(study.series_folder).series[0].files
    return study, image, label, provenance, files, root


def _inputs(dicom_case, **changes: object) -> dict:
    """The arguments of ``write_case_outputs`` for the DICOM case (``changes`` replace some)."""
    _, image, label, provenance, files, _ = dicom_case
    inputs = dict(image=image, label=label, spec=_spec(), provenance=provenance, source_dicom_files=files)
    return {**inputs, **changes}


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(f"{TEMP_PREFIX}*")]


def test_all_outputs_for_a_dicom_case(dicom_case, tmp_path: Path) -> None:
    study, image, label, provenance, files, root = dicom_case
    out = tmp_path / "7f3a9c"
    written = write_case_outputs(
        out,
        **_inputs(dicom_case),
        timing={"infer_s": 0.25},
        uid_key=b"run-key",
        created=dt.datetime(2024, 1, 2, 3, 4, 5),
    )
    assert {k: p.name for k, p in written.items()} == {
        "nifti": "label.nii.gz",
        "seg": "seg.dcm",
        "qc": "qc.png",
        "thumb": "thumb.png",
        "report": "report.json",
        "report_csv": "report.csv",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "label.nii.gz",
        "qc.png",
        "report.csv",
        "report.json",
        "seg.dcm",
        "thumb.png",
    ]
    _no_temp_files(out)

    # NIfTI: exactly the input grid and the label
    nii = nib.load(written["nifti"])
    np.testing.assert_array_equal(np.asarray(nii.dataobj), study.label)
    np.testing.assert_allclose(nii.affine, image.affine.numpy(), atol=1e-4)

    # SEG: back to the label through the source instances
    seg = hd.seg.segread(written["seg"])
    uids = image.meta["sop_instance_uids"]
    stack = np.asarray(seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False))
    value_of = np.array([0] + [int(str(s.SegmentDescription).split()[-1]) for s in seg.SegmentSequence])
    np.testing.assert_array_equal(value_of[stack.transpose(2, 1, 0)], study.label)
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "abdomen"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "3"

    # report: volumes, provenance, hashes of every output
    report = json.loads(written["report"].read_text())
    voxel_ml = 1.2 * 1.5 * 2.5 / 1000
    for value, name in LABELS.items():
        if value:
            expected = np.count_nonzero(study.label == value) * voxel_ml
            assert report["labels"][name]["volume_ml"] == pytest.approx(expected, rel=1e-6)
    prov = report["provenance"]
    assert prov["weights_sha256"] == hashlib.sha256(b"not really weights").hexdigest()
    assert (
        prov["config_hash"]
        == hashlib.sha256(json.dumps(CONFIG, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )
    assert (prov["model_name"], prov["model_version"], report["case_id"]) == ("abdomen", "3", "a1b2")
    assert report["created"] == "2024-01-02T03:04:05"
    assert report["input"]["series_uid_hash"] == uid_hash(image.meta["series_uid"], b"run-key")
    assert report["input"]["shape"] == [32, 28, 12] and report["input"]["modality"] == "CT"
    for fmt in ("nifti", "seg", "qc"):
        assert report["outputs"][fmt]["sha256"] == hashlib.sha256(written[fmt].read_bytes()).hexdigest()
    assert report["timing"]["infer_s"] == 0.25 and report["timing"]["write_seg_s"] > 0
    with open(written["report_csv"], newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["volume_ml.liver"]) == pytest.approx(report["labels"]["liver"]["volume_ml"])

    with Image.open(written["qc"]) as png:
        assert png.format == "PNG" and png.size[0] > 100

    # no patient identifiers or raw UIDs in the report files or the names written
    for path in (written["report"], written["report_csv"]):
        text = path.read_text()
        for secret in (
            CANARY_NAME,
            "CANARYNAME",
            CANARY_ID,
            CANARY_FOLDER,
            image.meta["series_uid"],
            image.meta["study_uid"],
        ):
            assert secret not in text, (path.name, secret)
    assert not [p for p in out.rglob("*") if "CANARY" in p.name]


def test_seg_and_nifti_are_reproducible(dicom_case, tmp_path: Path) -> None:
    kwargs = _inputs(dicom_case, created=dt.datetime(2024, 1, 2), formats=("seg", "nifti"))
    a = write_case_outputs(tmp_path / "a", **kwargs)
    b = write_case_outputs(tmp_path / "b", **kwargs)
    assert set(a) == {"nifti", "seg"}  # only the requested formats
    for fmt in a:
        assert a[fmt].read_bytes() == b[fmt].read_bytes(), fmt


def test_nifti_input_and_empty_label(dicom_case, tmp_path: Path) -> None:
    _, image, label, provenance, _, _ = dicom_case
    out = tmp_path / "case"
    written = write_case_outputs(out, **_inputs(dicom_case), formats=("seg",))
    assert (out / "seg.dcm").is_file() and set(written) == {"seg"}

    empty = MetaTensor(torch.zeros_like(label.as_tensor()), meta=dict(label.meta))
    written = write_case_outputs(out, **_inputs(dicom_case, label=empty))
    assert "seg" not in written and not (out / "seg.dcm").exists()  # the stale SEG is gone too
    report = json.loads(written["report"].read_text())
    assert any("no foreground" in note for note in report["notes"])
    assert all(entry["voxels"] == 0 for entry in report["labels"].values())

    nifti_path = save_image(image, tmp_path / "ct.nii.gz", dtype=None)
    nifti_image = load_volume(nifti_path)
    nifti_label = MetaTensor(label.as_tensor().clone(), meta={"affine": nifti_image.affine.clone()})
    written = write_case_outputs(
        tmp_path / "nifti_case", image=nifti_image, label=nifti_label, spec=_spec(), provenance=provenance
    )
    assert set(written) == {"nifti", "qc", "thumb", "report", "report_csv"}
    report = json.loads(written["report"].read_text())
    assert report["notes"] == ["no DICOM SEG: the input was not a DICOM series"]
    assert report["input"]["series_uid_hash"] is None
    assert "ct.nii.gz" not in written["report"].read_text()


def test_writer_errors(dicom_case, tmp_path: Path) -> None:
    _, image, label, provenance, _, _ = dicom_case
    common = dict(image=image, spec=_spec(), provenance=provenance)
    with pytest.raises(
        ValueError,
        match=r"unknown output format\(s\) \['png'\]; valid formats: \['nifti', 'seg', 'report', 'qc'\]",
    ):
        write_case_outputs(tmp_path / "x", label=label, formats=("nifti", "png"), **common)
    with pytest.raises(ValueError, match=r"label must have shape \(1, \*\(32, 28, 12\)\)"):
        write_case_outputs(tmp_path / "x", label=label[:, :, :, :6], **common)
    bad = label.clone()
    bad[0, 0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"values \[9\] that are not model labels"):
        write_case_outputs(tmp_path / "x", label=bad, **common)
    moved = MetaTensor(label.as_tensor(), meta=dict(label.meta))
    moved.affine = image.affine.clone()
    moved.affine[0, 3] += 2.0
    with pytest.raises(ValueError, match="label affine differs from the image's by 2 mm"):
        write_case_outputs(tmp_path / "x", label=moved, **common)
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())
    assert FORMATS == ("nifti", "seg", "report", "qc")


def test_failed_rewrite_leaves_no_earlier_report(
    dicom_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, image, label, provenance, _, _ = dicom_case
    out = tmp_path / "case"
    write_case_outputs(
        out, image=image, label=label, spec=_spec(), provenance=provenance, formats=("nifti", "report")
    )
    assert (out / "report.json").is_file()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed while drawing")

    monkeypatch.setattr("medseg.outputs.qc.write_qc_png", boom)
    with pytest.raises(RuntimeError, match="killed while drawing"):
        write_case_outputs(out, image=image, label=label, spec=_spec(), provenance=provenance)
    # the new label is written, the old report (the completion mark) is gone, no temp files
    assert (out / "label.nii.gz").is_file()
    assert not (out / "report.json").exists() and not (out / "report.csv").exists()
    _no_temp_files(out)
