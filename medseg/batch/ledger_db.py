"""The run ledger's SQLite layer: table schema and migration of older ledgers, the row and status types, and
transactions.

Durability: WAL journal with ``synchronous=FULL``; every status change is one transaction (:class:`Transaction`),
so a killed process leaves every row either before or after its last change. Several processes (batch workers) may
write to one ledger: SQLite serialises the writers and ``busy_timeout`` makes them wait instead of failing. A write
SQLite cannot store (full disk, file size limit, read-only folder) is raised as :class:`LedgerError` with one line
that says how to resume.

The ledger's operations (state transitions and queries) are :class:`medseg.batch.ledger.Ledger`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

__all__ = [
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "LedgerError",
    "LedgerRow",
    "Status",
    "Transaction",
    "connect",
    "parse_row",
]

SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'DONE', 'QUARANTINED', 'FAILED')),
    reason TEXT,
    error TEXT,
    output TEXT,
    checksums TEXT,
    formats TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    seconds_read REAL,
    seconds_infer REAL,
    seconds_write REAL,
    seconds_total REAL,
    first_seen REAL NOT NULL,
    last_seen_run INTEGER,
    started_at REAL,
    finished_at REAL,
    input_fingerprint TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    medseg_version TEXT,
    settings TEXT,
    counts TEXT
);
"""


class Status(str, Enum):
    """State of a work item in the ledger."""

    PENDING = "PENDING"
    DONE = "DONE"
    QUARANTINED = "QUARANTINED"
    FAILED = "FAILED"


class LedgerError(MedsegError):
    """The ledger file is unusable (corrupt, newer schema, or written by another model)."""


@dataclass
class LedgerRow:
    """One item's row."""

    key: str
    kind: str
    status: Status
    reason: str | None = None
    error: str | None = None
    output: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    formats: list[str] = field(default_factory=list)
    attempts: int = 0
    seconds_read: float | None = None
    seconds_infer: float | None = None
    seconds_write: float | None = None
    seconds_total: float | None = None
    last_seen_run: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    input_fingerprint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["status"] = self.status.value
        return d


ROW_COLUMNS = (
    "key, kind, status, reason, error, output, checksums, formats, attempts, seconds_read, seconds_infer, "
    "seconds_write, seconds_total, last_seen_run, started_at, finished_at, input_fingerprint"
)


def parse_row(values: Sequence[Any]) -> LedgerRow:
    (
        key,
        kind,
        status,
        reason,
        error,
        output,
        checksums,
        formats,
        attempts,
        s_read,
        s_infer,
        s_write,
        s_total,
        last_run,
        started,
        finished,
        fingerprint,
    ) = values
    return LedgerRow(
        key=key,
        kind=kind,
        status=Status(status),
        reason=reason,
        error=error,
        output=output,
        checksums=json.loads(checksums) if checksums else {},
        formats=json.loads(formats) if formats else [],
        attempts=int(attempts),
        seconds_read=s_read,
        seconds_infer=s_infer,
        seconds_write=s_write,
        seconds_total=s_total,
        last_seen_run=last_run,
        started_at=started,
        finished_at=finished,
        input_fingerprint=fingerprint,
    )


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the ledger database at ``path`` in autocommit mode with the durability settings above,
    create the tables and bring a ledger of an older layout up to date (the ``input_fingerprint`` column).

    Raises:
        LedgerError: the file is not a usable SQLite database, or it cannot be written.
    """
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
        if "input_fingerprint" not in columns:  # a ledger written before inputs were fingerprinted
            conn.execute("ALTER TABLE items ADD COLUMN input_fingerprint TEXT")
    except sqlite3.DatabaseError as exc:
        if _storage_failure(exc):
            raise LedgerError(_storage_message(path, exc)) from exc
        raise LedgerError(f"{path.name}: not a usable ledger database ({exc})") from exc
    if str(mode).lower() != "wal":
        logger.warning(
            "the ledger could not switch to WAL mode (journal_mode=%s); it stays safe but slower", mode
        )
    return conn


_STORAGE_FAILURES = ("disk i/o error", "database or disk is full", "readonly database", "unable to open database")


def _storage_failure(exc: BaseException) -> bool:
    """True when SQLite could not write its file (full disk, file size limit, read-only), not a corrupt ledger."""
    return isinstance(exc, sqlite3.OperationalError) and any(m in str(exc).lower() for m in _STORAGE_FAILURES)


def _storage_message(path: Path, exc: BaseException) -> str:
    return (
        f"{path.name}: cannot write the run ledger ({exc}): the disk is full, a file size limit applies or the "
        "folder became read-only. Finished cases and their records are kept; free space and run the same command "
        "again to resume"
    )


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error); the connection runs in autocommit mode.

    A write SQLite cannot store (full disk, file size limit) is rolled back and raised as :class:`LedgerError`,
    so the run stops with one line instead of a traceback, and the ledger keeps its last committed state.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn, self._path = conn, path

    def __enter__(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _storage_failure(exc):
                raise LedgerError(_storage_message(self._path, exc)) from exc
            raise

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as commit_exc:
                exc = commit_exc
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        if exc is not None and _storage_failure(exc):
            raise LedgerError(_storage_message(self._path, exc)) from exc
        if exc_type is None:  # a COMMIT that failed for another reason
            raise exc  # type: ignore[misc]
