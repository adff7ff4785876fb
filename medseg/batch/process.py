"""Processing work items: read (ahead, in a thread), predict, write outputs into a temp folder, publish, record.

Each item ends in exactly one ledger transition: ``DONE`` (outputs published under ``OUTPUT/<key>`` and their
sha256 recorded), ``QUARANTINED`` (an :class:`~medseg.errors.InputError`: the input is unusable; its reason code is
recorded) or ``FAILED`` (any other exception: recorded with a scrubbed error text and retried by the next run).
Logs name items by key and reason code only.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.batch.discover import WorkItem
from medseg.batch.ledger import Ledger, Status
from medseg.batch.prefetch import LoadFailure, Prefetcher
from medseg.batch.publish import checksum_folder, new_temp_folder, publish_folder
from medseg.batch.reading import LoadedItem, load_item
from medseg.batch.report import QuarantineEntry
from medseg.data.dicom import SeriesInfo
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["ItemOutcome", "RunContext", "process_item", "run_items", "scrub"]

_REDACTED = "<redacted>"


@dataclass(frozen=True)
class RunContext:
    """What processing an item needs besides the predictor and the ledger (picklable, for worker processes).

    Attributes:
        root: the input root (paths of items are relative to it).
        output: the output folder.
        formats: output formats for :func:`medseg.outputs.write_case_outputs`.
        provenance: model provenance copied into every case report.
        name_key: the naming key (also hashes UIDs in the case reports).
        created: creation time stamped into every DICOM SEG of this output folder (fixed, so a redone case gives a
            byte-identical SEG with the same UIDs).
    """

    root: Path
    output: Path
    formats: tuple[str, ...]
    provenance: dict[str, Any]
    name_key: bytes
    created: _dt.datetime


@dataclass(frozen=True)
class ItemOutcome:
    """How an item ended; ``quarantine`` holds the user-facing entry (with paths) of a quarantined or failed item."""

    key: str
    status: Status
    quarantine: QuarantineEntry | None = None


def _item_words(root: Path, item: WorkItem) -> list[str]:
    words = {root.name, *Path(item.relative_path).parts}
    for source in item.sources.values():
        path = Path(source.files[0]).parent if isinstance(source, SeriesInfo) else Path(source)
        try:
            words.update(path.relative_to(root).parts)
        except ValueError:
            words.update(path.parts)
    return [w for w in words if w and w not in (".", "..", "/")]


def scrub(text: str, root: Path, words: Iterable[str]) -> str:
    """``text`` without input paths (error texts go to the ledger, the report and the logs).

    The input root is replaced first, then the item's own path components (``words``, which may hold spaces), then
    whatever path follows the root up to a space, quote or colon.
    """
    text = text.replace(str(root), "<input>")
    for word in sorted(set(words), key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", _REDACTED, text)
    return re.sub(r"<input>[/\\][^\s'\":]*", f"<input>/{_REDACTED}", text)


def _case_provenance(ctx: RunContext, item: WorkItem) -> dict[str, Any]:
    return {**ctx.provenance, "case_id": item.key, "item_kind": item.kind.value}


def _write_case(
    loaded: LoadedItem, label: Any, predictor: Any, ctx: RunContext, timing: dict[str, float]
) -> dict[str, str]:
    """Write the case's outputs into a temp folder, checksum them, and rename the folder to ``OUTPUT/<key>``."""
    from medseg.outputs import write_case_outputs
    from medseg.outputs.dicom_seg import UnsupportedSegSourceError

    item = loaded.item
    tmp = new_temp_folder(ctx.output, item.key)
    try:
        write_case_outputs(
            tmp,
            image=loaded.image,
            label=label,
            spec=predictor.spec,
            provenance=_case_provenance(ctx, item),
            source_dicom_files=loaded.source_dicom_files,
            formats=ctx.formats,
            timing=timing,
            uid_key=ctx.name_key,
            created=ctx.created,
        )
        checksums = checksum_folder(tmp)
        if item.input_fingerprint() != loaded.fingerprint:
            raise InputError(
                ReasonCode.INPUT_CHANGED,
                item.relative_path,
                "an input file changed while it was segmented (still being copied?); the next run segments it "
                "again",
            )
        publish_folder(tmp, ctx.output / item.key)
    except UnsupportedSegSourceError as exc:  # final for this input: quarantined, not retried every run
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(
            ReasonCode.UNSUPPORTED_FORMAT,
            item.relative_path,
            f"{exc}; run without the seg output (--formats nifti,report,qc) to segment this series",
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checksums


def _quarantine(ledger: Ledger, item: WorkItem, exc: InputError, seconds: float) -> ItemOutcome:
    code = exc.code.value
    ledger.mark_quarantined(item.key, code, seconds=seconds)
    logger.warning("item %s: QUARANTINED [%s]", item.key, code)
    entry = QuarantineEntry(
        key=item.key,
        kind=item.kind.value,
        status=Status.QUARANTINED.value,
        reason=code,
        item_path=item.relative_path,
        problem_path=exc.path or item.relative_path,
        detail=exc.detail,
    )
    return ItemOutcome(item.key, Status.QUARANTINED, entry)


def process_item(
    loaded: LoadedItem | LoadFailure[WorkItem], predictor: Any, ledger: Ledger, ctx: RunContext
) -> ItemOutcome:
    """Predict and write one read item (or record why it could not be read); never raises for item errors."""
    item = loaded.item
    ledger.mark_started(item.key)
    start = time.perf_counter()
    read_s = loaded.seconds
    try:
        if isinstance(loaded, LoadFailure):
            raise loaded.error
        label = predictor.predict(loaded.image)
        infer_s = time.perf_counter() - start
        timing = {"read_s": round(read_s, 6), "infer_s": round(infer_s, 6)}
        checksums = _write_case(loaded, label, predictor, ctx, timing)
        write_s = time.perf_counter() - start - infer_s
    except InputError as exc:
        return _quarantine(ledger, item, exc, read_s + time.perf_counter() - start)
    except Exception as exc:  # anything else is a failure of this attempt, retried by the next run
        raw = f"{type(exc).__name__}: {exc}"
        text = scrub(raw, ctx.root, _item_words(ctx.root, item))
        ledger.mark_failed(item.key, text, seconds=read_s + time.perf_counter() - start)
        logger.warning("item %s: FAILED (%s); the next run retries it", item.key, text[:300])
        entry = QuarantineEntry(
            key=item.key,
            kind=item.kind.value,
            status=Status.FAILED.value,
            reason=type(exc).__name__,
            item_path=item.relative_path,
            problem_path=item.relative_path,
            detail=raw.replace(str(ctx.root), "<input>"),
        )
        return ItemOutcome(item.key, Status.FAILED, entry)
    total = read_s + infer_s + write_s
    ledger.mark_done(
        item.key,
        output=item.key,
        checksums=checksums,
        formats=ctx.formats,
        timings={"read": read_s, "infer": infer_s, "write": write_s, "total": total},
        input_fingerprint=loaded.fingerprint,
    )
    logger.info("item %s: DONE (read %.2f s, infer %.2f s, write %.2f s)", item.key, read_s, infer_s, write_s)
    return ItemOutcome(item.key, Status.DONE)


def _timed_loader(spec: Any, root: Path) -> Callable[[WorkItem], LoadedItem]:
    def load(item: WorkItem) -> LoadedItem:
        start = time.perf_counter()
        loaded = load_item(item, spec, root)
        loaded.seconds = time.perf_counter() - start
        return loaded

    return load


def run_items(
    items: Sequence[WorkItem],
    predictor: Any,
    ledger: Ledger,
    ctx: RunContext,
    on_outcome: Callable[[ItemOutcome], None],
    *,
    prefetch: int = 1,
) -> None:
    """Process ``items`` in order, reading the next ones in a background thread (``prefetch`` items ahead)."""
    with Prefetcher(items, _timed_loader(predictor.spec, ctx.root), depth=prefetch) as loads:
        for loaded in loads:
            on_outcome(process_item(loaded, predictor, ledger, ctx))
