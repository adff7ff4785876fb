"""Identical copies of one DICOM instance: kept once.

Archives often hold a study twice (an export repeated into a second folder, a CD copied beside its original). The
copies carry the same SOPInstanceUID, so grouping by SeriesInstanceUID puts every slice in its stack twice, and
the stack would be refused as DUPLICATE_SLICE although nothing is wrong with the data. A file whose SOPInstanceUID
(and frame) another file has, with the same bytes, is the same instance: it is dropped here, before the slices are
grouped, and the first copy in path order is kept. Two files that share a SOPInstanceUID but differ in their bytes
are not the same instance (a re-export with changed tags, a damaged copy): both stay, and the geometry checks refuse
the stack with its reason. Only files whose UID occurs more than once are read and hashed.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from medseg.data.dicom.records import SliceHeader

logger = logging.getLogger(__name__)

__all__ = ["drop_identical_copies"]

_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None  # unreadable now: not a proven copy, kept (its reading will name the problem)
    return digest.hexdigest()


def drop_identical_copies(headers: Sequence[SliceHeader]) -> list[SliceHeader]:
    """``headers`` without the later byte-identical copies of an instance (same SOPInstanceUID and frame)."""
    by_instance: dict[tuple[str, int | None], list[SliceHeader]] = defaultdict(list)
    for h in headers:
        if h.sop_instance_uid.strip():
            by_instance[(h.sop_instance_uid, h.frame)].append(h)
    dropped: set[Path] = set()
    hashes: dict[Path, str | None] = {}
    for group in by_instance.values():
        if len(group) < 2:
            continue
        kept: dict[str, Path] = {}
        for h in sorted(group, key=lambda h: str(h.path)):
            if h.path not in hashes:
                hashes[h.path] = _file_sha256(h.path)
            digest = hashes[h.path]
            if digest is None:
                continue
            if digest in kept and kept[digest] != h.path:
                dropped.add(h.path)
            else:
                kept.setdefault(digest, h.path)
    if dropped:
        logger.info(
            "%d file(s) are byte-identical copies of another file of the same instance: read once",
            len(dropped),
        )
    return [h for h in headers if h.path not in dropped]
