"""Faults a batch run must survive through the real ``medseg segment`` command: SIGTERM mid-run (the case in flight
rolls back, the ledger and reports stay consistent, a rerun completes) and an output folder that cannot be written
(refused before the model is loaded or anything is computed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch_support import write_archive

from medseg.atomic import TEMP_PREFIX
from medseg.batch import LEDGER_FILE, REPORT_JSON
from medseg.checkpoint import Checkpoint, save_checkpoint
from medseg.inference.options import InferenceOptions

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# ``medseg segment`` in a subprocess, with the slowed thresholding network registered under the name "threshold"
_RUN = """
import sys
sys.path.insert(0, {tests!r})
import test_batch_support as s
from medseg.nets.registry import NETWORKS
class Slow(s.ThresholdNet):
    def __init__(self, delay_s: float = {delay}) -> None:
        super().__init__(delay_s)
NETWORKS["threshold"] = Slow
from medseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("archive"), n_good=8, bad=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from test_batch_support import threshold_spec

    return save_checkpoint(
        tmp_path_factory.mktemp("model") / "threshold.pt", Checkpoint({}, threshold_spec())
    )


def _segment(archive, out: Path, model: Path, delay: float, **kw) -> subprocess.Popen:
    code = _RUN.format(tests=str(TESTS), delay=delay)
    return subprocess.Popen(
        [sys.executable, "-c", code, "segment", str(archive.root), str(out), "--model", str(model),
         "--no-progress", "--formats", "nifti,report"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


def _statuses(out: Path) -> dict[str, str]:
    with contextlib.closing(
        sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True, timeout=5)
    ) as conn:
        return dict(conn.execute("SELECT key, status FROM items").fetchall())


def _wait_done(out: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(sqlite3.OperationalError, FileNotFoundError):
            if (out / LEDGER_FILE).exists() and list(_statuses(out).values()).count("DONE") >= at_least:
                return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {at_least} DONE items in time; stderr: {proc.communicate()[1][-2000:]}")


def test_sigterm_rolls_back_the_case_in_flight_and_writes_the_reports(archive, model, tmp_path):
    out = tmp_path / "out"
    proc = _segment(archive, out, model, delay=0.3)
    _wait_done(out, proc, at_least=2)
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr, stderr
    statuses = _statuses(out)
    done = {k for k, s in statuses.items() if s == "DONE"}
    assert 2 <= len(done) < 8 and set(statuses.values()) <= {"DONE", "PENDING"}
    # the case in flight was rolled back: no temp folder, and only finished cases have folders
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert {p.name for p in out.iterdir() if p.is_dir()} == done
    # the batch report was written on the way out and agrees with the ledger
    report = json.loads((out / REPORT_JSON).read_text())
    text = json.dumps(report)
    assert all(key in text for key in statuses)
    # a rerun finishes the rest and recomputes nothing that was done
    again = _segment(archive, out, model, delay=0.0)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert set(_statuses(out).values()) == {"DONE"} and len(_statuses(out)) == 8
    assert f"{len(done)} already done" in stdout


def _read_only_folder(path: Path) -> bool:
    """Make ``path`` a folder nobody may write into, root included (immutable attribute); False if unsupported."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_unwritable_output_is_refused_at_preflight(archive, model, tmp_path, capsys, monkeypatch):
    """An output that cannot be written is refused with one line, before the model is loaded or a file is made."""
    from test_batch_support import ThresholdNet

    from medseg.cli import main
    from medseg.nets.registry import NETWORKS

    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)

    def segment(out: Path) -> str:
        code = main(["segment", str(archive.root), str(out), "--model", str(model), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert "not-a-folder is not a folder" in segment(blocker / "out")
    ro = tmp_path / "ro"
    if not _read_only_folder(ro):
        pytest.skip("cannot make a read-only folder here")
    try:
        for out in (ro, ro / "sub"):
            assert "the output folder is not writable" in segment(out)
            assert list(ro.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], check=False)
        else:
            ro.chmod(stat.S_IRWXU)


def test_outputs_inside_the_input_and_links_outside_it_are_never_input(tmp_path, caplog):
    """A results folder left inside the input tree is not segmented by a later run, and a file link pointing
    outside the input folder is not followed (a loop of links does not trap discovery)."""
    import shutil

    import nibabel as nib
    import numpy as np
    from test_batch_support import NAME_KEY, threshold_predictor

    from medseg.batch import segment_archive

    archive = write_archive(tmp_path / "archive", n_good=2, bad=False)
    first = segment_archive(archive.root, archive.root / "results", threshold_predictor(), name_key=NAME_KEY,
                            progress=False, formats=("nifti", "report"))  # fmt: skip
    assert (first.done, first.total) == (2, 2)
    assert len(list((archive.root / "results").rglob("label.nii.gz"))) == 2
    # a NIfTI elsewhere, linked into the input; and a link loop
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), elsewhere / "secret.nii.gz")
    (archive.root / "linked.nii.gz").symlink_to(elsewhere / "secret.nii.gz")
    (archive.root / "loop_a.nii.gz").symlink_to(archive.root / "loop_b.nii.gz")
    (archive.root / "loop_b.nii.gz").symlink_to(archive.root / "loop_a.nii.gz")
    (archive.root / "dirloop").symlink_to(archive.root, target_is_directory=True)
    with caplog.at_level("WARNING", logger="medseg.batch.discover"):
        second = segment_archive(archive.root, tmp_path / "second", threshold_predictor(), name_key=NAME_KEY,
                                 progress=False, formats=("nifti", "report"))  # fmt: skip
    assert (second.done, second.total) == (2, 2)  # the two studies; no earlier label map, no linked file
    assert "1 medseg output folder(s) inside the input passed over" in caplog.text
    assert "1 symbolic link(s) to files outside the input folder not followed" in caplog.text
    shutil.rmtree(tmp_path / "second")


def _end_slice(series_folder: Path) -> Path:
    import pydicom

    files = sorted(series_folder.iterdir())
    return max(files, key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))


def test_an_input_that_changed_after_it_was_segmented_is_segmented_again(tmp_path):
    """A series still being copied when a run segments it ends DONE with the slices it had (nothing can tell),
    but the next run sees that its files changed and segments it again instead of calling it done."""
    import nibabel as nib
    from test_batch_support import NAME_KEY, threshold_predictor

    from medseg.batch import segment_archive

    archive = write_archive(tmp_path / "archive", n_good=2, bad=False)
    last = _end_slice(archive.good[0] / "CT")
    held = tmp_path / "held.dcm"
    last.rename(held)  # not copied yet
    out = tmp_path / "out"
    first = segment_archive(archive.root, out, threshold_predictor(), name_key=NAME_KEY, progress=False,
                            formats=("nifti", "report"))  # fmt: skip
    assert first.done == 2
    shapes = sorted(nib.load(f).shape[2] for f in out.glob("*/label.nii.gz"))
    held.rename(last)  # the copy completes
    second = segment_archive(archive.root, out, threshold_predictor(), name_key=NAME_KEY, progress=False,
                             formats=("nifti", "report"))  # fmt: skip
    assert (second.done, second.already_done, second.redone, second.processed) == (2, 1, 1, 1)
    assert sorted(nib.load(f).shape[2] for f in out.glob("*/label.nii.gz")) == [shapes[1], shapes[1]]
    assert shapes[0] == shapes[1] - 1
    third = segment_archive(archive.root, out, threshold_predictor(), name_key=NAME_KEY, progress=False,
                            formats=("nifti", "report"))  # fmt: skip
    assert (third.already_done, third.processed) == (2, 0)


def test_an_input_changing_during_its_segmentation_is_quarantined_and_retried(tmp_path):
    """A file that grows while its study is computed (a copy in progress) gives INPUT_CHANGED and no output; the
    next run, once the file is stable, segments it."""
    import os

    from test_batch_support import NAME_KEY, ThresholdNet, threshold_spec

    from medseg.batch import segment_archive
    from medseg.inference import Predictor

    archive = write_archive(tmp_path / "archive", n_good=1, bad=False)
    victim = sorted((archive.good[0] / "CT").iterdir())[3]

    class TouchOnce(ThresholdNet):
        """The thresholding network; its first forward pass changes an input file (as a copy would)."""

        touched = False

        def forward(self, x):
            if not TouchOnce.touched:
                TouchOnce.touched = True
                st = victim.stat()
                os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
            return super().forward(x)

    out = tmp_path / "out"
    first = segment_archive(archive.root, out, Predictor(TouchOnce(), threshold_spec(), InferenceOptions(device="cpu")),
                            name_key=NAME_KEY, progress=False, formats=("nifti", "report"))  # fmt: skip
    assert (first.done, first.quarantined) == (0, 1) and first.reasons() == {"INPUT_CHANGED": 1}
    assert not [p for p in out.iterdir() if p.is_dir()]  # nothing published for the changed input
    second = segment_archive(archive.root, out, Predictor(TouchOnce(), threshold_spec(), InferenceOptions(device="cpu")),
                             name_key=NAME_KEY, progress=False, formats=("nifti", "report"))  # fmt: skip
    assert (second.done, second.quarantined, second.processed) == (1, 0, 1)


def test_seg_of_a_source_without_type2_patient_attributes_and_no_name_on_stderr(tmp_path, model):
    """Sources lacking PatientSex (type 2, often dropped by anonymizers) still get a SEG, with the attribute empty;
    and highdicom's warning about a one-component patient name (which quotes the name) never reaches stderr."""
    import pydicom

    archive = write_archive(tmp_path / "archive", n_good=1, bad=False)
    for f in (archive.good[0] / "CT").iterdir():
        ds = pydicom.dcmread(f)
        del ds.PatientSex
        ds.PatientName = "ZEBRACANARYSINGLE"
        ds.save_as(f)
    out = tmp_path / "out"
    code = _RUN.format(tests=str(TESTS), delay=0.0)
    done = subprocess.run([sys.executable, "-c", code, "segment", str(archive.root), str(out), "--model", str(model),
                           "--no-progress", "--formats", "nifti,seg"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ZEBRACANARYSINGLE" not in done.stderr + done.stdout
    (seg_file,) = out.glob("*/seg.dcm")
    seg = pydicom.dcmread(seg_file)
    assert seg.PatientSex == "" and str(seg.PatientName) == "ZEBRACANARYSINGLE"  # copied as the source has it


def _file_limit(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_fails_the_case_or_stops_the_run_with_one_line_and_nothing_partial(tmp_path, model):
    """Writes refused by the file system (RLIMIT_FSIZE stands in for a full disk): an output that cannot be written
    fails its case (FAILED, temp folder removed, retried next run); a ledger that cannot be written stops the run
    with one line. Either way no partial file is left and the next run, with space, completes."""
    import nibabel as nib
    import numpy as np

    inp = tmp_path / "in"
    inp.mkdir()
    noise = (
        np.random.default_rng(0).normal(-500, 400, size=(128, 128, 64)).astype(np.int16)
    )  # incompressible labels
    nib.save(nib.Nifti1Image(noise, np.diag([0.8, 0.8, 2.0, 1.0])), inp / "ct.nii.gz")
    out = tmp_path / "out"
    code = _RUN.format(tests=str(TESTS), delay=0.0)
    argv = [sys.executable, "-c", code, "segment", str(inp), str(out), "--model", str(model), "--no-progress",
            "--formats", "nifti,report"]  # fmt: skip

    # room for the ledger and the reports, not for the label map
    limited = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                             preexec_fn=_file_limit(150_000))  # fmt: skip
    assert limited.returncode == 1, limited.stderr  # 1: a case FAILED, to be retried
    assert "Traceback" not in limited.stderr
    assert set(_statuses(out).values()) == {"FAILED"}
    assert not [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)] and not list(
        out.glob("*/label.nii.gz")
    )
    # no room for the ledger either
    out2 = tmp_path / "out2"
    argv2 = [*argv[:4], str(inp), str(out2), *argv[6:]]
    starved = subprocess.run(argv2, cwd=REPO, capture_output=True, text=True, timeout=300,
                             preexec_fn=_file_limit(8_000))  # fmt: skip
    assert starved.returncode == 2, starved.stderr
    lines = [line for line in starved.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write the run ledger" in lines[0] and "Traceback" not in starved.stderr
    # with space again, the first output folder completes
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert set(_statuses(out).values()) == {"DONE"} and len(list(out.glob("*/label.nii.gz"))) == 1


def test_hostile_file_names_are_data_never_commands(tmp_path, monkeypatch):
    """Folder and file names with ';', '$(...)', back-quotes and newlines are segmented like any other and listed
    verbatim where paths are listed (quarantine.csv, a real CSV); nothing is ever run."""
    import csv

    import nibabel as nib
    import numpy as np
    from test_batch_support import NAME_KEY, threshold_predictor, write_good_study

    from medseg.batch import QUARANTINE_CSV, segment_archive

    monkeypatch.chdir(tmp_path)  # a command that ran would leave PWNED here or in the archive
    archive = tmp_path / "archive"
    hostile = "a;touch PWNED;$(touch PWNED)`touch PWNED`\nb"
    study = write_good_study(archive / hostile, 0)
    (archive / "x;$(touch PWNED)\n.nii.gz").write_bytes(b"not a nifti")  # a broken file with a hostile name
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), archive / "ok $(touch PWNED);.nii.gz")
    summary = segment_archive(archive, tmp_path / "out", threshold_predictor(), name_key=NAME_KEY, progress=False,
                              formats=("nifti", "report"))  # fmt: skip
    assert study.exists() and summary.done == 2 and summary.quarantined == 1, summary.table()
    assert not list(tmp_path.rglob("PWNED"))
    with open(tmp_path / "out" / QUARANTINE_CSV, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["item_path"] == "x;$(touch PWNED)\n.nii.gz"


def _move_alias_then_register(tracking_uri: str, name: str, version: int) -> None:
    """Worker set-up: move ``@champion`` to another version (as a colleague registering a model mid-run would), then
    register the thresholding network so that the worker can build the model."""
    from mlflow import MlflowClient
    from test_batch_support import register_threshold

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, "champion", str(version)
    )
    register_threshold()


def test_workers_keep_the_version_an_alias_had_when_the_run_started(tmp_path, monkeypatch):
    """models:/NAME@champion is resolved once, by the run; workers load that version even if the alias moves while
    they start, so every case of a run comes from one model and its provenance says which."""
    import functools
    import json

    from test_batch_support import NAME_KEY, ThresholdNet, threshold_spec

    from medseg.batch import ScaleOut, segment_archive
    from medseg.nets.registry import NETWORKS
    from medseg.tracking import RunLogger, TrackingConfig, register_model, resolve_tracking_uri

    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)  # here; the workers register it in their set-up
    uri = resolve_tracking_uri(None, {}, tmp_path / "mlflow")
    for label_name in ("body", "tissue"):  # version 1, then version 2 (which takes @champion)
        spec = threshold_spec(body=label_name)
        ckpt = save_checkpoint(tmp_path / f"{label_name}.pt", Checkpoint({}, spec))
        with RunLogger(TrackingConfig(experiment="alias", timeout_s=10), uri, tmp_path / "spool").start(
            "t"
        ) as run:
            register_model(run, ckpt, spec.to_dict(), "alias-test")
    archive = write_archive(tmp_path / "archive", n_good=4, bad=False)
    setup = functools.partial(_move_alias_then_register, uri, "alias-test", 1)
    summary = segment_archive(archive.root, tmp_path / "out", "models:/alias-test@champion", tracking_uri=uri,
                              workers=2, name_key=NAME_KEY, progress=False, formats=("nifti", "report"),
                              scale=ScaleOut(worker_setup=setup))  # fmt: skip
    assert summary.done == 4, summary.table()
    for report in (tmp_path / "out").glob("*/report.json"):
        data = json.loads(report.read_text())
        assert list(data["labels"]) == ["tissue"], data["labels"]  # version 2's model in every case
        assert data["provenance"]["model_version"] == "2"
