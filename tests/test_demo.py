"""The demo's whole chain on a tiny budget: convert, train + register, segment a DICOM archive by model URI."""

from __future__ import annotations

import logging

import pytest

from medseg.cli import DEMO_MARKER, main
from medseg.demo import run_demo

TINY = ("train.epochs=2", "network.features=[4,8,16]", "train.patch_size=[16,16,8]", "train.val_every=1")


@pytest.mark.slow
def test_demo_chain_runs_end_to_end(tmp_path):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    result = run_demo(tmp_path / "demo", n_train=4, n_archive=2, overrides=TINY)
    assert result.model_uri == "models:/medseg-demo-perfusion@champion"
    assert result.tracking_uri.startswith("sqlite:///") and (tmp_path / "demo" / "mlflow" / "mlruns.db").is_file()
    assert sorted(result.archive_dice) == ["study_000", "study_001"]
    assert all(0.0 <= d <= 1.0 for d in result.archive_dice.values())
    outputs = [p for p in (tmp_path / "demo" / "segmentations").iterdir() if p.is_dir()]
    assert len(outputs) == 2
    for case in outputs:
        assert {"label.nii.gz", "report.json", "qc.png"} <= {p.name for p in case.iterdir()}


def test_demo_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    assert main(["demo", "--out", str(precious)]) == 2
    assert "not a medseg demo folder" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "do not delete"
    assert not (precious / DEMO_MARKER).exists()
