"""Several worker processes for one batch run: each loads the model once and processes its share of the items.

Items are dealt round-robin. Every worker opens the shared ledger itself (SQLite serialises the writers) and
reports each item's outcome to the parent through a queue, which draws the progress bar and collects the
quarantine list. A worker that dies (killed, out of memory) leaves its unfinished items ``PENDING``/``FAILED`` for
the next run; the parent notices the exit and goes on with the others.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.batch.discover import WorkItem
from medseg.batch.ledger import Ledger
from medseg.batch.process import ItemOutcome, RunContext, run_items, scrub

logger = logging.getLogger(__name__)

__all__ = ["ModelSource", "run_in_workers"]

_POLL_S = 0.5


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model (the arguments of :func:`medseg.inference.load_model`)."""

    uri: str
    device: str
    tracking_uri: str | None
    tta: bool
    overlap: float | None
    sw_batch_size: int | None
    postprocess: bool | dict[str, Any] | None = None

    def load(self) -> Any:
        from medseg.inference import load_model

        return load_model(
            self.uri,
            device=self.device,
            tracking_uri=self.tracking_uri,
            tta=self.tta,
            overlap=self.overlap,
            sw_batch_size=self.sw_batch_size,
            postprocess=self.postprocess,
        )


def _worker(
    index: int,
    model: ModelSource,
    items: list[WorkItem],
    ctx: RunContext,
    ledger_path: Path,
    threads: int,
    results: Any,
    level: int,
) -> None:
    logging.basicConfig(level=level, format=f"%(levelname)s worker{index} %(name)s: %(message)s")
    import signal

    import torch

    def _interrupt(signum: int, frame: object) -> None:  # the parent's terminate(): roll the case back, then stop
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)

    torch.set_num_threads(threads)
    try:
        predictor = model.load()
        with Ledger.open(ledger_path) as ledger:
            run_items(items, predictor, ledger, ctx, results.put)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal; the parent reports it
        return
    except Exception as exc:  # reported to the parent; the items left stay PENDING for the next run
        logger.error("worker %d stopped: %s", index, scrub(f"{type(exc).__name__}: {exc}", ctx.root, []))
        results.put(("error", index, type(exc).__name__))
        raise SystemExit(1) from None
    results.put(("end", index, ""))


def run_in_workers(
    items: Sequence[WorkItem],
    model: ModelSource,
    ctx: RunContext,
    ledger_path: Path,
    workers: int,
    on_outcome: Callable[[ItemOutcome], None],
) -> list[int]:
    """Process ``items`` in ``workers`` spawned processes; returns the indices of workers that did not finish."""
    ctx_mp = mp.get_context("spawn")
    results = ctx_mp.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    level = logging.getLogger("medseg").getEffectiveLevel()
    procs = {
        i: ctx_mp.Process(
            target=_worker,
            args=(i, model, list(items[i::workers]), ctx, ledger_path, threads, results, level),
            name=f"medseg-batch-worker{i}",
            daemon=True,
        )
        for i in range(min(workers, len(items)))
    }
    for p in procs.values():
        p.start()
    running = set(procs)
    broken: list[int] = []
    try:
        while running:
            try:
                msg = results.get(timeout=_POLL_S)
            except queue.Empty:
                for i in sorted(i for i in running if not procs[i].is_alive()):  # gone without an end marker
                    logger.error("worker %d stopped unexpectedly (exit code %s)", i, procs[i].exitcode)
                    running.discard(i)
                    broken.append(i)
                continue
            if isinstance(msg, ItemOutcome):
                on_outcome(msg)
            elif msg[0] == "end":
                running.discard(msg[1])
            elif msg[0] == "error":
                logger.error("worker %d could not run (%s)", msg[1], msg[2])
                running.discard(msg[1])
                broken.append(msg[1])
    finally:
        for p in procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return sorted(set(broken))
