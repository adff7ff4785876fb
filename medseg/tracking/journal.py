"""A run's write-ahead journal (its offline spool): every MLflow call is on disk before it is queued.

Layout of one spool folder (one per tracked run, under ``<workdir>/mlflow-offline``)::

    <spool>/records.jsonl              the journal: one JSON object per line, each one ``os.write`` (O_APPEND)
    <spool>/owner.lock                 locked (``flock``) by the run's process while it runs, and by a replay
    <spool>/artifacts/NNNNNN/<name>    the run's private copy of a logged file or folder, until it was sent
    <spool>/summary.json               counts of what was not logged (written when a run ends with calls unsent)
    <spool>/replayed.json              written by :func:`medseg.tracking.replay_offline` once the spool reached a store

Records of ``records.jsonl``:

- ``{"kind": "run", "format": 2, "pid", "host", "experiment", "run_name", "tracking_uri", "created"}``: the header,
  written when the run starts; later ``run`` records add the ``run_id`` once the store created the run.
- ``{"kind": "params" | "tags" | "metrics" | "artifact" | "end", "seq": N, ...}``: one call of the run, written by
  the training thread before the call is queued for the sender thread (:mod:`medseg.tracking.sender`).
- ``{"kind": "ack", "seq": N}``: call N reached the store (also when it landed after the sender gave up on it,
  ``"late": true``, and when a replay sent it, ``"replay": true``).
  A replay's ack of a call the store rejected on its content (a changed parameter value) adds ``"rejected"``.
- ``{"kind": "replay_run", "run_id", "tracking_uri"}``: a replay created this run (the store lacked the original).

A spool's unsent calls are its call records without an ack. Spools written before the journal existed (no ``seq``,
no lock) hold only unsent calls and are read the same way. A run that ends with every call acked removes its folder;
one that ends with calls unsent leaves it for ``medseg replay``. A folder that has no ``end`` record and whose lock
no process holds belongs to an interrupted run (SIGKILL, out of memory, power cut): a replay sends what is unsent
and closes the run as KILLED. Lines are flushed to the operating system, not synced to the disk: a killed process
loses nothing, a power cut may lose the last lines; a torn line is skipped. A write that fails (full disk) leaves
nothing buffered to come back later, and its number is not used: the journal never repeats a ``seq``. The lock
is an ``flock`` on ``owner.lock`` (Linux and macOS; released by the kernel when the process dies); processes forked
by the run (data loader workers) close their inherited copy at once, so that the lock dies with the run's process
alone.

Why ours: MLflow keeps no local record of its calls (its asynchronous logging drops what it cannot send), so
nothing else could tell what a killed run had not yet sent. Cost: one JSON line and one ``write`` per call and per
ack, a few microseconds each (``benchmarks/mlflow_faults.py`` prints the healthy SQLite run against the untracked
training).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.atomic import atomic_write_text
from medseg.tracking.errors import SpoolError
from medseg.tracking.locks import _HELD_LOCKS, NoLockError, pid_alive, try_lock

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
LOCK_FILE = "owner.lock"
SUMMARY_FILE = "summary.json"
REPLAYED_FILE = "replayed.json"
ARTIFACTS_DIR = "artifacts"
FORMAT = 2
CALL_KINDS = ("params", "tags", "metrics", "artifact", "end")
MAX_BATCH_PARAMS = 100  # MLflow's log_batch limits
MAX_BATCH_METRICS = 1000


class Spool:
    """The journal of one run. :meth:`open` creates the folder; the run logger journals each call with
    :meth:`write` before queueing it, the sender acknowledges it (:meth:`ack`) or keeps it for a replay
    (:meth:`keep`), and :meth:`finish` removes the folder when every call landed. Thread-safe."""

    def __init__(self, folder: str | Path, header: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self._header = dict(header)
        self._lock = threading.Lock()
        # new -> open -> closed (left for a replay) or removed; broken: the journal cannot be written
        self._state = "new"
        self._fd: int | None = None  # records.jsonl, O_APPEND: one os.write per record, no buffer
        self._torn = False  # a write was cut short: the next record starts on a new line
        self._lock_fd: int | None = None
        self._made_root = False
        self._seq = 0
        self._slots = 0
        self._unacked: dict[int, tuple[str, int]] = {}  # seq -> (count key, entries)
        self._kept: set[int] = set()
        self._slot_of: dict[int, Path] = {}
        self._failed_once = False

    # ------------------------------------------------------------------ state
    @property
    def writable(self) -> bool:
        return self._state == "open"

    @property
    def used(self) -> bool:
        """Whether the folder holds calls that were not logged (kept so far, or left behind at the end)."""
        with self._lock:
            return self._state == "closed" or (self._state == "open" and bool(self._kept))

    @property
    def counts(self) -> Counter[str]:
        """Entries kept for a replay (given up on and not acked since), by count key."""
        with self._lock:
            return self._counts()

    def _counts(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for seq in self._kept:
            kind, count = self._unacked[seq]
            out[kind] += count
        return out

    # ---------------------------------------------------------------- writing
    def open(self) -> None:
        """Create the folder, lock it for this process and write the header. Raises ``OSError``."""
        self._made_root = not self.folder.parent.exists()
        self.folder.mkdir(parents=True)
        try:
            try:
                self._lock_fd = try_lock(self.folder / LOCK_FILE)
            except NoLockError as exc:  # a replay tells a live run by the header's pid and host instead
                logger.debug("journal %s kept without a lock: %s", self.folder, exc)
            if self._lock_fd is not None:
                _HELD_LOCKS.add(self._lock_fd)
            self._fd = os.open(self.folder / RECORDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            header = {"kind": "run", "format": FORMAT, "pid": os.getpid(), "host": socket.gethostname()}
            self._state = "open"
            self._write({**header, **self._header})
        except BaseException:
            self._state = "broken"
            self._release()
            raise

    def _write(self, record: Mapping[str, Any]) -> None:
        """Append one line whole with one ``os.write`` (under ``self._lock``), or raise ``OSError`` (a full disk):
        nothing is buffered to come back later. After :meth:`finish` the file is opened for the line only."""
        data = (("\n" if self._torn else "") + json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = self._fd
        if fd is None:
            fd = os.open(self.folder / RECORDS_FILE, os.O_WRONLY | os.O_APPEND)
        try:
            written = os.write(fd, data)
        finally:
            if fd != self._fd:
                os.close(fd)
        if written != len(data):  # a torn line: skipped by readers, ended by the next record
            self._torn = True
            raise OSError(errno.ENOSPC, f"{self.folder / RECORDS_FILE}: short write ({written} of {len(data)} bytes)")
        self._torn = False

    def _append_call(self, record: Mapping[str, Any], kind: str, count: int) -> int:
        seq = self._seq + 1
        self._write({**record, "seq": seq})
        self._seq = seq
        self._unacked[seq] = (kind, count)
        file = record.get("file")
        if (
            record.get("kind") == "artifact"
            and isinstance(file, str)
            and file.startswith(f"{ARTIFACTS_DIR}/")
        ):
            self._slot_of[seq] = self.folder / Path(file).parts[0] / Path(file).parts[1]
        return seq

    def write(self, record: Mapping[str, Any], kind: str, count: int) -> int | None:
        """Journal a call before it is queued; its number, or ``None`` when the journal cannot be written."""
        with self._lock:
            if self._state != "open":
                return None
            try:
                return self._append_call(record, kind, count)
            except OSError as exc:
                if not self._failed_once:
                    self._failed_once = True
                    logger.error("could not write the tracking journal %s: %s", self.folder, exc)
                return None

    def keep(self, seq: int | None, record: Mapping[str, Any], kind: str, count: int) -> int:
        """Keep call ``seq`` for a replay (journalled now if that failed before); raises ``OSError`` if it can't be."""
        with self._lock:
            if seq is None:
                if self._state != "open":
                    raise OSError(f"the journal {self.folder} is not writable")
                seq = self._append_call(record, kind, count)
            if seq in self._unacked:
                self._kept.add(seq)
            return seq

    def ack(self, seq: int, *, late: bool = False) -> None:
        """Call ``seq`` reached the store: journal it (a replay skips it) and drop its artifact copy."""
        with self._lock:
            if seq not in self._unacked or self._state not in ("open", "closed"):
                return
            try:
                self._write({"kind": "ack", "seq": seq, **({"late": True} if late else {})})
            except OSError as exc:
                logger.error(
                    "could not acknowledge call %d in the tracking journal %s: %s", seq, self.folder, exc
                )
                return
            del self._unacked[seq]
            self._kept.discard(seq)
            slot = self._slot_of.pop(seq, None)
        if slot is not None:
            shutil.rmtree(slot, ignore_errors=True)

    def set_run_id(self, run_id: str) -> None:
        """Remember the store's run id (a replay continues that run)."""
        with self._lock:
            self._header["run_id"] = run_id
            if self._state in ("open", "closed"):
                try:
                    self._write({"kind": "run", "run_id": run_id})
                except OSError as exc:
                    logger.error(
                        "could not write the run id to the tracking journal %s: %s", self.folder, exc
                    )

    def new_slot(self) -> Path:
        """A new empty folder for the private copy of an artifact; raises ``OSError`` when the journal is unusable."""
        with self._lock:
            if self._state != "open":
                raise OSError(f"the journal {self.folder} is not writable")
            self._slots += 1
            slot = self.folder / ARTIFACTS_DIR / f"{self._slots:06d}"
        slot.mkdir(parents=True)
        return slot

    def finish(self, errors: list[str]) -> None:
        """The run ended: remove the folder when every call landed, else write ``summary.json``; unlock."""
        with self._lock:
            if self._state != "open":
                return
            remove = not self._unacked
            if not remove:
                summary = {"counts": dict(self._counts()), "errors": errors, "header": self._header}
                try:
                    atomic_write_text(
                        self.folder / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True)
                    )
                except OSError as exc:
                    logger.error("could not write the spool summary: %s", exc)
            self._state = "removed" if remove else "closed"
            if remove:
                shutil.rmtree(self.folder, ignore_errors=True)
                if self._made_root:
                    with contextlib.suppress(OSError):
                        self.folder.parent.rmdir()  # only when empty: another run's spool may be there
            self._release()

    def _release(self) -> None:
        """Close the journal and unlock; never raises (it runs in training's ``finally``)."""
        for fd in (self._fd, self._lock_fd):
            if fd is None:
                continue
            _HELD_LOCKS.discard(fd)
            try:
                os.close(fd)
            except OSError as exc:
                logger.error("could not close the tracking journal %s: %s", self.folder, exc)
        self._fd = self._lock_fd = None


