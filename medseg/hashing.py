"""File digests: the SHA-256 that pins checkpoints in the registry, reports' provenance and batch outputs."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
