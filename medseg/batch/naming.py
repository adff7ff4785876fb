"""Output names and item keys from a keyed hash (HMAC-SHA256) of the inputs' UIDs.

A batch run names every work item by ``HMAC-SHA256(key, identity)`` where the identity is built from DICOM UIDs
(``series:<stack id>``, ``study:<StudyInstanceUID>``) or, for files without UIDs, from the path relative to the
input root (``file:<relative path>``, ``case:<relative folder>``). The hash is the item's key in the run ledger and
the name of its output folder, so names never carry patient names, patient IDs or folder names.

The key is random, generated once per output folder and kept in ``OUTPUT/.medseg-name-key`` (mode 0600), so the
same input gets the same name on every resumed run into that folder, while someone without the key cannot test
guessed UIDs or paths against the names. A key may also be passed in (e.g. to name outputs identically in two
folders).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["KEY_FILE", "MIN_KEY_BYTES", "NAME_HEX_CHARS", "keyed_name", "load_or_create_key"]

KEY_FILE = ".medseg-name-key"
MIN_KEY_BYTES = 16
NAME_HEX_CHARS = 24  # 96 bits: no collision in any realistic archive
_SEPARATOR = "\x1f"  # unit separator: cannot occur in UIDs or in path components used as identities


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"a naming key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a naming key must have at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def keyed_name(key: bytes, *parts: str, length: int = NAME_HEX_CHARS) -> str:
    """Hex HMAC-SHA256 of ``parts`` (joined by a separator) under ``key``, cut to ``length`` characters."""
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError("keyed_name needs one or more non-empty text parts")
    if not 8 <= length <= 64:
        raise ValueError(f"name length must be 8..64 hex characters, got {length}")
    digest = hmac.new(_check_key(key), _SEPARATOR.join(parts).encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:length]


def _read_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise ValueError(f"{path}: naming key file is damaged (not hex text)") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{path}: naming key file is damaged ({len(key)} bytes, at least {MIN_KEY_BYTES} needed)"
        )
    return key


def load_or_create_key(output: str | os.PathLike) -> bytes:
    """The naming key of an output folder: read ``output/.medseg-name-key``, or create it (32 random bytes, 0600).

    Creation uses ``O_EXCL``, so two processes starting on one folder end up with the same key.

    Raises:
        ValueError: the key file exists but does not hold a valid key.
    """
    path = Path(output) / KEY_FILE
    if path.exists():
        return _read_key(path)
    key = secrets.token_bytes(32)
    tmp = path.with_name(f"{KEY_FILE}.{secrets.token_hex(4)}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first: then use theirs
        logger.info("created a new naming key for this output folder")
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem: plain rename (last writer wins, both keys are valid)
        if not path.exists():
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return _read_key(path)
