"""Batch building blocks: keyed names, the ledger, the progress line, prefetching, publishing, discovery of NIfTI
and multimodal inputs, and the runner's argument checks."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_batch_support import NAME_KEY, SHAPE, THRESHOLD_HU, threshold_predictor, write_archive

from medseg.atomic import TEMP_PREFIX
from medseg.batch import (
    KEY_FILE,
    ItemKind,
    Ledger,
    LedgerError,
    OutputLockedError,
    Status,
    discover,
    keyed_name,
    load_or_create_key,
    segment_archive,
)
from medseg.batch.prefetch import LoadFailure, Prefetcher
from medseg.batch.process import scrub
from medseg.batch.progress import ProgressBar, format_duration, format_progress
from medseg.batch.publish import clean_stale_temps, folder_matches, lock_output, publish_folder, sha256_file
from medseg.config import ChannelConfig
from medseg.data.io import save_image
from medseg.errors import ConfigError, InputError, ReasonCode
from medseg.inference.options import InferenceOptions
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series
from medseg.synthetic.phantoms import make_ct_phantom

TWO_CHANNELS = (("CT", "CT"), ("MR", "MR"))


# ------------------------------------------------------------------------------------------------ naming
def test_keyed_names_depend_on_key_and_parts_only():
    a = keyed_name(NAME_KEY, "series", "1.2.3")
    assert a == keyed_name(NAME_KEY, "series", "1.2.3") and len(a) == 24 and int(a, 16) >= 0
    assert a != keyed_name(NAME_KEY, "series", "1.2.4")
    assert a != keyed_name(NAME_KEY, "study", "1.2.3")
    assert a != keyed_name(bytes(reversed(NAME_KEY)), "series", "1.2.3")
    assert keyed_name(NAME_KEY, "a", "bc") != keyed_name(NAME_KEY, "ab", "c")  # parts are separated
    with pytest.raises(ValueError, match="at least 16 bytes"):
        keyed_name(b"short", "x")
    with pytest.raises(ValueError, match="non-empty text parts"):
        keyed_name(NAME_KEY, "")


def test_the_naming_key_is_created_once_private_and_reused(tmp_path):
    key = load_or_create_key(tmp_path)
    assert len(key) == 32 and load_or_create_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
    (tmp_path / KEY_FILE).write_text("zz-not-hex")
    with pytest.raises(ValueError, match="naming key file is damaged"):
        load_or_create_key(tmp_path)


# ------------------------------------------------------------------------------------------------ ledger
def test_ledger_rows_and_status_transitions(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        with sqlite3.connect(tmp_path / "l.sqlite") as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        run = ledger.begin_run("0", {})
        ledger.sync([("a", "series", None), ("b", "series", "MISSING_SLICE"), ("c", "file", None)], run)
        assert ledger.counts(run_id=run) == {"PENDING": 2, "DONE": 0, "QUARANTINED": 1, "FAILED": 0}
        ledger.mark_started("a")
        ledger.mark_done(
            "a", output="a", checksums={"label.nii.gz": "ff"}, formats=["nifti"], timings={"total": 1.5}
        )
        ledger.mark_started("c")
        ledger.mark_failed("c", "RuntimeError: x" * 200, seconds=0.1)
        row = ledger.get("a")
        assert (row.status, row.checksums, row.formats, row.attempts, row.seconds_total) == (
            Status.DONE,
            {"label.nii.gz": "ff"},
            ["nifti"],
            1,
            1.5,
        )
        assert ledger.get("b").reason == "MISSING_SLICE" and len(ledger.get("c").error) == 1000
        # next run: the bad input was fixed, the done one stays done, the failed one stays failed (to retry)
        run2 = ledger.begin_run("0", {})
        ledger.sync([("a", "series", None), ("b", "series", None), ("c", "file", None)], run2)
        assert [(r.key, r.status, r.reason) for r in ledger.rows(run_id=run2)] == [
            ("a", Status.DONE, None),
            ("b", Status.PENDING, None),
            ("c", Status.FAILED, None),
        ]
        with pytest.raises(KeyError, match="not in the ledger"):
            ledger.mark_started("zzz")
        ledger.bind("model", "abc", "model")
        ledger.bind("model", "abc", "model")
        with pytest.raises(LedgerError, match="different model"):
            ledger.bind("model", "abd", "model")
        with pytest.raises(LedgerError, match="different model"):  # "abc" is not an earlier form of "new"
            ledger.bind("model", "new", "model", earlier=("old",))
        ledger.bind("model", "new", "model", earlier=("old", "abc"))  # an earlier form: rewritten
        assert ledger.get_meta("model") == "new"
        with pytest.raises(LedgerError, match="different model"):
            ledger.bind("model", "abc", "model")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        Ledger.open(tmp_path / "junk.sqlite")


# ------------------------------------------------------------------------------------------------ progress
def test_progress_line_and_durations():
    assert format_progress(5, 20, 10.0, {"DONE": 4, "FAILED": 1, "QUARANTINED": 0}, width=10) == (
        "[##........] 5/20  25%  2 s/item  ETA 00:30  elapsed 00:10  DONE 4 FAILED 1"
    )
    assert "ETA --:--" in format_progress(0, 3, 1.0)
    assert (format_duration(3725.2), format_duration(59.6), format_duration(None)) == (
        "1:02:05",
        "01:00",
        "--:--",
    )
    with pytest.raises(ValueError, match=">= 0"):
        format_progress(-1, 3, 1.0)


def test_progress_bar_draws_only_on_a_terminal():
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, tty = io.StringIO(), TTY()
    for stream in (plain, tty):
        with ProgressBar(2, stream=stream, min_interval=0.0) as bar:
            bar.update("DONE")
            bar.update("QUARANTINED")
    assert plain.getvalue() == ""
    assert tty.getvalue().startswith("\r[") and "2/2 100%" in tty.getvalue() and tty.getvalue().endswith("\n")
    silent = TTY()
    with ProgressBar(2, stream=silent, enabled=False) as bar:
        bar.update("DONE")
    assert silent.getvalue() == ""


# ------------------------------------------------------------------------------------------------ prefetch
def test_prefetcher_keeps_order_passes_failures_and_reads_at_most_two_ahead():
    loaded: list[int] = []
    consumed: list[int] = []
    ahead: list[int] = []

    def load(i: int) -> int:
        if i == 3:
            raise InputError(ReasonCode.UNREADABLE, "x", "bad")
        loaded.append(i)
        ahead.append(len(loaded) - len(consumed))
        return i * 10

    results = []
    with Prefetcher(list(range(8)), load) as pre:
        for r in pre:
            time.sleep(0.01)  # compute slower than reading: the reader waits on the bounded queue
            consumed.append(1)
            results.append(r)
    assert [r for r in results if not isinstance(r, LoadFailure)] == [0, 10, 20, 40, 50, 60, 70]
    failure = results[3]
    assert (
        isinstance(failure, LoadFailure) and failure.item == 3 and failure.error.code == ReasonCode.UNREADABLE
    )
    assert max(ahead) <= 3  # the item being computed + one waiting in the queue + the one being read


def test_prefetcher_stops_its_thread_when_left_early():
    with Prefetcher(list(range(100)), lambda i: i) as pre:
        for r in pre:
            if r == 2:
                break
    assert not any(t.name == "medseg-prefetch" for t in threading.enumerate())


# ------------------------------------------------------------------------------------------------ publishing
def test_stale_temps_are_cleaned_and_folders_published_atomically(tmp_path):
    (tmp_path / f"{TEMP_PREFIX}abc").mkdir()
    (tmp_path / f"{TEMP_PREFIX}abc" / "label.nii.gz").write_bytes(b"partial")
    (tmp_path / f"{TEMP_PREFIX}x.json").write_text("{")
    (tmp_path / "keep").mkdir()
    assert clean_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]

    new = tmp_path / f"{TEMP_PREFIX}new"
    new.mkdir()
    (new / "a.txt").write_text("new")
    (tmp_path / "keep" / "a.txt").write_text("old")
    (tmp_path / "keep" / "old-only.txt").write_text("old")
    publish_folder(new, tmp_path / "keep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["a.txt"]
    sums = {"a.txt": sha256_file(tmp_path / "keep" / "a.txt")}
    assert folder_matches(tmp_path / "keep", sums)
    assert not folder_matches(tmp_path / "keep", {**sums, "b.txt": sums["a.txt"]})
    (tmp_path / "keep" / "a.txt").write_text("NEW")
    assert not folder_matches(tmp_path / "keep", sums)


def test_a_second_run_on_a_locked_output_folder_is_refused(tmp_path):
    archive = write_archive(tmp_path / "in", n_good=1, bad=False)
    out = tmp_path / "out"
    out.mkdir()
    with lock_output(out):
        with pytest.raises(OutputLockedError, match="another medseg batch run"):
            segment_archive(archive.root, out, threshold_predictor(), formats=("nifti",), progress=False)


def test_an_output_folder_inside_the_input_is_not_taken_for_input(tmp_path):
    archive = write_archive(tmp_path / "in", n_good=1, bad=False)
    out = archive.root / "results"
    for _ in range(2):
        summary = segment_archive(
            archive.root, out, threshold_predictor(), formats=("nifti", "seg"), progress=False
        )
        assert (summary.total, summary.done) == (
            1,
            1,
        )  # label.nii.gz and seg.dcm of the first run are not inputs


def test_scrub_removes_the_input_root_and_the_item_path():
    root = Path("/data/archive")
    text = "cannot read /data/archive/DOE JOHN/CT/IM1.dcm: 'DOE JOHN' broken; also /data/archive/OTHER/x.dcm"
    out = scrub(text, root, ["DOE JOHN", "CT"])
    assert "DOE" not in out and "OTHER" not in out and "/data" not in out
    assert out == "cannot read <input>/<redacted>: '<redacted>' broken; also <input>/<redacted>"


# ------------------------------------------------------------------------------------------------ discovery
def _nifti(path: Path, value: float = 0.0, shape=(10, 10, 6)) -> Path:
    arr = np.full(shape, value, dtype=np.float32)
    arr[2:8, 2:8, 1:5] = 100.0
    return save_image(arr, path, affine=np.diag([1.5, 1.5, 2.0, 1.0]))


def test_discovery_of_nifti_files_case_folders_and_junk(tmp_path):
    root = tmp_path / "in"
    _nifti(root / "loose.nii.gz")
    _nifti(root / "case_a" / "CT.nii.gz")
    _nifti(root / "case_a" / "MR.nii.gz")
    _nifti(root / "case_a" / "label.nii.gz")
    _nifti(root / "case_b" / "ct.nii.gz")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "results").mkdir()
    _nifti(root / "results" / "old.nii.gz")
    channels = [ChannelConfig(n, series={"modality": m}) for n, m in TWO_CHANNELS]

    found = discover(root, channels, NAME_KEY, exclude=[root / "results"])
    items = {it.relative_path: it for it in found.items}
    assert set(items) == {"loose.nii.gz", "case_a", "case_b", "notes.txt"}
    assert items["case_a"].kind == ItemKind.CASE and not items["case_a"].quarantined
    assert list(items["case_a"].sources) == ["CT", "MR"]
    assert items["case_b"].problem.code == ReasonCode.MISSING_CHANNEL  # ct.nii.gz (any case) but no MR
    assert (
        items["loose.nii.gz"].problem.code == ReasonCode.MISSING_CHANNEL
    )  # one file cannot hold two channels
    assert items["notes.txt"].problem.code == ReasonCode.NOT_DICOM
    assert items["case_a"].key == keyed_name(NAME_KEY, "case", "case_a")
    assert [it.key for it in found.items] == sorted(it.key for it in found.items)

    single = discover(root, channels[:1], NAME_KEY, exclude=[root / "results"])
    kinds = {it.relative_path: (it.kind, it.quarantined) for it in single.items}
    assert kinds["loose.nii.gz"] == (ItemKind.FILE, False) and kinds["case_b"] == (ItemKind.CASE, False)
    with pytest.raises(InputError, match="does not exist") as err:
        discover(root / "nope", channels, NAME_KEY)
    assert err.value.code == ReasonCode.FILE_NOT_FOUND


def _write_mr_like(study: Path, seed: int) -> None:
    """An MR series on the same grid and in the same study as ``write_ct_study(study, seed=seed)``."""
    import pydicom

    ct = next((study / "CT").iterdir())
    ds = pydicom.dcmread(ct, stop_before_pixels=True)
    affine = affine_for("axial", spacing=(1.5, 1.5, 2.5), shape=SHAPE)
    image = make_ct_phantom(shape=SHAPE, seed=seed, affine=affine, n_organs=2).image
    write_dicom_series(
        np.round(np.clip(image + 1000, 0, None)),
        affine,
        study / "MR",
        modality="MR",
        series_description="t1",
        study_uid=ds.StudyInstanceUID,
        frame_of_reference_uid=ds.FrameOfReferenceUID,
        seed=seed,
    )


def test_multimodal_dicom_studies_and_nifti_cases_are_segmented(tmp_path):
    archive = write_archive(tmp_path / "in", n_good=3, bad=False)  # axial, coronal, sagittal
    _write_mr_like(archive.good[0], seed=0)  # study 0: CT + MR -> a case; studies 1, 2: CT only -> no MR
    case = tmp_path / "in" / "nifti_case"
    _nifti(case / "CT.nii.gz", value=-1000.0)
    _nifti(case / "MR.nii.gz", value=0.0)
    predictor = threshold_predictor(channels=TWO_CHANNELS)
    out = tmp_path / "out"

    summary = segment_archive(
        archive.root, out, predictor, formats=("nifti", "seg"), progress=False, name_key=NAME_KEY
    )

    assert (summary.done, summary.quarantined, summary.failed) == (2, 2, 0), summary.table()
    assert summary.reasons() == {"WRONG_MODALITY": 2}  # no MR series in the CT-only studies
    kinds = sorted(r.kind for r in summary.items if r.status == Status.DONE)
    assert kinds == ["case", "study"]
    from medseg.data.dicom import read_dicom

    volume, _affine, meta = read_dicom(archive.good[0], rule={"modality": "CT"})
    study_key = keyed_name(NAME_KEY, "study", meta["study_uid"])
    label = np.asarray(nib.load(out / study_key / "label.nii.gz").dataobj)
    np.testing.assert_array_equal(label, (volume > THRESHOLD_HU).astype(np.uint8))  # from the CT channel
    assert (out / study_key / "seg.dcm").is_file()
    case_key = keyed_name(NAME_KEY, "case", "nifti_case")
    assert sorted(p.name for p in (out / case_key).iterdir()) == [
        "label.nii.gz"
    ]  # no SEG without DICOM input
    assert int(np.asarray(nib.load(out / case_key / "label.nii.gz").dataobj).sum()) == 6 * 6 * 4


def test_channels_on_different_grids_are_quarantined(tmp_path):
    case = tmp_path / "in" / "case"
    _nifti(case / "CT.nii.gz")
    _nifti(case / "MR.nii.gz", shape=(10, 10, 7))
    summary = segment_archive(
        tmp_path / "in",
        tmp_path / "out",
        threshold_predictor(channels=TWO_CHANNELS),
        formats=("nifti",),
        progress=False,
    )
    assert summary.reasons() == {"CHANNEL_GEOMETRY_MISMATCH": 1}
    text = (tmp_path / "out" / "quarantine.csv").read_text()
    assert "case: channel MR" in text and str(tmp_path) not in text


# ------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"workers": 0}, "workers must be an integer >= 1"),
        (
            {"formats": ("nifti", "png")},
            r"unknown output format\(s\) \['png'\]; valid: \['nifti', 'seg', 'report', 'qc'\]",
        ),
        ({"formats": ()}, "at least one output format"),
        ({"options": InferenceOptions(tta=True)}, "a ready Predictor has its own"),
        ({"workers": 2}, "workers > 1 needs a model URI"),
    ],
)
def test_invalid_arguments_are_refused_with_a_clear_message(tmp_path, kwargs, message):
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match=message):
        segment_archive(tmp_path / "in", tmp_path / "out", threshold_predictor(), progress=False, **kwargs)


def test_output_must_not_contain_the_input_and_input_must_exist(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match="must not be the input or contain it"):
        segment_archive(tmp_path / "in", tmp_path, threshold_predictor(), progress=False)
    with pytest.raises(InputError, match="does not exist"):
        segment_archive(tmp_path / "missing", tmp_path / "out", threshold_predictor(), progress=False)
    with pytest.raises(ConfigError, match="model must be a model URI"):
        segment_archive(tmp_path / "in", tmp_path / "out", object(), progress=False)
    assert not os.path.exists(tmp_path / "out")  # refused before anything was written
