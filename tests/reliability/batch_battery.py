"""The battery's table through one ``medseg segment`` batch: every case is a study folder of one archive.

Each case is built as in :mod:`battery` (under a folder named like a patient, :data:`inputs.CANARY_FOLDER`), inside
its own :func:`inputs.uid_namespace` (a batch groups slices by SeriesInstanceUID over the whole archive, and most
cases would otherwise share the seeded UIDs of one series), then moved to ``archive/<case>/<CANARY_FOLDER>``; what a
builder writes beside its input root (the Part 10 reference of a layout case) stays out of the archive. One
:func:`medseg.batch.segment_archive` run segments the archive with :func:`fuzz_batch.threshold_predictor` at
:data:`THRESHOLD` (label 1 where the value exceeds 0, so the expected label of every input is known exactly), a
CT model (series rule: modality CT) with default settings, formats ``nifti`` + ``report``.

Per case, the items discovered under its folder (discovery again with the run's naming key maps ledger keys to
paths) give the case's outcome: ``DONE``, ``Q:<reason code>`` or ``F:<exception type>`` per item, sorted and
joined by `` + `` (``DONE x2`` for repeats). A DONE item's label must equal ``Built.volume > THRESHOLD`` with the
truth's shape and affine (within 1e-4 mm); a QUARANTINED or FAILED item must have no output. Over the run: every discovered
item has a final state (DONE + QUARANTINED + FAILED == discovered, PENDING == 0), and ``quarantine.csv`` (the
user's list) holds exactly the QUARANTINED and FAILED items, each with its reason code and its folder.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from cases import CASES, Case
from fuzz_batch import threshold_predictor
from inputs import CANARY_FOLDER, Built, uid_namespace

from medseg.atomic import TEMP_PREFIX
from medseg.batch import QUARANTINE_CSV, LedgerRow, WorkItem

FORMATS = ("nifti", "report")
# label 1 where the value exceeds 0: splits both the CT cases (HU uniform in [-1000, 1500)) and the NIfTI cases
# (normal, mean 0, sd 100), so a flipped or transposed label is caught (at -500 every NIfTI label would be all 1)
THRESHOLD = 0.0
AFFINE_TOL_MM = 1e-4
_ORDER = {"DONE": 0, "Q": 1, "F": 2}


@dataclass
class CaseResult:
    items: list[str] = field(default_factory=list)  # one "DONE" / "Q:CODE" / "F:Type" per discovered item
    errors: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if not self.items:
            return "nothing discovered"
        counts = Counter(self.items)
        parts = sorted(counts, key=lambda s: (_ORDER[s.split(":")[0]], s))
        return " + ".join(p if counts[p] == 1 else f"{p} x{counts[p]}" for p in parts)


@dataclass
class BatchBattery:
    """One batch run over the whole table."""

    output: Path
    cases: dict[str, CaseResult]
    discovered: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # not attributable to one case
    labels_checked: int = 0  # DONE labels compared with a truth
    unchecked: list[str] = field(default_factory=list)  # case of each DONE item without a truth
    seconds_build: float = 0.0
    seconds_batch: float = 0.0

    def outcomes(self) -> dict[str, str]:
        return {name: r.outcome for name, r in self.cases.items()}


def _item_outcome(row: LedgerRow) -> str:
    if row.status.value == "DONE":
        return "DONE"
    if row.status.value == "FAILED":  # the ledger keeps the error text "Type: message" (scrubbed)
        return f"F:{(row.error or '?').split(':')[0]}"
    return f"{row.status.value[0]}:{row.reason or '?'}"


def _check_label(path: Path, built: Built, errors: list[str]) -> bool:
    """Compare a DONE item's label with the truth; False when the case has none."""
    if not path.is_file():
        errors.append(f"DONE without {path.name}")
        return True
    img = nib.load(str(path))
    label = np.asarray(img.dataobj)
    if built.affine is not None and not np.allclose(img.affine, built.affine, atol=AFFINE_TOL_MM, rtol=0):
        errors.append(f"DONE with affine {img.affine.round(4).tolist()}, expected {built.affine.tolist()}")
    if built.volume is None:
        return built.affine is not None
    truth = built.volume > THRESHOLD
    if label.shape != truth.shape:
        errors.append(f"DONE with label shape {label.shape}, expected {truth.shape}")
    elif not np.array_equal(label.astype(bool), truth) or not set(np.unique(label)) <= {0, 1}:
        errors.append(f"DONE with {int((label.astype(bool) != truth).sum())} voxels off the truth")
    return True


