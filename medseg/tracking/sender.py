"""Delivery of a run's MLflow calls: one background thread, a deadline per call, a circuit breaker, the spool.

The training thread journals each job (:mod:`medseg.tracking.journal`: the call's data is on disk before it is
queued, so a killed process loses nothing) and queues it: :meth:`Sender.submit` never waits on the network. One
sender thread makes the calls in the order they were queued, each within a deadline (``tracking.timeout_s``, run in
a helper thread that is left behind if it does not return), so a hung server never stalls training; a call that
returns successfully is acknowledged in the journal. The breaker opens for the rest of the run, and from then on
every job, queued or new, is kept in the journal unsent, in order (replayed later by ``medseg replay``), when:

- a call does not return within its deadline (the first timeout),
- the job that opens the run fails in any way (probe, experiment, run creation),
- a call fails and a fresh probe confirms the store is gone, or two calls fail in a row.

:meth:`Sender.flush` waits for the jobs queued so far, but gives up on a call that has been in flight for
``tracking.flush_timeout_s`` (and on the whole queue after ``max(timeout_s, flush_timeout_s)``): it opens the
breaker and keeps the call and everything behind it for a replay. A call given up on may still reach a slow server
later: when its success arrives (even after the run ended, as long as the process lives) it is acknowledged in the
journal with ``"late": true`` and not replayed. One that lands while no process is left to hear it (the server
answered after the process exited) is still unacknowledged; a replay then skips the metric values the run already
has (same key, step, timestamp and value; MLflow's SQL store ignores such a repeat, its file store does not) and the
parameters it already has with the same value (tags and artifacts are overwritten with the same content).
tests/test_tracking_offline.py and tests/test_tracking_replay.py check both. Local stores (SQLite, files) have no
network to hang on: their calls get no deadline and a flush waits for them (a fresh SQLite store takes seconds to
create its tables).

Why ours and not MLflow's asynchronous logging (``log_batch(synchronous=False)``): MLflow's queue covers metrics,
params and tags, not run creation or artifacts; its calls are bounded only by MLflow's HTTP timeout and retries;
what it cannot send is dropped with an error log instead of kept for replay. ``benchmarks/mlflow_faults.py``
(a 1.3 s demo training): a hung server cost +34 to +46 % against a healthy SQLite run when every call waited
``timeout_s`` in the training thread, -29 to -59 % with this sender (about 0.9 s over the untracked training:
the end of a run shorter than ``flush_timeout_s``), a refused one +0 to +14 % over the untracked training.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medseg.tracking.journal import Spool
from medseg.tracking.store import Connectivity, redact_text, redact_uri

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 2
_MAX_KEPT_ERRORS = 20


class Unreachable(Exception):
    """Raised by a job's call when a probe found the store unreachable; the message is the probe's detail."""


@dataclass(eq=False)
class Job:
    """One MLflow call of a run and the journal record that replays it if it cannot be sent.

    Attributes:
        label: what the call does, for messages ("metrics", "create run", ...).
        kind: the spool's count key of what it carries ("metrics", "params", "tags", "artifacts", "run_end").
        count: how many entries it carries (for ``lost`` when even the journal cannot be written).
        call: the MLflow call (run in a helper thread); ``None``: nothing to send, keep only.
        record: the job's journal record (``kind`` and data); ``None``: nothing to keep.
        done: called with the call's result once it succeeded (under the sender's lock; also when it landed after
            it was given up on).
        opens_run: a failure of this job opens the breaker ("could not create the run: ...").
        retry_offline: tried even after the breaker opened, if a fresh probe answers (closing the run).
        deadline_s: the call's deadline (``None``: the sender's ``timeout_s``).
        is_probe: the call is a probe: a flush gives up on it after ``flush_timeout_s`` without probing again.
    """

    label: str
    kind: str
    count: int
    call: Callable[[], Any] | None
    record: dict[str, Any] | None
    done: Callable[[Any], None] | None = None
    opens_run: bool = False
    retry_offline: bool = False
    deadline_s: float | None = None
    is_probe: bool = False
    seq: int | None = None  # its number in the journal, once written
    abandoned: bool = False  # a flush gave up on it
    timed_out: bool = False  # its deadline passed
    landed: bool = False  # it succeeded (acknowledged in the journal)
    alive_checked: bool = False


@dataclass(frozen=True)
class _Outcome:
    status: str  # "ok", "error", "timeout", "unreachable", "skipped"
    result: Any = None
    message: str = ""


class Sender:
    """Sends a run's jobs in order on one background thread; see the module docstring for the rules.

    Args:
        tracking_uri: the store (named in messages only; the jobs' calls hold their own client).
        timeout_s: deadline of one call; ``None``: no deadline, and :meth:`flush` waits until the queue is
            empty (for local stores, which have no network to hang on).
        flush_timeout_s: how long :meth:`flush` waits for a call in flight.
        spool: the run's journal: acknowledges the calls that landed, keeps the others for a replay (``None``: none).
        probe: checks within the given seconds whether the store answers.
    """

    def __init__(
        self,
        tracking_uri: str,
        timeout_s: float | None,
        flush_timeout_s: float,
        spool: Spool | None,
        probe: Callable[[float], Connectivity],
    ) -> None:
        self.tracking_uri = tracking_uri
        self.timeout_s = timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.spool = spool
        self._probe = probe
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._inflight: Job | None = None
        self._inflight_since = 0.0
        self._submitted = 0
        self._finished = 0
        self._closing = False
        self._failures = 0
        self._offline_reason: str | None = None
        self.errors: list[str] = []
        self.lost: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="medseg-tracking-sender", daemon=True)

    # ------------------------------------------------------------------ state
    @property
    def _probe_timeout(self) -> float:
        return self.timeout_s if self.timeout_s is not None else self.flush_timeout_s

    @property
    def offline_reason(self) -> str | None:
        return self._offline_reason

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Queue ``job`` (or spool it at once when offline and nothing is ahead of it); returns its number."""
        with self._cond:
            self._submitted += 1
            number = self._submitted
            idle = not self._queue and self._inflight is None
            if self._offline_reason is not None and not job.retry_offline and idle:
                self._spool_job(job)
                self._finish()
            else:
                self._queue.append(job)
                self._cond.notify_all()
            return number

    def flush(self, upto: int | None = None) -> bool:
        """Wait until the jobs submitted so far (or up to number ``upto``) are sent or spooled; True if online.

        A call in flight for ``flush_timeout_s`` gets one probe of at most ``flush_timeout_s`` (a probe in flight
        that long is its own answer): if the store does not answer, the call is given up on, the breaker opens
        and what is left goes to the spool; if it answers (a slow, not a hung, server) the call keeps its own
        deadline. The whole wait is capped at
        ``2 * timeout_s + flush_timeout_s``.
        """
        with self._cond:
            target = self._submitted if upto is None else upto
            if self.timeout_s is None:
                self._cond.wait_for(lambda: self._finished >= target)
                return self._offline_reason is None
            cap = 2 * self.timeout_s + self.flush_timeout_s
            started = time.monotonic()
            while self._finished < target:
                job, now = self._inflight, time.monotonic()
                stuck_for = now - self._inflight_since if job is not None else 0.0
                if job is not None and stuck_for >= self.flush_timeout_s and job.is_probe:
                    self._abandon(job, f"{job.label}: no answer within {stuck_for:.1f} s")
                elif job is not None and stuck_for >= self.flush_timeout_s and not job.alive_checked:
                    job.alive_checked = True
                    self._cond.release()
                    try:
                        probe = self._probe(self.flush_timeout_s)
                    finally:
                        self._cond.acquire()
                    if not probe.ok and job is self._inflight:
                        self._abandon(
                            job, f"{job.label}: still waiting after {stuck_for:.1f} s, and {probe.detail}"
                        )
                elif now - started >= cap:
                    pending = self._submitted - self._finished
                    self._abandon(job, f"{pending} tracking calls still pending after {cap:g} s")
                else:
                    wake = cap if job is not None and job.alive_checked else self.flush_timeout_s - stuck_for
                    self._cond.wait(max(0.01, min(wake, cap - (now - started))))
            return self._offline_reason is None

    def close(self) -> None:
        """Stop the thread once the queue is empty (a call given up on may still finish in the background)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(0.1)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                if self._offline_reason is not None and not job.retry_offline:
                    self._spool_job(job)
                    self._finish()
                    continue
                self._inflight, self._inflight_since = job, time.monotonic()
                was_offline = self._offline_reason is not None
                self._cond.notify_all()  # a flush times the call from now
            outcome = self._execute(job, was_offline)
            with self._cond:
                if job.abandoned:  # flush gave up on it and kept it meanwhile
                    if outcome.status == "ok":  # it had returned just before: it landed after all
                        self._landed(job, outcome.result, late=True)
                    continue
                self._inflight = None
                try:
                    self._settle(job, outcome, was_offline)
                except Exception as exc:  # noqa: BLE001 - the sender must outlive any job
                    logger.exception("tracking job %r could not be settled", job.label)
                    self._open_breaker(f"internal error after {job.label}: {type(exc).__name__}: {exc}")
                finally:
                    self._finish()

    def _execute(self, job: Job, was_offline: bool) -> _Outcome:
        """Run the job's call within its deadline (outside the lock); probe after a first failure."""
        fn = job.call
        if fn is None or (was_offline and not self._probe(self._probe_timeout).ok):
            return _Outcome("skipped")
        box: dict[str, Any] = {}
        deadline = None if self.timeout_s is None else job.deadline_s or self.timeout_s

        def call() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the sender thread
                box["error"] = exc
            with self._cond:
                box["returned"] = True
                if "error" not in box and (job.abandoned or job.timed_out):  # given up on, and yet it landed
                    self._landed(job, box.get("result"), late=True)
                self._cond.notify_all()

        if deadline is None:
            call()
        else:
            threading.Thread(target=call, name=f"medseg-tracking-{job.kind}", daemon=True).start()
            with self._cond:  # until it returns, its deadline passes, or a flush gives up on it
                self._cond.wait_for(lambda: "returned" in box or job.abandoned, deadline)
                if "returned" not in box:
                    job.timed_out = True  # decided under the lock: a later success is a late landing
            if "returned" not in box:
                return _Outcome("timeout", message=f"{job.label}: timed out, no answer within {deadline:g} s")
        exc = box.get("error")
        if exc is None:
            return _Outcome("ok", box.get("result"))
        if isinstance(exc, Unreachable):
            return _Outcome("unreachable", message=str(exc))
        message = redact_text(f"{job.label}: {type(exc).__name__}: {exc}")[:500]
        if was_offline or job.opens_run or self._failures + 1 >= MAX_CONSECUTIVE_FAILURES:
            return _Outcome("error", message=message)
        probe = self._probe(self._probe_timeout)  # one failure: is the store gone, or was it this call?
        return _Outcome("error", result=probe, message=message)

    def _settle(self, job: Job, outcome: _Outcome, was_offline: bool) -> None:
        """Record the outcome of ``job`` (under the lock): done, or spooled and maybe offline from now on."""
        if outcome.status == "ok":
            self._failures = 0
            self._landed(job, outcome.result)
            return
        if outcome.message and outcome.status != "unreachable":
            self._record(outcome.message)
        self._spool_job(job)
        if was_offline or outcome.status == "skipped":
            return
        if outcome.status == "unreachable":
            self._open_breaker(outcome.message)
        elif job.opens_run:
            self._open_breaker(f"could not create the run: {outcome.message}")
        elif outcome.status == "timeout":
            self._open_breaker(outcome.message)
        else:
            self._failures += 1
            probe = outcome.result
            if self._failures >= MAX_CONSECUTIVE_FAILURES:
                self._open_breaker(
                    f"{self._failures} tracking calls failed in a row; last: {outcome.message}"
                )
            elif isinstance(probe, Connectivity) and not probe.ok:
                self._open_breaker(probe.detail)

    def _landed(self, job: Job, result: Any, late: bool = False) -> None:
        """``job``'s call succeeded (under the lock): acknowledge it in the journal and run its ``done``."""
        if job.landed:
            return
        job.landed = True
        if late:
            logger.info("tracking call %r landed after it was given up on: not kept for a replay", job.label)
        if self.spool is not None and job.seq is not None:
            self.spool.ack(job.seq, late=late)
        if job.done is not None:
            try:
                job.done(result)
            except Exception:  # noqa: BLE001 - a late landing runs in a helper thread
                if not late:
                    raise
                logger.exception("tracking job %r: could not record its late result", job.label)

    def _abandon(self, job: Job | None, message: str) -> None:
        """Give up on the call in flight (kept now; acknowledged if it lands later) and on the queue behind it."""
        self._record(message)
        if job is None:
            self._open_breaker(message)
            return
        job.abandoned = True
        self._inflight = None
        self._spool_job(job)
        self._finish()
        self._open_breaker(f"could not create the run: {message}" if job.opens_run else message)

    def _record(self, message: str) -> None:
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(message)
        logger.warning("tracking call failed, kept in the offline spool: %s", message)

    def _open_breaker(self, reason: str) -> None:
        if self._offline_reason is None:
            self._offline_reason = redact_text(reason)
            logger.warning(
                "tracking store %s unavailable (%s); logging to the offline spool %s for the rest of the run",
                redact_uri(self.tracking_uri),
                self._offline_reason,
                self.spool.folder if self.spool is not None else "(none)",
            )
        while self._queue:
            self._spool_job(self._queue.popleft())
            self._finish()

    def _spool_job(self, job: Job) -> None:
        """Keep ``job`` unsent in the journal for a replay (it was written there before it was queued)."""
        if self.spool is None or job.record is None or job.landed:
            return
        try:
            job.seq = self.spool.keep(job.seq, job.record, job.kind, job.count)
        except Exception as exc:  # noqa: BLE001 - disk full, a vanished file...: counted as lost, never raised
            self.lost[job.kind] += job.count
            logger.error("could not write %s to the offline spool %s: %s", job.kind, self.spool.folder, exc)

    def _finish(self) -> None:
        self._finished += 1
        self._cond.notify_all()
