"""File-system side of a batch run: a lock on the output folder, stale temp clean-up, checksums, atomic publishing.

A case's outputs are written into a temp folder ``OUTPUT/.medseg-tmp-<key>-XXXX`` and renamed to ``OUTPUT/<key>``
only when complete (files fsynced by :mod:`medseg.atomic`, then the folder renamed and the parent fsynced), so a
killed run never leaves a partial case folder under its final name. Replacing an existing case folder renames the
old one to a temp name first; every temp name starts with :data:`medseg.atomic.TEMP_PREFIX` and is removed by
:func:`clean_stale_temps` at the start of the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from medseg.atomic import TEMP_PREFIX, fsync_path
from medseg.batch.naming import KEY_FILE
from medseg.errors import MedsegError
from medseg.hashing import file_sha256 as sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_FILE",
    "OutputLockedError",
    "checksum_folder",
    "clean_stale_temps",
    "folder_matches",
    "lock_output",
    "new_temp_folder",
    "publish_folder",
    "remove_item_temps",
    "sha256_file",
]

LOCK_FILE = ".medseg-lock"


class OutputLockedError(MedsegError, RuntimeError):
    """Another batch run is writing to the same output folder."""


@contextlib.contextmanager
def lock_output(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for the duration (released by the OS if the process dies).

    Raises:
        OutputLockedError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, runs must not overlap
        logger.warning("no file locking on this platform; do not start two runs on one output folder")
        yield
        return
    fd = os.open(output / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(
                "another medseg batch run is writing to this output folder; wait for it or use another folder"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clean_stale_temps(output: Path) -> int:
    """Remove temp files and folders a killed run left in ``output`` (call while holding the lock)."""
    removed = 0
    for entry in sorted(output.iterdir()):
        name = entry.name
        if not (name.startswith(TEMP_PREFIX) or (name.startswith(KEY_FILE + ".") and name.endswith(".new"))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed += 1
    if removed:
        logger.info("removed %d stale temp file(s)/folder(s) left by an interrupted run", removed)
    return removed


def remove_item_temps(output: Path, key: str) -> int:
    """Remove the temp folders of item ``key`` (after the worker writing them died); returns how many.

    Safe while the run holds the output lock: an item is in flight in one worker at a time.
    """
    removed = 0
    for pattern in (f"{TEMP_PREFIX}{key}-*", f"{TEMP_PREFIX}old-{key}-*"):
        for entry in output.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def new_temp_folder(output: Path, key: str) -> Path:
    """A new empty temp folder in ``output`` for the outputs of item ``key``."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{key}-", dir=output))




def checksum_folder(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by its POSIX path relative to ``folder``."""
    out: dict[str, str] = {}
    for sub, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(sub) / name
            out[path.relative_to(folder).as_posix()] = sha256_file(path)
    return out


def folder_matches(folder: Path, checksums: Mapping[str, str], required: Sequence[str] = ()) -> bool:
    """True when every recorded file exists in ``folder`` with its recorded sha256 (and ``required`` are recorded)."""
    if not checksums or not folder.is_dir() or any(name not in checksums for name in required):
        return False
    for name, digest in checksums.items():
        path = folder / name
        try:
            if not path.is_file() or sha256_file(path) != digest:
                return False
        except OSError:
            return False
    return True


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the complete temp folder ``tmp`` to ``final``, replacing an existing ``final``."""
    for sub, _dirs, names in os.walk(tmp):
        for name in names:
            fsync_path(Path(sub) / name)
        fsync_path(Path(sub))
    if final.exists() or final.is_symlink():
        old = final.parent / f"{TEMP_PREFIX}old-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, old)
        os.rename(tmp, final)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.rename(tmp, final)
    fsync_path(final.parent)
