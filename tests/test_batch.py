"""Batch runs end to end: 20 synthetic studies (3 broken) give 17 DONE + 3 QUARANTINED; SIGKILL midway and a rerun
give the same outputs as a clean run; damaged outputs are redone; canary identifiers never leak."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from test_batch_support import (
    CANARIES,
    CANARY_FOLDER,
    CANARY_ID,
    CANARY_NAME,
    NAME_KEY,
    THRESHOLD_HU,
    ThresholdNet,
    threshold_predictor,
    threshold_spec,
    write_archive,
)

from medseg.atomic import TEMP_PREFIX
from medseg.batch import (
    LEDGER_FILE,
    QUARANTINE_CSV,
    REPORT_CSV,
    REPORT_JSON,
    Status,
    keyed_name,
    segment_archive,
)
from medseg.batch.publish import sha256_file
from medseg.data.dicom import read_dicom
from medseg.errors import ConfigError
from medseg.inference import Predictor
from medseg.inference.options import InferenceOptions

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EXPECTED_QUARANTINE = {"TRUNCATED_PIXEL_DATA": 1, "MISSING_SLICE": 1, "WRONG_MODALITY": 1}
DETERMINISTIC_FILES = ("label.nii.gz", "qc.png")


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def clean_run(archive, tmp_path_factory):
    """One clean run over the archive with every log record (DEBUG) and stderr (as a terminal) captured."""
    out = tmp_path_factory.mktemp("clean") / "results"
    handler, root = _Collect(), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    stderr = _TTY()
    try:
        with contextlib.redirect_stderr(stderr):
            summary = segment_archive(
                archive.root, out, threshold_predictor(), name_key=NAME_KEY, progress=True
            )
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return summary, out, "\n".join(handler.lines), stderr.getvalue()


def _ledger_rows(out: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
        return conn.execute(
            "SELECT key, status, reason, output, checksums, attempts FROM items ORDER BY key"
        ).fetchall()


def _done_keys(out: Path) -> set[str]:
    return {r[0] for r in _ledger_rows(out) if r[1] == "DONE"}


def _case_folders(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_dir()}


def _temp_entries(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# ------------------------------------------------------------------------------------------------ the archive
def test_archive_ends_with_17_done_and_3_quarantined_with_their_codes(archive, clean_run):
    summary, out, _logs, _stderr = clean_run
    assert (summary.total, summary.done, summary.quarantined, summary.failed, summary.pending) == (
        20,
        17,
        3,
        0,
        0,
    )
    assert summary.reasons() == EXPECTED_QUARANTINE
    rows = _ledger_rows(out)
    assert len(rows) == len({r[0] for r in rows}) == 20
    assert sorted(r[2] for r in rows if r[1] == "QUARANTINED") == sorted(EXPECTED_QUARANTINE)
    # quarantine.csv names each bad study's folder with its code, for the user
    with open(out / QUARANTINE_CSV, newline="") as fh:
        entries = {row["reason"]: row for row in csv.DictReader(fh)}
    assert set(entries) == set(EXPECTED_QUARANTINE)
    for code, folder in archive.bad.items():
        assert entries[code]["item_path"].startswith(folder.name + "/"), (code, entries[code])
    assert entries["TRUNCATED_PIXEL_DATA"]["problem_path"].endswith(".dcm")
    # one case folder per DONE row, named by the row's output, nothing else
    assert _case_folders(out) == _done_keys(out) == {r[3] for r in rows if r[1] == "DONE"}
    assert _temp_entries(out) == []


def test_each_output_is_the_threshold_of_its_own_series_on_its_grid(archive, clean_run):
    _summary, out, _logs, _stderr = clean_run
    for study in archive.good:
        volume, affine, meta = read_dicom(study)
        key = keyed_name(NAME_KEY, "series", meta["stack_id"])
        img = nib.load(out / key / "label.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj), (volume > THRESHOLD_HU).astype(np.uint8))
        np.testing.assert_allclose(img.affine, affine, atol=1e-4)
        seg = pydicom.dcmread(out / key / "seg.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == meta["series_uid"]
        report = json.loads((out / key / "report.json").read_text())
        assert report["case_id"] == key
        assert report["labels"]["body"]["voxels"] == int((volume > THRESHOLD_HU).sum())


def test_ledger_checksums_match_the_files_and_the_progress_bar_showed_an_eta(clean_run):
    _summary, out, _logs, stderr = clean_run
    for key, status, _reason, output, checksums, attempts in _ledger_rows(out):
        if status != "DONE":
            continue
        assert attempts == 1 and output == key
        recorded = json.loads(checksums)
        assert {"label.nii.gz", "seg.dcm", "qc.png", "report.json"} <= set(recorded)
        assert {name: sha256_file(out / output / name) for name in recorded} == recorded
    assert "ETA" in stderr and "17/17" in stderr and stderr.endswith("\n")


def test_canary_identifiers_appear_nowhere_but_in_the_seg_and_the_quarantine_paths(archive, clean_run):
    _summary, out, logs, stderr = clean_run
    dicom_bytes = next((archive.good[0] / "CT").iterdir()).read_bytes()
    assert CANARY_NAME.encode() in dicom_bytes and CANARY_ID.encode() in dicom_bytes  # the inputs carry them
    assert all(CANARY_FOLDER in str(p) for p in archive.good)
    assert "item " in logs and "QUARANTINED [WRONG_MODALITY]" in logs  # the capture did see the run's records
    for canary in CANARIES:
        assert canary not in logs, canary
        assert canary not in stderr, canary
    names = [str(p.relative_to(out)) for p in out.rglob("*")]
    seg_files, checked = [], 0
    for path in out.rglob("*"):
        if not path.is_file() or path.name == QUARANTINE_CSV:
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        if path.name == "seg.dcm":  # a DICOM SEG must carry the patient module of its source (PACS needs it)
            seg_files.append(data)
            continue
        checked += 1
        for canary in CANARIES:
            assert canary.encode() not in data, (canary, path.name)
    assert checked > 17 * 4 and len(seg_files) == 17
    assert all(CANARY_NAME.encode() in d for d in seg_files)
    for canary in CANARIES:
        assert not any(canary in n for n in names), canary
    # the one deliberate exception: quarantine.csv lists the bad inputs' relative paths (folder names), no IDs
    text = (out / QUARANTINE_CSV).read_text()
    assert CANARY_FOLDER in text and CANARY_NAME not in text and CANARY_ID not in text


# ------------------------------------------------------------------------------------------------ kill and resume
def _poll_done(ledger: Path, proc: subprocess.Popen, at_least: int, timeout: float, log: Path) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists():
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)
                ) as conn:
                    n = conn.execute("SELECT COUNT(*) FROM items WHERE status = 'DONE'").fetchone()[0]
                if n >= at_least:
                    return n
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise AssertionError(
        f"the batch subprocess did not reach {at_least} DONE items in time (rc={proc.poll()}):\n{tail}"
    )


def _seg_content(path: Path) -> tuple:
    ds = pydicom.dcmread(path)
    refs = tuple(
        item.ReferencedSOPInstanceUID
        for f in ds.PerFrameFunctionalGroupsSequence
        for item in f.DerivationImageSequence[0].SourceImageSequence
    )
    return ds.pixel_array.tobytes(), ds.ReferencedSeriesSequence[0].SeriesInstanceUID, refs


def test_sigkill_midway_then_rerun_gives_the_clean_run_outputs(archive, clean_run, tmp_path):
    _summary, clean_out, _logs, _stderr = clean_run
    out = tmp_path / "killed"
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_batch_support as s; s.cli(sys.argv[1:])"
    )
    log = tmp_path / "subprocess.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(archive.root), str(out), NAME_KEY.hex(), "0.05"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _poll_done(out / LEDGER_FILE, proc, at_least=6, timeout=120, log=log)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done_before = _done_keys(out)
    assert 6 <= len(done_before) < 17, len(done_before)  # killed midway
    left_by_kill = _temp_entries(out)
    stale = out / f"{TEMP_PREFIX}stale-from-a-kill"  # what a kill inside a write leaves (made sure of here)
    stale.mkdir(exist_ok=True)
    (stale / "label.nii.gz").write_bytes(b"partial")

    summary = segment_archive(archive.root, out, threshold_predictor(), name_key=NAME_KEY, progress=False)

    assert (summary.done, summary.quarantined, summary.failed, summary.pending) == (17, 3, 0, 0)
    assert summary.already_done == len(done_before) and summary.processed == 17 - len(done_before)
    assert _temp_entries(out) == [], left_by_kill
    rows = _ledger_rows(out)
    assert len(rows) == len({r[0] for r in rows}) == 20
    assert _case_folders(out) == _done_keys(out) == _done_keys(clean_out)
    with open(out / REPORT_CSV, newline="") as fh:
        report_keys = [row["key"] for row in csv.DictReader(fh)]
    assert sorted(report_keys) == sorted(r[0] for r in rows)  # every item exactly once in the report
    for key in _done_keys(out):
        for name in DETERMINISTIC_FILES:
            assert sha256_file(out / key / name) == sha256_file(clean_out / key / name), (key, name)
        # SEG: same pixels and references; its creation time (and UIDs) are per output folder by design
        assert _seg_content(out / key / "seg.dcm") == _seg_content(clean_out / key / "seg.dcm")
        a = json.loads((out / key / "report.json").read_text())
        b = json.loads((clean_out / key / "report.json").read_text())
        assert a["labels"] == b["labels"] and a["input"] == b["input"]
    for _key, status, _reason, output, checksums, _attempts in rows:
        if status == "DONE":
            assert {n: sha256_file(out / output / n) for n in json.loads(checksums)} == json.loads(checksums)


# ------------------------------------------------------------------------------------------------ damaged outputs
@pytest.fixture
def small_run(tmp_path):
    archive = write_archive(tmp_path / "in", n_good=3, bad=False)
    out = tmp_path / "out"
    summary = segment_archive(
        archive.root, out, threshold_predictor(), formats=("nifti", "qc"), progress=False
    )
    assert summary.done == 3
    return archive, out


def test_a_done_item_whose_output_was_deleted_or_altered_is_redone(small_run):
    archive, out = small_run
    rows = {r[0]: json.loads(r[4]) for r in _ledger_rows(out)}
    deleted, altered, untouched = sorted(rows)
    (out / deleted / "label.nii.gz").unlink()
    qc = out / altered / "qc.png"
    data = bytearray(qc.read_bytes())
    data[len(data) // 2] ^= 0xFF
    qc.write_bytes(bytes(data))

    summary = segment_archive(
        archive.root, out, threshold_predictor(), formats=("nifti", "qc"), progress=False
    )

    assert (summary.done, summary.redone, summary.processed, summary.already_done) == (3, 2, 2, 1)
    after = {r[0]: (json.loads(r[4]), r[5]) for r in _ledger_rows(out)}
    assert after[deleted] == (rows[deleted], 2) and after[altered] == (rows[altered], 2)
    assert after[untouched] == (rows[untouched], 1)
    for key in (deleted, altered):  # restored byte for byte
        assert {n: sha256_file(out / key / n) for n in rows[key]} == rows[key]


def test_asking_for_a_format_a_done_item_lacks_redoes_it(small_run):
    archive, out = small_run
    summary = segment_archive(
        archive.root, out, threshold_predictor(), formats=("nifti", "qc", "report"), progress=False
    )
    assert (summary.done, summary.redone) == (3, 3)
    assert all((out / key / "report.json").is_file() for key in _done_keys(out))


class _FailOnce:
    """A predictor that raises for its first item, with the input's path in the message."""

    def __init__(self, inner: Predictor, text: str) -> None:
        self.inner, self.spec, self.text, self.calls = inner, inner.spec, text, 0
        self.network, self.tta, self.inferer = inner.network, inner.tta, inner.inferer

    def predict(self, image):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError(self.text)
        return self.inner.predict(image)


