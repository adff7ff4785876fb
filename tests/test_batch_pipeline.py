"""``pipelines/segment_archive.py``: a real checkpoint loaded by URI, two worker processes, resume, exit codes."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest
from model_specs import save_unet_checkpoint
from test_batch_support import write_archive

from medseg.batch import LEDGER_FILE
from medseg.batch.publish import sha256_file

PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "segment_archive.py"


def _pipeline():
    spec = importlib.util.spec_from_file_location("segment_archive_pipeline", PIPELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
        return conn.execute(
            "SELECT key, status, output, checksums, attempts FROM items ORDER BY key"
        ).fetchall()


@pytest.mark.slow  # two spawned workers import torch and MONAI afresh
def test_two_workers_then_resume_with_one_and_the_same_labels_as_a_single_process(tmp_path, capsys):
    archive = write_archive(tmp_path / "in", n_good=4, bad=False)
    ckpt = save_unet_checkpoint(tmp_path / "model.pt", features=(2, 4), patch=16)
    main = _pipeline().main
    out, single = tmp_path / "out", tmp_path / "single"
    common = ["--model", str(ckpt), "--formats", "nifti,report", "--no-progress", "--device", "cpu"]

    assert main([str(archive.root), str(out), *common, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "DONE              4  4 computed now, 0 already done" in printed and "json report:" in printed
    rows = _rows(out)
    assert [(r[1], r[4]) for r in rows] == [("DONE", 1)] * 4  # every item once, by one of the workers
    report = json.loads((out / "batch-report.json").read_text())
    assert report["settings"]["workers"] == 2 and report["model"]["weights_sha256"] == sha256_file(ckpt)

    assert main([str(archive.root), str(out), *common]) == 0  # resume: same model, nothing to do
    assert "DONE              4  0 computed now, 4 already done" in capsys.readouterr().out

    assert main([str(archive.root), str(single), *common]) == 0
    key_file = ".medseg-name-key"
    assert (single / key_file).read_bytes() != (out / key_file).read_bytes()  # each folder has its own key
    by_content = sorted(sha256_file(out / r[2] / "label.nii.gz") for r in rows)
    assert by_content == sorted(sha256_file(single / r[2] / "label.nii.gz") for r in _rows(single))


def test_pipeline_exit_codes_for_bad_model_and_bad_arguments(tmp_path, capsys):
    archive = write_archive(tmp_path / "in", n_good=1, bad=False)
    main = _pipeline().main
    assert main([str(archive.root), str(tmp_path / "out"), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main([str(archive.root), str(archive.root), "--model", "x.pt"]) == 2
    assert "must not be the input or contain it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(archive.root), str(tmp_path / "out"), "--model", "x.pt", "--formats", "nifti,png"])
    assert exc.value.code == 2
    assert "formats must be a comma-separated list of nifti, seg, report, qc" in capsys.readouterr().err
