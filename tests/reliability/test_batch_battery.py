"""The battery's table through one ``medseg segment`` batch (batch_battery.py): every case's items end as its
``segment`` expectation says, every discovered item is accounted for, and no canary identifier appears in anything
the batch wrote or logged."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from batch_battery import BatchBattery, run_batch_battery
from cases import CASE_IDS, CASES, Case
from inputs import CANARY_FOLDER, CANARY_STRINGS

from medseg.batch import KEY_FILE, LEDGER_FILE, QUARANTINE_CSV, REPORT_CSV, REPORT_JSON
from medseg.batch.review import REVIEW_PAGE


@dataclass
class Run:
    battery: BatchBattery
    logged: str  # every record at DEBUG and above, medseg.synthetic (the archive writer, set-up) left out
    printed: str  # everything written to the process's stdout and stderr (file descriptors 1 and 2)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _debug_records() -> Iterator[_Records]:
    """Every log record at DEBUG (root and medseg loggers opened up for the run, then put back)."""
    handler = _Records()
    root, medseg = logging.getLogger(), logging.getLogger("medseg")
    levels = root.level, medseg.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    medseg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        medseg.setLevel(levels[1])


@contextlib.contextmanager
def _fd_capture() -> Iterator[io.StringIO]:
    """What reaches file descriptors 1 and 2 (Python's sys.stdout / sys.stderr included), as pytest's capfd does;
    a module-scoped fixture cannot use capfd."""
    text = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        stream = open(sink.fileno(), "w", encoding="utf-8", closefd=False)
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield text
        finally:
            stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.write(sink.read().decode("utf-8", "replace"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("batch-battery")
    with _debug_records() as records, _fd_capture() as printed:
        battery = run_batch_battery(workdir)
    logged = "\n".join(r.getMessage() for r in records.records if not r.name.startswith("medseg.synthetic"))
    return Run(battery, logged, printed.getvalue())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_batch_case(case: Case, run: Run) -> None:
    judged = run.battery.cases[case.name]
    assert judged.errors == []
    assert judged.outcome == case.segment_expected


def test_every_discovered_item_ends_done_quarantined_or_failed(run: Run) -> None:
    battery = run.battery
    counts = battery.counts
    assert battery.errors == []
    assert counts["PENDING"] == 0
    assert counts["DONE"] + counts["QUARANTINED"] + counts["FAILED"] == battery.discovered
    assert sum(len(r.items) for r in battery.cases.values()) == battery.discovered  # each in exactly one case
    expected_items = sum(_items(c.segment_expected) for c in CASES)
    assert battery.discovered == expected_items, (battery.discovered, expected_items)
    # every DONE label was compared with its truth voxel by voxel, but the two series of one case (written without)
    assert battery.unchecked == ["dcm_two_series", "dcm_two_series"]
    assert battery.labels_checked == counts["DONE"] - 2 == 21, (battery.labels_checked, counts)
    assert counts["FAILED"] == 0


def _items(outcome: str) -> int:
    return sum(int(p.rsplit(" x", 1)[1]) if " x" in p else 1 for p in outcome.split(" + "))


def test_no_canary_identifier_in_anything_the_batch_battery_wrote_or_logged(run: Run) -> None:
    """Canaries sit in every identifying DICOM tag and in a folder name of every case's path. None may appear in
    the log records (DEBUG included), in stdout / stderr, in an output's name, or in any file of the output folder
    (ledger database, naming key, batch reports, review page, case reports, decompressed label maps), except
    quarantine.csv: it lists the input paths of quarantined items so the user can find them, by design the one file
    that holds paths (and so the canary folder). No SEG is written here (formats nifti + report); test_fuzz_batch
    and test_batch allow seg.dcm for the same reason as DICOM copies the patient module."""
    assert "QUARANTINED [" in run.logged and "DONE (read" in run.logged  # the capture saw the run's records
    text = run.logged + run.printed
    assert [c for c in CANARY_STRINGS if c in text] == []
    out = run.battery.output
    assert (
        CANARY_FOLDER in (out / QUARANTINE_CSV).read_text()
    )  # the exception is needed: paths name the patient
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {LEDGER_FILE, KEY_FILE, REPORT_JSON, REPORT_CSV, REVIEW_PAGE, QUARANTINE_CSV} <= names, names
    checked = 0
    for path in files:
        rel = path.relative_to(out)
        assert [c for c in CANARY_STRINGS if c in str(rel)] == [], rel
        if path.name == QUARANTINE_CSV:
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        assert [c for c in CANARY_STRINGS if c.encode() in data] == [], rel
        checked += 1
    assert checked >= 2 * run.battery.counts["DONE"] + 4