# ------------------------------------------------------------------------------------------------- reading
def read_journal(folder: str | Path) -> list[dict[str, Any]]:
    """Every record of a spool folder, in order; torn lines (a crash while writing) are skipped with a warning."""
    path = Path(folder) / RECORDS_FILE
    if not path.is_file():
        raise SpoolError(f"{folder}: not an offline spool folder (no {RECORDS_FILE})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpoolError(f"{path}: cannot be read: {exc}") from exc
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning(
                "%s: skipping torn line %d (the process was killed while writing it)", path, number
            )
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass
class SpoolState:
    """What a spool folder holds: header, calls, acks, previous replays, and who holds its lock."""

    folder: Path
    header: dict[str, Any]
    calls: list[dict[str, Any]]
    acked: set[int] = field(default_factory=set)
    replay_runs: list[dict[str, Any]] = field(default_factory=list)
    replayed: dict[str, Any] | None = None
    owner: str | None = None  # "pid N on HOST" while a process holds the lock

    @property
    def end(self) -> dict[str, Any] | None:
        return next((r for r in reversed(self.calls) if r.get("kind") == "end"), None)

    @property
    def unsent(self) -> list[dict[str, Any]]:
        """The calls without an ack (all calls of a spool written before the journal)."""
        return [r for r in self.calls if r.get("seq") not in self.acked]

    @property
    def interrupted(self) -> bool:
        """The run's process died before the run ended (no end record, nobody holds the lock)."""
        return self.end is None and self.owner is None

    def owner_text(self) -> str:
        return f"pid {self.header.get('pid', '?')} on {self.header.get('host', '?')}"


def _holder(folder: Path, header: Mapping[str, Any], ended: bool) -> str | None:
    path = folder / LOCK_FILE
    if not path.exists():
        return None  # written before the journal existed, or removed: no process runs it
    try:
        fd = try_lock(path)
    except NoLockError:  # no lock to ask: the run ended, else the header's process if this host can tell
        alive = False if ended else pid_alive(header)  # None: another host, cannot tell (a replay needs --force)
        return None if alive is False else f"pid {header.get('pid', '?')} on {header.get('host', '?')}"
    except OSError:
        return None
    if fd is not None:
        os.close(fd)
        return None
    return f"pid {header.get('pid', '?')} on {header.get('host', '?')}"


def inspect_spool(folder: str | Path) -> SpoolState:
    """Read a spool folder (``SpoolError`` when it is not one)."""
    folder = Path(folder)
    records = read_journal(folder)
    header: dict[str, Any] = {}
    state = SpoolState(folder, header, [])
    for record in records:
        kind = record.get("kind")
        if kind == "run":
            header.update({k: v for k, v in record.items() if v is not None})
        elif kind == "ack" and isinstance(record.get("seq"), int):
            state.acked.add(record["seq"])
        elif kind == "replay_run":
            state.replay_runs.append(record)
        elif kind in CALL_KINDS:
            state.calls.append(record)
    marker = folder / REPLAYED_FILE
    if marker.is_file():
        try:
            state.replayed = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state.replayed = {}
    state.owner = _holder(folder, header, state.end is not None)
    return state


def read_spool(folder: str | Path) -> list[dict[str, Any]]:
    """The unsent records of a spool: the run header (its records merged) first, then the calls not acked."""
    state = inspect_spool(folder)
    return [{**state.header, "kind": "run"}, *state.unsent]
