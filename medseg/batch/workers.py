"""Several worker processes for one batch run on this machine, fed from one work queue.

Each worker loads the model once on its own device (:mod:`medseg.batch.devices`) and asks the parent for an item
whenever it starts computing the previous one (so it reads the next item while computing the current one): the next
item goes to the first free worker, and one slow study holds one worker while the others go on with the rest. The
parent hands items out largest first (by number of input files), so a big study does not start last and make the run
wait for it alone.

Every worker talks to the parent over its own pipe (a killed worker cannot corrupt the others' channel) and writes
the shared ledger itself (SQLite serialises the writers). A worker that dies (killed, out of memory) is noticed at
once through its process sentinel: the item it was computing becomes ``FAILED`` (retried by the next run), an item
it had only read ahead goes to another worker, and the others go on; no item is handed out twice. A worker that
holds a case past the case time limit (:mod:`medseg.batch.deadline`; hung in a system call, say) is killed
(SIGKILL), that case becomes ``FAILED`` with reason ``WorkerTimeout``, and a replacement worker takes its place.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.batch.deadline import TIMEOUT_REASON, CaseTimeout
from medseg.batch.discover import WorkItem
from medseg.batch.ledger import Ledger
from medseg.batch.process import (
    ItemOutcome,
    RunContext,
    load_or_failure,
    process_item,
    record_lost,
    scrub,
    timed_loader,
)
from medseg.batch.publish import remove_item_temps

if TYPE_CHECKING:
    from medseg.inference.options import InferenceOptions

logger = logging.getLogger(__name__)

__all__ = ["ModelSource", "largest_first", "run_in_workers"]

_POLL_S = 0.5


@dataclass(frozen=True)
class ModelSource:
    """How a worker loads the model: the arguments of :func:`medseg.inference.load_model`."""

    uri: str
    tracking_uri: str | None
    options: InferenceOptions

    @property
    def device(self) -> str:
        return self.options.device

    def on(self, device: str) -> ModelSource:
        """The same model and settings on another device."""
        return dataclasses.replace(self, options=self.options.replace(device=device))

    def load(self) -> Any:
        from medseg.inference import load_model

        return load_model(self.uri, self.options, tracking_uri=self.tracking_uri)


def largest_first(items: Sequence[WorkItem]) -> list[WorkItem]:
    """``items`` by decreasing number of input files (DICOM slices), ties in their order: the hand-out order."""
    from medseg.data.dicom import SeriesInfo

    def size(item: WorkItem) -> int:
        return sum(len(s.files) if isinstance(s, SeriesInfo) else 1 for s in item.sources.values())

    return sorted(items, key=size, reverse=True)


def _next_item(conn: Connection) -> WorkItem | None:
    """Ask the parent for an item; ``None`` when there is no more work (or the parent is gone)."""
    try:
        conn.send(("want",))
        return conn.recv()
    except (EOFError, OSError):
        return None


def _worker(
    index: int,
    model: ModelSource,
    ctx: RunContext,
    ledger_path: Path,
    threads: int,
    conn: Connection,
    level: int,
    setup: Callable[[], None] | None,
) -> None:
    logging.basicConfig(level=level, format=f"%(levelname)s worker{index} %(name)s: %(message)s")
    import signal

    import torch

    def _interrupt(signum: int, frame: object) -> None:  # the parent's terminate(): roll the case back, then stop
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)

    torch.set_num_threads(threads)
    try:
        if setup is not None:
            setup()
        predictor = model.load()
        load = timed_loader(predictor.spec, ctx.root)
        with Ledger.open(ledger_path) as ledger, ThreadPoolExecutor(1, thread_name_prefix="medseg-read") as pool:
            item = _next_item(conn)
            reading = None if item is None else pool.submit(load_or_failure, load, item)
            while reading is not None:
                loaded = reading.result()
                item = _next_item(conn)  # read the next item while this one is computed
                reading = None if item is None else pool.submit(load_or_failure, load, item)
                conn.send(("done", process_item(loaded, predictor, ledger, ctx)))
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal; the parent reports it
        return
    except Exception as exc:  # reported to the parent, which settles this worker's items
        logger.error("worker %d stopped: %s", index, scrub(f"{type(exc).__name__}: {exc}", ctx.root, []))
        _send(conn, ("error", type(exc).__name__))
        raise SystemExit(1) from None
    _send(conn, ("end",))


def _send(conn: Connection, msg: tuple) -> None:
    try:
        conn.send(msg)
    except (BrokenPipeError, OSError):
        pass


class _Dispatcher:
    """The parent's side: hands items to workers that ask, tracks what each holds, settles dead workers."""

    def __init__(self, items: Sequence[WorkItem], ctx: RunContext, ledger: Ledger, on_outcome) -> None:
        self.pending = collections.deque(largest_first(items))
        self.ctx, self.ledger, self.on_outcome = ctx, ledger, on_outcome
        self.held: dict[int, dict[str, tuple[WorkItem, float]]] = collections.defaultdict(dict)
        self.free_at: dict[int, float] = {}  # when each worker finished its last case
        self.durations: list[float] = []  # of the cases finished in this run (for the automatic time limit)

    def _current(self, i: int) -> tuple[str, float] | None:
        """``(key, since)`` of the case worker ``i`` is on: the oldest it holds (items are computed in the order
        they were handed out), timed from when the worker was free for it."""
        held = self.held.get(i)
        if not held:
            return None
        key, (_item, assigned_at) = min(held.items(), key=lambda kv: kv[1][1])
        return key, max(assigned_at, self.free_at.get(i, 0.0))

    def overdue(self, i: int, limit: float, now: float) -> str | None:
        """The key of the case worker ``i`` has been on for more than ``limit`` seconds (None: no such case)."""
        current = self._current(i)
        return current[0] if current is not None and now - current[1] > limit else None

    def handle(self, i: int, conn: Connection, msg: tuple) -> bool:
        """Act on a message of worker ``i``; False when the worker has finished (``end``/``error``)."""
        if msg[0] == "want":
            item = self.pending.popleft() if self.pending else None
            if item is not None:
                self.held[i][item.key] = (item, time.time())
            try:
                conn.send(item)
            except (BrokenPipeError, OSError):  # died meanwhile: the sentinel settles it
                pass
            return True
        if msg[0] == "done":
            outcome: ItemOutcome = msg[1]
            current, now = self._current(i), time.time()
            if self.held[i].pop(outcome.key, None) is not None:  # not yet settled as lost
                if current is not None and current[0] == outcome.key:
                    self.durations.append(now - current[1])
                self.free_at[i] = now
                self.on_outcome(dataclasses.replace(outcome, worker=f"worker{i}"))
            return True
        if msg[0] == "error":
            logger.error("worker %d could not go on (%s)", i, msg[1])
        return False

    def settle(self, i: int, why: str) -> None:
        """Worker ``i`` is gone: settle the items it held (FAILED if it was computing one, else handed out again)."""
        for key, (item, assigned_at) in sorted(self.held.pop(i, {}).items(), key=lambda kv: -kv[1][1]):
            outcome = record_lost(item, self.ledger, self.ctx, assigned_at=assigned_at, why=why)
            if outcome is None:
                logger.info("item %s: read ahead by worker %d only; handed to another worker", key, i)
                self.pending.appendleft(item)
            else:
                self.on_outcome(dataclasses.replace(outcome, worker=f"worker{i}"))

    def settle_timeout(self, i: int, key: str, limit: float) -> None:
        """Worker ``i`` was killed past the time limit while on case ``key``: that case is ``FAILED``
        (``WorkerTimeout``, even when it hung while being read); a case it had only read ahead is handed out again."""
        held = self.held.get(i, {})
        if key in held:
            item, assigned_at = held.pop(key)
            row = self.ledger.get(key)
            if row is not None and (row.started_at is None or row.started_at < assigned_at):
                self.ledger.mark_started(key)  # stuck before computing (reading it): still an attempt
            why = f"no result after {limit:.0f} s (the case time limit); the worker was stopped"
            outcome = record_lost(
                item, self.ledger, self.ctx, assigned_at=assigned_at, why=why, reason=TIMEOUT_REASON
            )
            if outcome is not None:
                self.on_outcome(dataclasses.replace(outcome, worker=f"worker{i}"))
        self.settle(i, f"worker {i} was stopped (case time limit)")


