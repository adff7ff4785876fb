"""The end of a batch run: the summary (counts, table) and the report files written into the output folder.

* ``batch-report.json`` / ``batch-report.csv``: every item of the run by key: status, reason code, attempts, output
  folder, seconds, scrubbed error text. No input paths, no patient identifiers: safe to share.
* ``quarantine.csv``: the items that need the user's attention: QUARANTINED ones with their reason code and FAILED
  ones with their error, each with its path relative to the input root, so the user can find and fix them. Folder
  names may name patients: this file is the only one that holds input paths.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.atomic import atomic_write_text
from medseg.batch.ledger_db import LedgerRow, Status

logger = logging.getLogger(__name__)

__all__ = ["QUARANTINE_CSV", "REPORT_CSV", "REPORT_JSON", "BatchSummary", "QuarantineEntry", "write_reports"]

REPORT_JSON = "batch-report.json"
REPORT_CSV = "batch-report.csv"
QUARANTINE_CSV = "quarantine.csv"
_ITEM_FIELDS = ("key", "kind", "status", "reason", "attempts", "output", "seconds_total", "error")
_QUARANTINE_FIELDS = ("key", "kind", "status", "reason", "item_path", "problem_path", "detail")


@dataclass(frozen=True)
class QuarantineEntry:
    """A quarantined (or failed) item as the user sees it in ``quarantine.csv``: ``reason`` is the reason code (or the
    exception type of a failure), the paths are relative to the input root."""

    key: str
    kind: str
    status: str
    reason: str
    item_path: str
    problem_path: str
    detail: str


@dataclass
class BatchSummary:
    """What a batch run did.

    Attributes:
        output: the output folder.
        run_id: the run's number in the ledger.
        items: the ledger rows of the items discovered by this run, by key.
        processed: items computed by this run (DONE now, including redone ones).
        already_done: DONE rows skipped because their outputs still match their checksums.
        redone: DONE rows recomputed because an output file was missing or altered.
        seconds: wall time of the run.
        reports: report name -> path.
    """

    output: Path
    run_id: int
    items: list[LedgerRow]
    processed: int = 0
    already_done: int = 0
    redone: int = 0
    seconds: float = 0.0
    reports: dict[str, Path] = field(default_factory=dict)

    def _count(self, status: Status) -> int:
        return sum(1 for r in self.items if r.status == status)

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def done(self) -> int:
        return self._count(Status.DONE)

    @property
    def quarantined(self) -> int:
        return self._count(Status.QUARANTINED)

    @property
    def failed(self) -> int:
        return self._count(Status.FAILED)

    @property
    def pending(self) -> int:
        return self._count(Status.PENDING)

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing is left pending (quarantined items are accounted for)."""
        return self.failed == 0 and self.pending == 0

    def reasons(self) -> dict[str, int]:
        """Quarantine reason code -> number of items."""
        return dict(sorted(Counter(r.reason for r in self.items if r.status == Status.QUARANTINED).items()))

    def counts(self) -> dict[str, int]:
        return {s.value: self._count(s) for s in Status}

    def table(self) -> str:
        """A plain-text summary table."""
        reasons = ", ".join(f"{k} {v}" for k, v in self.reasons().items())
        rows = [
            (
                "DONE",
                self.done,
                f"{self.processed} computed now, {self.already_done} already done"
                + (f", {self.redone} redone (outputs missing or altered)" if self.redone else ""),
            ),
            ("QUARANTINED", self.quarantined, reasons),
            ("FAILED", self.failed, "retried by the next run" if self.failed else ""),
            (
                "PENDING",
                self.pending,
                "not reached (interrupted or a worker stopped)" if self.pending else "",
            ),
            ("total", self.total, f"in {self.seconds:.1f} s"),
        ]
        lines = [f"{'status':<12} {'items':>6}  notes", f"{'-' * 12} {'-' * 6}  {'-' * 5}"]
        lines += [f"{name:<12} {n:>6}  {note}".rstrip() for name, n, note in rows]
        return "\n".join(lines)


def _csv_text(fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    return buf.getvalue()


def _item_record(row: LedgerRow) -> dict[str, Any]:
    return {
        "key": row.key,
        "kind": row.kind,
        "status": row.status.value,
        "reason": row.reason,
        "attempts": row.attempts,
        "output": row.output if row.status == Status.DONE else None,
        "seconds_total": None if row.seconds_total is None else round(row.seconds_total, 3),
        "error": row.error,
    }


def write_reports(
    summary: BatchSummary,
    *,
    provenance: dict[str, Any],
    settings: dict[str, Any],
    quarantine: Sequence[QuarantineEntry],
) -> dict[str, Path]:
    """Write the JSON and CSV reports and ``quarantine.csv`` into ``summary.output`` (atomically)."""
    out = summary.output
    records = [_item_record(r) for r in summary.items]
    report = {
        "run_id": summary.run_id,
        "counts": summary.counts(),
        "quarantine_reasons": summary.reasons(),
        "processed": summary.processed,
        "already_done": summary.already_done,
        "redone": summary.redone,
        "seconds": round(summary.seconds, 3),
        "model": provenance,
        "settings": settings,
        "items": records,
    }
    paths = {
        "json": atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2, sort_keys=True) + "\n"),
        "csv": atomic_write_text(out / REPORT_CSV, _csv_text(_ITEM_FIELDS, records)),
        "quarantine": atomic_write_text(
            out / QUARANTINE_CSV,
            _csv_text(_QUARANTINE_FIELDS, [e.__dict__ for e in sorted(quarantine, key=lambda e: e.key)]),
        ),
    }
    return paths
