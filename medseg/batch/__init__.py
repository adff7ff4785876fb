"""Batch segmentation of study archives: discovery, a resumable run ledger, keyed output names, the runner.

Typical use::

    from medseg.batch import segment_archive
    summary = segment_archive("archive/", "results/", "models:/liver@champion")
    table = summary.table()  # DONE / QUARANTINED / FAILED counts
"""

from __future__ import annotations

from medseg.batch.discover import Discovery, ItemKind, WorkItem, discover
from medseg.batch.ledger import LEDGER_FILE, Ledger
from medseg.batch.ledger_db import LedgerError, LedgerRow, Status
from medseg.batch.naming import KEY_FILE, keyed_name, load_or_create_key
from medseg.batch.publish import OutputLockedError
from medseg.batch.report import QUARANTINE_CSV, REPORT_CSV, REPORT_JSON, BatchSummary, QuarantineEntry
from medseg.batch.runner import DEFAULT_FORMATS, ScaleOut, segment_archive

__all__ = [
    "DEFAULT_FORMATS",
    "KEY_FILE",
    "LEDGER_FILE",
    "QUARANTINE_CSV",
    "REPORT_CSV",
    "REPORT_JSON",
    "BatchSummary",
    "Discovery",
    "ItemKind",
    "Ledger",
    "LedgerError",
    "LedgerRow",
    "OutputLockedError",
    "QuarantineEntry",
    "ScaleOut",
    "Status",
    "WorkItem",
    "discover",
    "keyed_name",
    "load_or_create_key",
    "segment_archive",
]
