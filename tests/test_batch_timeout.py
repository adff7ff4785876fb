"""A hung worker fails only its case: past the case time limit the runner kills the worker, marks that case FAILED
(WorkerTimeout, retried by the next run), starts a replacement and the batch goes on to the end.

The hang is real: a network that, for a study holding a marker voxel, blocks SIGTERM / SIGINT and sleeps forever in
the worker process (as a process stuck in an uninterruptible system call would); only SIGKILL ends it.
"""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from test_batch_support import NAME_KEY, ThresholdNet, save_threshold_checkpoint, write_good_study

from medseg.atomic import TEMP_PREFIX
from medseg.batch import LEDGER_FILE, ScaleOut, segment_archive
from medseg.batch.deadline import AUTO_FIRST_S, CaseTimeout, parse_case_timeout
from medseg.data.dicom import read_dicom
from medseg.errors import ConfigError
from medseg.nets.registry import NETWORKS

MARK_HU = 3071.0  # a voxel of exactly this value makes the network hang
LIMIT_S = 12.0


class HangingThresholdNet(ThresholdNet):
    """:class:`ThresholdNet`, but an input holding ``MARK_HU`` never returns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == MARK_HU).any()):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            while True:
                time.sleep(3600)
        return super().forward(x)


def register_hanging() -> None:
    """Worker set-up: the network ``"threshold"`` is the hanging one."""
    NETWORKS["threshold"] = HangingThresholdNet


def _mark(study: Path) -> None:
    """Set one voxel of one slice of ``study`` to ``MARK_HU``."""
    path = sorted((study / "CT").iterdir())[5]
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[8, 8] = round((MARK_HU - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _rows(out: Path) -> dict[str, tuple]:
    with closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT key, status, attempts, error, output FROM items")}


@pytest.mark.slow  # worker processes import torch and MONAI afresh, and one waits out the limit
def test_a_hung_worker_fails_only_its_case_and_a_replacement_finishes_the_batch(tmp_path, monkeypatch):
    root = tmp_path / "in"
    studies = [write_good_study(root, i) for i in range(4)]
    _mark(studies[1])
    assert np.any(read_dicom(studies[1] / "CT")[0] == MARK_HU)
    assert not any(np.any(read_dicom(s / "CT")[0] == MARK_HU) for s in (studies[0], *studies[2:]))
    ckpt = save_threshold_checkpoint(tmp_path / "m.pt")
    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)  # the parent loads the model for its contract
    out = tmp_path / "out"

    started = time.monotonic()
    summary = segment_archive(
        root, out, str(ckpt), formats=("nifti", "report"), workers=1, progress=False, name_key=NAME_KEY,
        scale=ScaleOut(worker_setup=register_hanging, case_timeout=LIMIT_S),
    )  # fmt: skip
    elapsed = time.monotonic() - started

    rows = _rows(out)
    assert summary.counts() == {"DONE": 3, "QUARANTINED": 0, "FAILED": 1, "PENDING": 0}, summary.table()
    assert len(rows) == 4  # DONE + QUARANTINED + FAILED == discovered
    hung = next(k for k, r in rows.items() if r[0] == "FAILED")
    assert rows[hung][2].startswith("WorkerTimeout: no result after 12 s"), rows[hung][2]
    assert all(r[1] == 1 for r in rows.values())  # one attempt each: nothing handed out twice
    assert not (out / hung).exists() and rows[hung][3] is None  # no partial output for the hung case
    assert not [p.name for p in out.rglob(f"{TEMP_PREFIX}*")]
    for key, r in rows.items():
        if r[0] == "DONE":
            assert (out / r[3] / "label.nii.gz").is_file(), key
    with open(out / "quarantine.csv", newline="") as fh:
        entries = {row["key"]: row for row in csv.DictReader(fh)}
    assert entries[hung]["reason"] == "WorkerTimeout" and entries[hung]["item_path"].startswith(studies[1].name)
    assert not [p for p in mp.active_children() if p.name.startswith("medseg-batch-worker")]  # all reaped
    # two worker start-ups, the limit and four small cases: far from "forever"
    assert LIMIT_S < elapsed < LIMIT_S + 150, elapsed


def test_case_timeout_settings_and_the_automatic_limit():
    auto = parse_case_timeout("auto")
    assert auto == CaseTimeout() and auto.auto
    assert parse_case_timeout(None) is None and parse_case_timeout("off") is None
    assert parse_case_timeout(900) == CaseTimeout(900.0) and parse_case_timeout(" 45.5 ").fixed_s == 45.5
    # auto: an hour until three cases have finished, then max(600 s, 20 x their median)
    assert auto.limit([]) == auto.limit([5.0, 7.0]) == AUTO_FIRST_S
    assert auto.limit([5.0, 7.0, 9.0]) == 600.0
    assert auto.limit([100.0, 40.0, 50.0, 45.0]) == 20 * 47.5
    assert CaseTimeout(30.0).limit([1000.0] * 5) == 30.0
    for bad in (0, -5, "soon", True, math.nan, math.inf, [10]):
        with pytest.raises(ConfigError, match=r"case_timeout: expected 'auto', 'off' or a number of seconds > 0, got"):
            parse_case_timeout(bad)


def test_a_fixed_limit_needs_a_model_the_workers_can_load_and_a_bad_value_is_refused_before_any_work(tmp_path):
    from test_batch_support import threshold_predictor

    root = tmp_path / "in"
    write_good_study(root, 0)
    with pytest.raises(ConfigError, match="a fixed limit needs a model URI or checkpoint path"):
        segment_archive(root, tmp_path / "out", threshold_predictor(), scale=ScaleOut(case_timeout=30))
    with pytest.raises(ConfigError, match="got 'soon'"):
        segment_archive(root, tmp_path / "out", threshold_predictor(), scale=ScaleOut(case_timeout="soon"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_hung_ray_actor_fails_only_its_case_and_is_replaced(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medseg[ray]')")
    root = tmp_path / "in"
    studies = [write_good_study(root, i) for i in range(3)]
    _mark(studies[0])
    ckpt = save_threshold_checkpoint(tmp_path / "m.pt")
    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
        log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
    )  # fmt: skip
    try:
        started = time.monotonic()
        summary = segment_archive(
            root, tmp_path / "out", str(ckpt), formats=("nifti",), workers=1, progress=False, name_key=NAME_KEY,
            scale=ScaleOut(ray="local", worker_setup=register_hanging, case_timeout=LIMIT_S),
        )  # fmt: skip
        elapsed = time.monotonic() - started
        alive = [a for a in ray.util.list_named_actors() if a.startswith("medseg-segment-")]
    finally:
        ray.shutdown()

    rows = _rows(tmp_path / "out")
    assert summary.counts() == {"DONE": 2, "QUARANTINED": 0, "FAILED": 1, "PENDING": 0}, summary.table()
    hung = next(k for k, r in rows.items() if r[0] == "FAILED")
    assert rows[hung][2].startswith("WorkerTimeout: no result after 12 s") and "Ray actor" in rows[hung][2]
    assert all(r[1] == 1 for r in rows.values()) and not (tmp_path / "out" / hung).exists()
    assert alive == []  # the hung actor and its replacement were killed with the run
    assert LIMIT_S < elapsed < LIMIT_S + 150, elapsed
