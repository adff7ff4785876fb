"""Processing work items: read (ahead, in a thread), predict, write outputs into a temp folder, publish, record.

Computing (:func:`compute_item`: predict, write the case into a temp folder, checksum) is separate from recording
(:func:`record_result`: rename the temp folder into place, one ledger transition), so that a Ray actor can compute
and the driver, which owns the ledger, records; in one process :func:`process_item` does both.

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
from medseg.batch.ledger import Ledger
from medseg.batch.ledger_db import Status
from medseg.batch.prefetch import LoadFailure, Prefetcher
from medseg.batch.publish import checksum_folder, new_temp_folder, publish_folder, remove_item_temps
from medseg.batch.reading import LoadedItem, load_item
from medseg.batch.report import QuarantineEntry
from medseg.data.dicom import SeriesInfo
from medseg.errors import InputError, ReasonCode

logger = logging.getLogger(__name__)

__all__ = [
    "Computed",
    "ItemOutcome",
    "Rejected",
    "RunContext",
    "compute_item",
    "failure",
    "load_or_failure",
    "process_item",
    "record_lost",
    "record_result",
    "run_items",
    "scrub",
    "timed_loader",
]

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
    worker: str | None = None  # which worker process or Ray actor computed it (None: this process)


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


@dataclass(frozen=True)
class Computed:
    """An item computed into a temp folder under the output folder, not yet published (picklable).

    The process that owns the ledger publishes it (:func:`record_result`): in a single-process run or a local
    worker that is the same process, in a Ray run the driver.
    """

    key: str
    tmp: Path
    checksums: dict[str, str]
    fingerprint: str | None
    timings: dict[str, float]


@dataclass(frozen=True)
class Rejected:
    """An item that could not be computed (picklable).

    Attributes:
        status: ``QUARANTINED`` (an unusable input; ``reason`` is its code) or ``FAILED`` (any other error;
            ``reason`` is the exception type and ``error`` the scrubbed text recorded in the ledger).
        problem_path: the offending file or folder (relative to the input root), for ``quarantine.csv``.
        detail: a sentence for ``quarantine.csv`` (input root replaced by ``<input>``).
    """

    key: str
    status: Status
    reason: str
    problem_path: str | None
    detail: str
    error: str | None
    seconds: float


def _write_case(
    tmp: Path, loaded: LoadedItem, label: Any, predictor: Any, ctx: RunContext, timing: dict[str, float]
) -> dict[str, str]:
    """Write the case's outputs into the temp folder ``tmp`` and checksum them (``tmp`` is removed on any error)."""
    from medseg.outputs import write_case_outputs
    from medseg.outputs.dicom_seg_geometry import UnsupportedSegSourceError

    item = loaded.item
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


def failure(item: WorkItem, exc: BaseException, ctx: RunContext, seconds: float) -> Rejected:
    """A ``FAILED`` result for ``item`` from the exception that ended its attempt (texts scrubbed of paths)."""
    raw = f"{type(exc).__name__}: {exc}"
    return Rejected(
        key=item.key,
        status=Status.FAILED,
        reason=type(exc).__name__,
        problem_path=item.relative_path,
        detail=raw.replace(str(ctx.root), "<input>"),
        error=scrub(raw, ctx.root, _item_words(ctx.root, item)),
        seconds=seconds,
    )


def compute_item(
    loaded: LoadedItem | LoadFailure[WorkItem], predictor: Any, ctx: RunContext
) -> Computed | Rejected:
    """Predict one read item and write its outputs into a new temp folder under the output folder.

    Never raises for item errors: an unusable input gives a ``QUARANTINED`` :class:`Rejected`, any other exception
    a ``FAILED`` one. Neither the ledger nor the final case folder is touched (see :func:`record_result`).
    """
    item = loaded.item
    start = time.perf_counter()
    read_s = loaded.seconds
    try:
        if isinstance(loaded, LoadFailure):
            raise loaded.error
        label = predictor.predict(loaded.image)
        infer_s = time.perf_counter() - start
        timing = {"read_s": round(read_s, 6), "infer_s": round(infer_s, 6)}
        tmp = new_temp_folder(ctx.output, item.key)
        checksums = _write_case(tmp, loaded, label, predictor, ctx, timing)
        write_s = time.perf_counter() - start - infer_s
    except InputError as exc:
        return Rejected(
            key=item.key,
            status=Status.QUARANTINED,
            reason=exc.code.value,
            problem_path=exc.path or item.relative_path,
            detail=exc.detail,
            error=None,
            seconds=read_s + time.perf_counter() - start,
        )
    except Exception as exc:  # anything else is a failure of this attempt, retried by the next run
        return failure(item, exc, ctx, read_s + time.perf_counter() - start)
    timings = {"read": read_s, "infer": infer_s, "write": write_s, "total": read_s + infer_s + write_s}
    return Computed(item.key, tmp, checksums, loaded.fingerprint, timings)


