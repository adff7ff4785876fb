"""Read the next work item in a background thread while the current one is computed.

The queue is bounded (``depth`` items, default 1), so at most ``depth + 2`` items are in memory: the one being
computed, the ones waiting, and the one being read. A read error is not raised in the thread: it travels through
the queue as a :class:`LoadFailure` so the runner can quarantine or fail that item and go on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["LoadFailure", "Prefetcher"]

T = TypeVar("T")
R = TypeVar("R")
_END = object()
_POLL_S = 0.1


@dataclass
class LoadFailure(Generic[T]):
    """Reading ``item`` raised ``error`` after ``seconds``."""

    item: T
    error: Exception
    seconds: float


class Prefetcher(Generic[T, R]):
    """Iterate over ``load(item)`` for ``items`` in order, loading ahead in one daemon thread.

    Use as a context manager: leaving it (normally, on an error or on Ctrl-C) stops and joins the thread.
    """

    def __init__(self, items: Sequence[T], load: Callable[[T], R], *, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._items = list(items)
        self._load = load
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medseg-prefetch", daemon=True)
        self._started = False

    def _put(self, obj: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(obj, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for item in self._items:
            if self._stop.is_set():
                return
            start = time.perf_counter()
            try:
                result: object = self._load(item)
            except Exception as exc:  # handed to the consumer, which decides what the item becomes
                result = LoadFailure(item, exc, time.perf_counter() - start)
            if not self._put(result):
                return
        self._put(_END)

    def __iter__(self) -> Iterator[R | LoadFailure[T]]:
        if self._started:
            raise RuntimeError("a Prefetcher can be iterated only once")
        self._started = True
        self._thread.start()
        while True:
            try:
                obj = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return  # the thread ended without its end marker (stopped)
                continue
            if obj is _END:
                return
            yield obj

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
