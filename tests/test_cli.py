"""The medseg command: info and convert on synthetic studies; errors exit 2 with a reason code."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.data.dicom import read_dicom
from medseg.synthetic.dataset import write_ct_study

CANARY_NAME = "CANARY^PATIENT"
CANARY_ID = "CANARY-ID-0042"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    write_ct_study(root / "a", orientation="oblique", shape=(24, 20, 12), seed=1,
                   patient_name=CANARY_NAME, patient_id=CANARY_ID)
    write_ct_study(root / "b", orientation="sagittal", shape=(24, 20, 12), seed=2,
                   patient_name=CANARY_NAME, patient_id=CANARY_ID)
    (root / "a" / "notes.txt").write_text("not dicom")
    return root


def test_info_lists_series_without_patient_identifiers(archive, capsys):
    assert main(["info", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "2 series" in out
    # SeriesDescription is free text (it can hold identifiers): shown only with --show-descriptions
    assert "synthetic CT" not in out
    assert main(["info", "--show-descriptions", str(archive)]) == 0
    described = capsys.readouterr().out
    assert "synthetic CT oblique" in described and "synthetic CT sagittal" in described
    assert "shape=24x20x12" in out and "spacing=1.5x1.5x2.5" in out
    assert "a/notes.txt: NOT_DICOM" in out
    assert CANARY_NAME not in out and CANARY_ID not in out and "CANARY" not in out


def test_convert_needs_a_rule_when_ambiguous(archive, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    assert main(["convert", str(archive), str(out)]) == 2
    err = capsys.readouterr().err
    assert "AMBIGUOUS_SERIES" in err and "series_number=" in err and "synthetic CT" not in err
    assert not out.exists()


def test_convert_with_rule_matches_reader_and_keeps_existing(archive, tmp_path, capsys):
    out = tmp_path / "sag.nii.gz"
    assert main(["convert", str(archive), str(out), "--description", "sagittal$"]) == 0
    vol, aff, _ = read_dicom(archive / "b" / "CT")
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)
    before = out.read_bytes()
    assert main(["convert", str(archive / "a" / "CT"), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["convert", str(archive / "a" / "CT"), str(out), "--force"]) == 0
    assert out.read_bytes() != before


def test_missing_input_exit_code(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "FILE_NOT_FOUND" in capsys.readouterr().err


def test_help_does_not_import_heavy_modules():
    code = "import sys; from medseg.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'monai', 'mlflow', 'SimpleITK') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_files_and_folders(tmp_path, capsys):
    import json

    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    gt = np.zeros((20, 20, 10), np.uint8)
    gt[5:15, 5:15, 2:8] = 1
    pred = gt.copy()
    pred[5:15, 5:10, 2:8] = 0  # half of the object found
    for folder in ("p", "g"):
        (tmp_path / folder).mkdir()
    nib.save(nib.Nifti1Image(pred, aff), str(tmp_path / "p" / "case1.nii.gz"))
    nib.save(nib.Nifti1Image(gt, aff), str(tmp_path / "g" / "case1.nii.gz"))
    assert main(["evaluate", str(tmp_path / "p" / "case1.nii.gz"), str(tmp_path / "g" / "case1.nii.gz")]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["dice"] == pytest.approx(2 * 300 / (300 + 600))
    out = tmp_path / "m.csv"
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g"), "--out", str(out)]) == 0
    assert out.is_file() and "case1" in out.read_text()
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g" / "case1.nii.gz")]) == 2