def test_a_failed_item_is_recorded_scrubbed_and_retried_by_the_next_run(tmp_path):
    archive = write_archive(tmp_path / "in", n_good=2, bad=False)
    out = tmp_path / "out"
    flaky = _FailOnce(
        threshold_predictor(), f"cannot open {archive.good[0] / 'CT' / 'IM00001.dcm'}: disk error"
    )
    first = segment_archive(archive.root, out, flaky, formats=("nifti",), progress=False)
    assert (first.done, first.failed, first.ok) == (1, 1, False)
    failed = [r for r in first.items if r.status == Status.FAILED][0]
    assert failed.error == "RuntimeError: cannot open <input>/<redacted>: disk error"
    report = json.loads((out / REPORT_JSON).read_text())
    assert [(i["status"], i["error"]) for i in report["items"] if i["status"] == "FAILED"] == [
        ("FAILED", failed.error)
    ]
    with open(out / QUARANTINE_CSV, newline="") as fh:  # the user's list of inputs to look at has the path
        (entry,) = list(csv.DictReader(fh))
    assert (entry["key"], entry["status"], entry["reason"]) == (failed.key, "FAILED", "RuntimeError")
    assert entry["item_path"].startswith(CANARY_FOLDER) and entry["detail"].startswith(
        "RuntimeError: cannot open"
    )

    second = segment_archive(archive.root, out, threshold_predictor(), formats=("nifti",), progress=False)
    assert (second.done, second.failed, second.processed, second.already_done, second.ok) == (
        2,
        0,
        1,
        1,
        True,
    )
    assert {r.key: r.attempts for r in second.items}[failed.key] == 2
    assert (out / QUARANTINE_CSV).read_text().count("\n") == 1  # header only: nothing needs attention now


def test_an_output_folder_refuses_results_of_another_model(small_run):
    archive, out = small_run
    other = Predictor(ThresholdNet(), threshold_spec(), InferenceOptions(device="cpu", tta=True))
    with pytest.raises(ConfigError, match="different model or inference settings"):
        segment_archive(archive.root, out, other, formats=("nifti", "qc"), progress=False)
    with pytest.raises(ConfigError, match="different naming key"):
        segment_archive(
            archive.root,
            out,
            threshold_predictor(),
            formats=("nifti", "qc"),
            progress=False,
            name_key=b"another key of 16+ bytes",
        )
