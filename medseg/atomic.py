"""Atomic file output: write to a temp file in the destination folder, fsync, then rename over the target.

A reader (or a resumed batch run) therefore sees either the old file or the complete new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".medseg-tmp-"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (after a rename into it); an error is ignored: not every filesystem lets a folder
    be opened for fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_temp(folder: Path, suffix: str) -> Path:
    """A new empty file ``folder/.medseg-tmp-<random><suffix>``, created exclusively with mode 0666 less the umask
    (the mode a plain ``open()`` gives; the kernel applies the umask, so no process-wide umask is touched)."""
    while True:
        tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        return tmp


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed to ``target``.

    The temp name keeps the target's suffixes (``.nii.gz``, ``.dcm``) so that writers that infer the format from the
    name still work. On an exception the temp file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    tmp = _create_temp(target.parent, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically and return the target path."""
    return atomic_write_bytes(target, text.encode(encoding))
