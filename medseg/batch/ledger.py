"""The run ledger: one SQLite row per discovered work item, so that a batch run can be resumed after any stop.

Rows are keyed by the item key (:mod:`medseg.batch.naming`) and hold the status (``PENDING``, ``DONE``,
``QUARANTINED`` with its reason code, ``FAILED`` with the error text; failed items are retried by the next run), the
output folder name, the sha256 of every output file, the output formats, the number of attempts and the timings.
A ``DONE`` row counts as done only while its files still match these checksums (checked by the runner).

:class:`Ledger` holds the state transitions (``sync``, ``mark_*``), the run records and the queries; the SQLite
layer (schema, migration, row type, durable transactions) is :mod:`medseg.batch.ledger_db`.

Privacy: the ledger holds keys, codes and numbers only. Input paths (which may carry patient names in folder names)
and reason details are not stored here; the runner writes the paths of quarantined items to ``quarantine.csv``.
Error texts of failed items are scrubbed by the caller before they are recorded.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.batch.ledger_db import (
    ROW_COLUMNS,
    SCHEMA_VERSION,
    LedgerError,
    LedgerRow,
    Status,
    Transaction,
    connect,
    parse_row,
)

logger = logging.getLogger(__name__)

__all__ = ["LEDGER_FILE", "Ledger"]

LEDGER_FILE = "medseg-ledger.sqlite"
_MAX_ERROR_CHARS = 1000


class Ledger:
    """A run ledger in one SQLite file. Open with :meth:`Ledger.open`; use as a context manager to close it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Ledger:
        """Open (or create) the ledger at ``path``; its folder must exist.

        Raises:
            LedgerError: the file is not a ledger of this (or an older) schema.
        """
        path = Path(path)
        conn = connect(path)
        ledger = cls(conn, path)
        with ledger._transaction():
            found = ledger.get_meta("schema_version")
            if found is None:
                ledger._set_meta("schema_version", str(SCHEMA_VERSION))
        if found is not None and int(found) > SCHEMA_VERSION:
            conn.close()
            raise LedgerError(
                f"{path.name}: ledger schema {found} is newer than this medseg ({SCHEMA_VERSION})"
            )
        return ledger

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self):
        return Transaction(self._conn, self.path)

    # ------------------------------------------------------------------------------------------ meta
    def get_meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, name: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def meta_default(self, name: str, value: str) -> str:
        """The value recorded under ``name``, recording ``value`` first if there is none."""
        with self._transaction():
            found = self.get_meta(name)
            if found is None:
                self._set_meta(name, value)
                found = value
        return found

    def bind(self, name: str, value: str, what: str, earlier: Iterable[str] = ()) -> None:
        """Record ``value`` under ``name`` on first use; later uses must pass the same value.

        ``earlier``: older spellings of the same value (e.g. a fingerprint in the form an older medseg computed);
        one of them found recorded is replaced by ``value``.

        Raises:
            LedgerError: a different value was recorded (``what`` describes it in the message).
        """
        with self._transaction():
            found = self.get_meta(name)
            if found is None:
                self._set_meta(name, value)
            elif found != value and found in set(earlier):
                logger.info("%s recorded in an earlier form: rewritten in the current one", name)
                self._set_meta(name, value)
            elif found != value:
                raise LedgerError(
                    f"this output folder holds results of a different {what}; write to a new output folder "
                    f"(recorded {found[:16]}..., now {value[:16]}...)"
                )

    # ------------------------------------------------------------------------------------------ runs
    def begin_run(self, medseg_version: str, settings: Mapping[str, Any]) -> int:
        with self._transaction():
            cur = self._conn.execute(
                "INSERT INTO runs (started_at, medseg_version, settings) VALUES (?, ?, ?)",
                (time.time(), medseg_version, json.dumps(dict(settings), sort_keys=True)),
            )
            return int(cur.lastrowid)

    def end_run(self, run_id: int, counts: Mapping[str, int]) -> None:
        with self._transaction():
            self._conn.execute(
                "UPDATE runs SET finished_at = ?, counts = ? WHERE run_id = ?",
                (time.time(), json.dumps(dict(counts), sort_keys=True), run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        cur = self._conn.execute(
            "SELECT run_id, started_at, finished_at, medseg_version, settings, counts FROM runs ORDER BY run_id"
        )
        return [
            {
                "run_id": r[0],
                "started_at": r[1],
                "finished_at": r[2],
                "medseg_version": r[3],
                "settings": json.loads(r[4]) if r[4] else {},
                "counts": json.loads(r[5]) if r[5] else None,
            }
            for r in cur.fetchall()
        ]

    # ------------------------------------------------------------------------------------------ items
    def sync(self, items: Iterable[tuple[str, str, str | None]], run_id: int) -> None:
        """Record this run's discovered items: ``(key, kind, quarantine_code or None)``.

        New keys get a row (``PENDING``, or ``QUARANTINED`` with the code). A known key quarantined now becomes
        ``QUARANTINED``; a known key quarantined before but usable now goes back to ``PENDING``. Other rows keep
        their status. Every listed row is marked as seen by ``run_id``.
        """
        now = time.time()
        with self._transaction():
            for key, kind, code in items:
                status = Status.QUARANTINED.value if code else Status.PENDING.value
                self._conn.execute(
                    "INSERT INTO items (key, kind, status, reason, first_seen, last_seen_run) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET kind = excluded.kind, "
                    "last_seen_run = excluded.last_seen_run",
                    (key, kind, status, code, now, run_id),
                )
                if code:
                    self._conn.execute(
                        "UPDATE items SET status = 'QUARANTINED', reason = ?, error = NULL WHERE key = ?",
                        (code, key),
                    )
                else:
                    self._conn.execute(
                        "UPDATE items SET status = 'PENDING', reason = NULL WHERE key = ? AND status = 'QUARANTINED'",
                        (key,),
                    )

    def get(self, key: str) -> LedgerRow | None:
        row = self._conn.execute(f"SELECT {ROW_COLUMNS} FROM items WHERE key = ?", (key,)).fetchone()
        return None if row is None else parse_row(row)

    def rows(self, *, run_id: int | None = None) -> list[LedgerRow]:
        """All rows sorted by key (only those seen by ``run_id`` when given)."""
        if run_id is None:
            cur = self._conn.execute(f"SELECT {ROW_COLUMNS} FROM items ORDER BY key")
        else:
            cur = self._conn.execute(
                f"SELECT {ROW_COLUMNS} FROM items WHERE last_seen_run = ? ORDER BY key", (run_id,)
            )
        return [parse_row(r) for r in cur.fetchall()]

    def counts(self, *, run_id: int | None = None) -> dict[str, int]:
        """Number of rows per status (of the rows seen by ``run_id`` when given)."""
        out = {s.value: 0 for s in Status}
        for row in self.rows(run_id=run_id):
            out[row.status.value] += 1
        return out

    def mark_started(self, key: str) -> None:
        with self._transaction():
            self._update(key, "attempts = attempts + 1, started_at = ?", time.time())

    def mark_done(
        self,
        key: str,
        *,
        output: str,
        checksums: Mapping[str, str],
        formats: Sequence[str],
        timings: Mapping[str, float],
        input_fingerprint: str | None = None,
    ) -> None:
        with self._transaction():
            self._update(
                key,
                "status = 'DONE', reason = NULL, error = NULL, output = ?, checksums = ?, formats = ?, "
                "seconds_read = ?, seconds_infer = ?, seconds_write = ?, seconds_total = ?, finished_at = ?, "
                "input_fingerprint = ?",
                output,
                json.dumps(dict(checksums), sort_keys=True),
                json.dumps(list(formats)),
                timings.get("read"),
                timings.get("infer"),
                timings.get("write"),
                timings.get("total"),
                time.time(),
                input_fingerprint,
            )

    def mark_quarantined(self, key: str, code: str, *, seconds: float | None = None) -> None:
        with self._transaction():
            self._update(
                key,
                "status = 'QUARANTINED', reason = ?, error = NULL, seconds_total = ?, finished_at = ?",
                code,
                seconds,
                time.time(),
            )

    def mark_failed(self, key: str, error: str, *, seconds: float | None = None) -> None:
        with self._transaction():
            self._update(
                key,
                "status = 'FAILED', reason = NULL, error = ?, seconds_total = ?, finished_at = ?",
                error[:_MAX_ERROR_CHARS],
                seconds,
                time.time(),
            )

    def mark_pending(self, key: str) -> None:
        """Put a row back to ``PENDING`` (a DONE row whose outputs are missing or altered)."""
        with self._transaction():
            self._update(key, "status = 'PENDING'")

    def _update(self, key: str, assignments: str, *values: Any) -> None:
        cur = self._conn.execute(f"UPDATE items SET {assignments} WHERE key = ?", (*values, key))
        if cur.rowcount != 1:
            raise KeyError(f"item {key} is not in the ledger")