def _build(archive: Path, staging: Path, cases: list[Case]) -> dict[str, Built]:
    built = {}
    for case in cases:
        with uid_namespace(case.name):
            built[case.name] = case.build(staging / case.name / CANARY_FOLDER)
        (archive / case.name).mkdir(parents=True)
        shutil.move(staging / case.name / CANARY_FOLDER, archive / case.name / CANARY_FOLDER)
    shutil.rmtree(staging)
    return built


def _judge(
    item: WorkItem,
    row: LedgerRow | None,
    entry: dict[str, str] | None,
    built: dict[str, Built],
    result: BatchBattery,
) -> None:
    """Record one discovered item's outcome in its case and check its outputs and its quarantine.csv row."""
    case = item.relative_path.split("/")[0]
    if case not in result.cases or row is None:
        result.errors.append(
            f"item {item.key} ({item.kind.value}) outside any one case folder or not in the ledger"
        )
        return
    judged = result.cases[case]
    judged.items.append(_item_outcome(row))
    written = sorted(p.name for p in result.output.glob(f"*{item.key}*"))
    if row.status.value == "DONE":
        if written != [item.key] or row.output != item.key or entry is not None:
            judged.errors.append(
                f"DONE item {item.key}: outputs {written}, ledger output {row.output!r}, {entry}"
            )
        elif _check_label(result.output / item.key / "label.nii.gz", built[case], judged.errors):
            result.labels_checked += 1
        else:
            result.unchecked.append(case)
        return
    if written:
        judged.errors.append(f"{row.status.value} item {item.key} has outputs {written}")
    listed = None if entry is None else (entry["status"], entry["item_path"], entry["reason"])
    if (
        listed is None
        or listed[:2] != (row.status.value, item.relative_path)
        or (row.status.value == "QUARANTINED" and listed[2] != row.reason)
    ):
        judged.errors.append(f"{row.status.value} item {item.key} listed in {QUARANTINE_CSV} as {listed}")


def run_batch_battery(workdir: Path, cases: list[Case] = CASES) -> BatchBattery:
    """Build every case under ``workdir/archive``, segment the archive into ``workdir/out`` in one run, judge."""
    from medseg.batch import Status, discover, load_or_create_key, segment_archive

    archive, out = workdir / "archive", workdir / "out"
    start = time.perf_counter()
    built = _build(archive, workdir / "staging", cases)
    result = BatchBattery(out, {c.name: CaseResult() for c in cases})
    result.seconds_build = time.perf_counter() - start

    start = time.perf_counter()
    predictor = threshold_predictor(THRESHOLD)
    summary = segment_archive(archive, out, predictor, progress=False, formats=FORMATS)
    result.seconds_batch = time.perf_counter() - start
    result.discovered = summary.total
    result.counts = {s.value: n for s, n in ((s, sum(r.status == s for r in summary.items)) for s in Status)}
    if result.counts["PENDING"] != 0 or sum(result.counts.values()) != summary.total:
        result.errors.append(
            f"ledger does not account for every item: {result.counts}, {summary.total} discovered"
        )

    rows = {r.key: r for r in summary.items}
    found = discover(archive, predictor.spec.contract.channels, load_or_create_key(out))
    if {it.key for it in found.items} != set(rows):
        result.errors.append("the ledger's items are not the items discovered under the archive")
    with (out / QUARANTINE_CSV).open(newline="") as f:
        entries = {e["key"]: e for e in csv.DictReader(f)}
    for item in found.items:
        _judge(item, rows.get(item.key), entries.pop(item.key, None), built, result)
    if entries:
        result.errors.append(f"{QUARANTINE_CSV} lists {len(entries)} item(s) not discovered")
    leftovers = [p.name for p in out.iterdir() if p.is_dir() and p.name not in rows]
    leftovers += [p.name for p in out.rglob(f"{TEMP_PREFIX}*")]
    if leftovers:
        result.errors.append(f"folders in the output that are no item's: {leftovers}")
    return result
