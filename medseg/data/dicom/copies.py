"""A folder that is a byte-identical copy of slices found elsewhere: read once.

Archives often hold a study twice (an export repeated into a second folder, a CD copied beside its original). The
copies carry the same SOPInstanceUIDs, so grouping by SeriesInstanceUID puts every slice in its stack twice, and
the stack would be refused as DUPLICATE_SLICE although nothing is wrong with the data.

The unit is a folder, never a single file, because the damage checks work per folder (a damaged file whose series
is unknown refuses the series of its folder, :mod:`medseg.data.dicom.damage`): dropping single files could hide a
damaged slice's folder and let its series load without that slice. Folders are taken in path order; a folder is
dropped when every slice in it (SOPInstanceUID and frame) is the same bytes as a slice of a folder kept before it,
and it holds no file that may be a lost slice. Anything else is kept whole: a copy whose bytes differ (a re-export
with changed tags, a damaged copy) leaves two slices at one position, and the series is refused with its reason.
Only files whose SOPInstanceUID occurs more than once are hashed.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from medseg.data.dicom.records import SliceHeader
from medseg.hashing import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["drop_copied_folders"]


def drop_copied_folders(headers: Sequence[SliceHeader], keep_folders: set[Path]) -> list[SliceHeader]:
    """``headers`` without those of folders that only repeat slices of earlier folders (module docstring).

    Args:
        headers: every slice of the scan.
        keep_folders: folders never dropped (those holding a file that may be a lost slice).
    """

    def key(h: SliceHeader) -> tuple[str, int | None]:
        return (h.sop_instance_uid, h.frame)

    count = Counter(key(h) for h in headers if h.sop_instance_uid.strip())
    if not count or max(count.values()) < 2:
        return list(headers)
    digests: dict[Path, str | None] = {}

    def digest(h: SliceHeader) -> str | None:
        if h.path not in digests:
            try:
                digests[h.path] = file_sha256(h.path)
            except OSError:
                digests[h.path] = None  # unreadable now: not a proven copy
        return digests[h.path]

    by_folder: dict[Path, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        by_folder[h.path.parent].append(h)
    kept: dict[tuple[str, int | None], set[str]] = defaultdict(set)
    dropped: set[Path] = set()
    for folder in sorted(by_folder):
        slices = by_folder[folder]
        if folder not in keep_folders and all(
            count[key(h)] > 1 and (d := digest(h)) is not None and d in kept[key(h)] for h in slices
        ):
            dropped.add(folder)
            continue
        for h in slices:
            if count[key(h)] > 1 and (d := digest(h)) is not None:
                kept[key(h)].add(d)
    if dropped:
        n = sum(len(by_folder[f]) for f in dropped)
        logger.info(
            "%d folder(s) repeat %d slice(s) of other folders byte for byte: read once", len(dropped), n
        )
    return [h for h in headers if h.path.parent not in dropped]