def _entry(item: WorkItem, result: Rejected) -> QuarantineEntry:
    return QuarantineEntry(
        key=item.key,
        kind=item.kind.value,
        status=result.status.value,
        reason=result.reason,
        item_path=item.relative_path,
        problem_path=result.problem_path or item.relative_path,
        detail=result.detail,
    )


def record_result(
    item: WorkItem, result: Computed | Rejected, ledger: Ledger, ctx: RunContext
) -> ItemOutcome:
    """Publish a computed item (rename its temp folder to ``OUTPUT/<key>``) and record how the item ended."""
    if isinstance(result, Computed):
        try:
            publish_folder(result.tmp, ctx.output / item.key)
        except Exception as exc:
            shutil.rmtree(result.tmp, ignore_errors=True)
            result = failure(item, exc, ctx, result.timings["total"])
    if isinstance(result, Rejected):
        if result.status == Status.QUARANTINED:
            ledger.mark_quarantined(item.key, result.reason, seconds=result.seconds)
            logger.warning("item %s: QUARANTINED [%s]", item.key, result.reason)
        else:
            ledger.mark_failed(item.key, result.error or result.reason, seconds=result.seconds)
            logger.warning(
                "item %s: FAILED (%s); the next run retries it", item.key, (result.error or result.reason)[:300]
            )
        return ItemOutcome(item.key, result.status, _entry(item, result))
    t = result.timings
    ledger.mark_done(
        item.key,
        output=item.key,
        checksums=result.checksums,
        formats=ctx.formats,
        timings=t,
        input_fingerprint=result.fingerprint,
    )
    logger.info(
        "item %s: DONE (read %.2f s, infer %.2f s, write %.2f s)", item.key, t["read"], t["infer"], t["write"]
    )
    return ItemOutcome(item.key, Status.DONE)


def record_lost(
    item: WorkItem, ledger: Ledger, ctx: RunContext, *, assigned_at: float, why: str, reason: str = "WorkerLost"
) -> ItemOutcome | None:
    """Settle an item that was in flight in a worker (process or Ray actor) that died; ``None``: hand it out again.

    The item's temp folders are removed. If the worker recorded an end after ``assigned_at`` (it died before
    reporting it), that end stands; if it started the item, the item becomes ``FAILED`` (retried by the next run);
    if it never started it (read ahead only), nothing happened to it and it can go to another worker. ``reason``
    names the failure (``WorkerLost``; ``WorkerTimeout`` for a worker stopped past the case time limit).
    """
    remove_item_temps(ctx.output, item.key)
    row = ledger.get(item.key)
    if row is None:
        return None
    if row.status != Status.PENDING and row.finished_at is not None and row.finished_at >= assigned_at:
        if row.status == Status.DONE:
            return ItemOutcome(item.key, Status.DONE)
        lost = Rejected(item.key, row.status, row.reason or "WorkerLost", None, row.error or "", None, 0.0)
        return ItemOutcome(item.key, row.status, _entry(item, lost))
    if row.started_at is None or row.started_at < assigned_at:
        return None
    text = f"{reason}: {why} while computing this item"
    ledger.mark_failed(item.key, text)
    logger.warning("item %s: FAILED (%s)", item.key, text)
    lost = Rejected(item.key, Status.FAILED, reason, None, text, text, 0.0)
    return ItemOutcome(item.key, Status.FAILED, _entry(item, lost))


def process_item(
    loaded: LoadedItem | LoadFailure[WorkItem], predictor: Any, ledger: Ledger, ctx: RunContext
) -> ItemOutcome:
    """Predict, write, publish and record one read item (or record why it could not be read).

    Never raises for item errors.
    """
    ledger.mark_started(loaded.item.key)
    # an interrupt propagates: the temp folder is already removed and the row stays unfinished (retried next run)
    return record_result(loaded.item, compute_item(loaded, predictor, ctx), ledger, ctx)


def load_or_failure(
    load: Callable[[WorkItem], LoadedItem], item: WorkItem
) -> LoadedItem | LoadFailure[WorkItem]:
    """``load(item)``, or a :class:`LoadFailure` holding the exception it raised (as the prefetch thread does)."""
    start = time.perf_counter()
    try:
        return load(item)
    except Exception as exc:
        return LoadFailure(item, exc, time.perf_counter() - start)


def timed_loader(spec: Any, root: Path) -> Callable[[WorkItem], LoadedItem]:
    """``load(item)``: read an item for ``spec``, with its reading time in ``seconds``."""

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
    with Prefetcher(items, timed_loader(predictor.spec, ctx.root), depth=prefetch) as loads:
        for loaded in loads:
            on_outcome(process_item(loaded, predictor, ledger, ctx))