def run_in_workers(
    items: Sequence[WorkItem],
    model: ModelSource,
    ctx: RunContext,
    ledger: Ledger,
    workers: int,
    on_outcome: Callable[[ItemOutcome], None],
    *,
    devices: Sequence[str] | None = None,
    setup: Callable[[], None] | None = None,
    timeout: CaseTimeout | None = None,
) -> list[int]:
    """Process ``items`` in ``workers`` spawned processes fed from one queue; returns the workers that broke.

    Args:
        ledger: the run's ledger (open in this process; each worker opens the same file).
        devices: the device of each worker (default: ``model.device`` for all).
        setup: a picklable callable run in each worker before the model is loaded (e.g. to register a custom
            network in :data:`medseg.nets.registry.NETWORKS`).
        timeout: the per-case time limit (None: none); a worker past it is killed and replaced on its device.
    """
    ctx_mp = mp.get_context("spawn")
    n = min(workers, len(items))
    devices = list(devices) if devices is not None else [model.device] * n
    threads = max(1, (os.cpu_count() or 1) // max(n, 1))
    level = logging.getLogger("medseg").getEffectiveLevel()
    dispatcher = _Dispatcher(items, ctx, ledger, on_outcome)
    conns: dict[int, Connection] = {}
    procs: dict[int, Any] = {}
    device_of: dict[int, str] = {}

    def start(i: int, device: str) -> None:
        parent_end, child_end = ctx_mp.Pipe(duplex=True)
        procs[i] = ctx_mp.Process(
            target=_worker,
            args=(i, model.on(device), ctx, ledger.path, threads, child_end, level, setup),
            name=f"medseg-batch-worker{i}",
            daemon=True,
        )
        conns[i], device_of[i] = parent_end, device
        procs[i].start()
        child_end.close()
        logger.info("worker %d: device %s", i, device)

    for i in range(n):
        start(i, devices[i])
    running = set(procs)
    broken: list[int] = []
    finished = False
    try:
        while running:
            by_conn = {conns[i]: i for i in running}
            by_sentinel = {procs[i].sentinel: i for i in running}
            ready = wait([*by_conn, *by_sentinel], timeout=_POLL_S)
            gone = set()
            for obj in ready:
                if obj in by_conn:
                    i = by_conn[obj]
                    try:
                        msg = obj.recv()
                    except (EOFError, OSError):
                        gone.add(i)
                        continue
                    if not dispatcher.handle(i, obj, msg):
                        running.discard(i)
                        if msg[0] == "error":
                            broken.append(i)
                            dispatcher.settle(i, f"worker {i} stopped ({msg[1]})")
                elif by_sentinel[obj] in running:
                    gone.add(by_sentinel[obj])
            for i in sorted(gone & running):
                _drain(i, conns[i], dispatcher)
                procs[i].join(timeout=5)
                logger.error("worker %d stopped unexpectedly (exit code %s)", i, procs[i].exitcode)
                running.discard(i)
                broken.append(i)
                dispatcher.settle(i, f"the worker process stopped (exit code {procs[i].exitcode})")
            for i in _stop_overdue(timeout, dispatcher, sorted(running), procs, conns):
                running.discard(i)
                if dispatcher.pending:  # a replacement on the same device takes the stopped worker's place
                    new = max(procs) + 1
                    start(new, device_of[i])
                    running.add(new)
        if dispatcher.pending:
            logger.error(
                "no worker left: %d item(s) stay PENDING for the next run", len(dispatcher.pending)
            )
        finished = True
    finally:
        for i, p in procs.items():
            if not finished and p.is_alive():
                p.terminate()  # SIGTERM: the worker rolls its case back and stops
            p.join(timeout=10 if finished else 30)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
            conns[i].close()
        if not finished:
            for i in list(dispatcher.held):
                for item, _at in dispatcher.held[i].values():
                    remove_item_temps(ctx.output, item.key)
    return sorted(set(broken))


def _stop_overdue(
    timeout: CaseTimeout | None,
    dispatcher: _Dispatcher,
    running: Sequence[int],
    procs: dict[int, Any],
    conns: dict[int, Connection],
) -> list[int]:
    """Kill the workers whose case has run past the time limit and settle their cases; returns those workers."""
    if timeout is None:
        return []
    now, limit = time.time(), timeout.limit(dispatcher.durations)
    stopped = []
    for i in running:
        key = dispatcher.overdue(i, limit, now)
        if key is None:
            continue
        logger.error(
            "worker %d: item %s has run for more than %.0f s (case time limit: %s); stopping the worker",
            i,
            key,
            limit,
            timeout.describe(),
        )
        procs[i].kill()  # SIGKILL: a process stuck in a system call may never act on SIGTERM
        procs[i].join(timeout=10)
        _drain(i, conns[i], dispatcher)  # a result it sent just before still counts
        dispatcher.settle_timeout(i, key, limit)
        stopped.append(i)
    return stopped


def _drain(i: int, conn: Connection, dispatcher: _Dispatcher) -> None:
    """Handle what a dead worker sent before it died (its last outcome may still be in the pipe)."""
    try:
        while conn.poll():
            msg = conn.recv()
            if msg[0] == "done":
                dispatcher.handle(i, conn, msg)
    except (EOFError, OSError):
        pass
