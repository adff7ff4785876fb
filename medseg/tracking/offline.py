"""Replay of a run's journal (its offline spool, :mod:`medseg.tracking.journal`) into a tracking store.

:func:`replay_offline` sends a spool's unsent calls (those without an ack) into the spool's run when it exists on
the target store (else into the run an earlier replay created there, else into a new run tagged
``medseg.replayed_from_spool``), acknowledging each call in the journal as it lands, so a replay stopped half-way
(the server went away) resumes where it stopped. It is idempotent whatever the backend: metric values the run
already has (same key, step, timestamp and value, read with one ``get_metric_history`` per key) and parameters it
already has with the same value are skipped, since MLflow's file store, unlike its SQL store, would store a metric
value twice. A call the store rejects on its content (an MLflow 4xx error: a changed parameter value) is acked
with ``"rejected"`` and its reason, since no replay could ever send it. An interrupted run (no end record, no live
owner) is closed as KILLED when the store still has it RUNNING; a spool whose run is still alive is refused.
``medseg replay PATH`` (one spool folder, or every spool of a training workdir not replayed yet) is
:func:`medseg.tracking.spools.replay_spools`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medseg.atomic import atomic_write_text
from medseg.tracking.errors import SpoolError, SpoolInUseError, TrackingUnavailableError
from medseg.tracking.journal import (
    LOCK_FILE,
    MAX_BATCH_METRICS,
    MAX_BATCH_PARAMS,
    RECORDS_FILE,
    REPLAYED_FILE,
    NoLockError,
    Spool,
    SpoolState,
    inspect_spool,
    read_spool,
    try_lock,
)
from medseg.tracking.store import (
    check_tracking,
    get_or_create_experiment,
    limit_mlflow_http,
    make_client,
    redact_text,
    redact_uri,
)

__all__ = ["Spool", "read_spool", "replay_offline"]  # Spool and read_spool: their home before the journal

logger = logging.getLogger(__name__)

_MAX_FLOAT = 1.7976931348623157e308


@contextlib.contextmanager
def spool_lock(state: SpoolState, force: bool = False) -> Iterator[None]:
    """Hold the spool's lock (a replay at a time, never while its run is alive); ``SpoolInUseError`` when held.

    Without ``flock`` (:class:`NoLockError`) the header's pid tells a live run on this host; a run of another host
    cannot be told apart from a dead one: refused unless ``force``."""
    try:
        fd = try_lock(state.folder / LOCK_FILE)
    except NoLockError:
        if state.owner is not None and not force:
            raise SpoolInUseError(
                f"{state.folder}: no file locks on its file system, and its run ({state.owner}) may still be "
                "running: not replayed; pass --force once it has ended"
            ) from None
        yield
        return
    if fd is None:
        raise SpoolInUseError(
            f"{state.folder} is in use by {state.owner_text()} (its training run is still running, or another "
            "replay is): not replayed; wait for it to end, or stop it"
        )
    try:
        yield
    finally:
        os.close(fd)


def append_records(folder: Path, records: list[dict[str, Any]]) -> None:
    """Append records to a spool's journal (a replay's acks), first ending a line torn by a crash."""
    path = folder / RECORDS_FILE
    with open(path, "a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8"))


def _metric_id(step: int, timestamp: int, value: float) -> tuple[int, int, float | str]:
    """What identifies a logged metric value; NaN and infinities as MLflow's SQL store keeps them."""
    if math.isnan(value):
        return step, timestamp, "nan"
    if math.isinf(value):
        value = math.copysign(_MAX_FLOAT, value)
    return step, timestamp, value


_RETRYABLE_HTTP = {401, 403, 408, 429}  # credentials, time-outs, rate limits: the store may take it later


def rejection(exc: BaseException) -> str | None:
    """``"<error code>: <message>"`` when the store rejected a call on its content (an MLflow 4xx error, such as
    a changed parameter value), which no replay could ever send; ``None`` for a store that is down or busy."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return None
    status = exc.get_http_status_code()
    if not 400 <= status < 500 or status in _RETRYABLE_HTTP:
        return None
    message = str(exc.message if hasattr(exc, "message") else exc).splitlines()
    return redact_text(f"{exc.error_code}: {message[0] if message else ''}")[:300]


def _run_usable(client: Any, run_id: str | None) -> bool:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _target_run(client: Any, state: SpoolState, uri: str, experiment: str | None) -> tuple[str, bool]:
    """The run to send into: the spool's own, else one an earlier replay into ``uri`` created, else a new one."""
    header, target = state.header, redact_uri(uri)
    earlier = [r.get("run_id") for r in reversed(state.replay_runs) if r.get("tracking_uri") == target]
    if state.replayed and state.replayed.get("tracking_uri") == target:
        earlier.append(state.replayed.get("run_id"))
    for run_id in [header.get("run_id"), *earlier]:
        if _run_usable(client, run_id):
            return str(run_id), False
    if header.get("run_id"):
        logger.info("run %s of the spool does not exist in %s: creating a new run", header["run_id"], target)
    name = experiment or header.get("experiment") or "medseg"
    experiment_id = get_or_create_experiment(client, name, uri)
    tags = {"medseg.replayed_from_spool": "true"}
    if header.get("run_id"):
        tags["medseg.original_run_id"] = str(header["run_id"])
    run = client.create_run(experiment_id, run_name=header.get("run_name"), tags=tags)
    run_id = run.info.run_id
    append_records(state.folder, [{"kind": "replay_run", "run_id": run_id, "tracking_uri": target}])
    return run_id, True


class _Sender:
    """Sends calls into one run, skipping what the run already has, and acknowledges them in the journal."""

    def __init__(self, client: Any, run_id: str, folder: Path, acked: set[int], fresh: bool) -> None:
        self.client, self.run_id, self.folder, self.acked, self.fresh = client, run_id, folder, acked, fresh
        self.counts: Counter[str] = Counter()
        self._params: dict[str, str] | None = {} if fresh else None
        self._history: dict[str, set[tuple[int, int, float | str]]] = {}
        self._metrics: list[Any] = []
        self._metric_seqs: list[Any] = []

    def ack(self, seqs: list[Any], rejected: str | None = None) -> None:
        new = [s for s in seqs if isinstance(s, int) and s not in self.acked]
        extra = {"rejected": rejected} if rejected else {}
        if new:
            append_records(self.folder, [{"kind": "ack", "seq": s, "replay": True, **extra} for s in new])
            self.acked.update(new)

    def call(self, seqs: list[Any], fn: Any, *args: Any, **kwargs: Any) -> bool:
        """Make one store call for the records ``seqs``; a call the store rejects on its content is recorded as
        done with the reason (``"rejected"`` in their acks) and False returned; other errors are raised."""
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            reason = rejection(exc)
            if reason is None:
                raise
            logger.warning("%s: the store rejected call(s) %s: %s; not sent again", self.folder, seqs, reason)
            self.ack(seqs, rejected=reason)
            self.counts["rejected"] += len([s for s in seqs if s is not None]) or 1
            return False
        return True

    def _seen(self, key: str) -> set[tuple[int, int, float | str]]:
        if key not in self._history:
            history = [] if self.fresh else self.client.get_metric_history(self.run_id, key)
            self._history[key] = {_metric_id(m.step, m.timestamp, m.value) for m in history}
        return self._history[key]

    def metrics(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        step, timestamp = int(record["step"]), int(record["timestamp"])
        new = []
        for key, value in record["metrics"].items():
            ident, seen = _metric_id(step, timestamp, float(value)), self._seen(key)
            if ident in seen:
                self.counts["skipped_metrics"] += 1
                continue
            seen.add(ident)
            new.append(Metric(key, float(value), timestamp, step))
        if len(self._metrics) + len(new) > MAX_BATCH_METRICS:
            self.flush()
        self._metrics += new
        self._metric_seqs.append(record.get("seq"))

    def flush(self) -> None:
        """Send the metric values gathered so far (consecutive records go in one call)."""
        if self._metrics and self.call(
            self._metric_seqs, self.client.log_batch, self.run_id, metrics=self._metrics, synchronous=True
        ):
            self.counts["metrics"] += len(self._metrics)
        self.ack(self._metric_seqs)
        self._metrics, self._metric_seqs = [], []

    def params(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        if self._params is None:
            self._params = dict(self.client.get_run(self.run_id).data.params)
        todo = {str(k): str(v) for k, v in record["params"].items()}
        same = {k for k, v in todo.items() if self._params.get(k) == v}
        self.counts["skipped_params"] += len(same)
        items = [Param(k, v) for k, v in todo.items() if k not in same]
        seqs = [record.get("seq")]
        for i in range(0, len(items), MAX_BATCH_PARAMS):
            batch = items[i : i + MAX_BATCH_PARAMS]
            if not self.call(seqs, self.client.log_batch, self.run_id, params=batch, synchronous=True):
                return
        self._params.update(todo)
        self.counts["params"] += len(items)
        self.ack(seqs)

    def tags(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in record["tags"].items()]
        for i in range(0, len(items), MAX_BATCH_PARAMS):
            batch = items[i : i + MAX_BATCH_PARAMS]
            if not self.call([record.get("seq")], self.client.log_batch, self.run_id, tags=batch, synchronous=True):
                return
        self.counts["tags"] += len(items)
        self.ack([record.get("seq")])

    def artifact(self, record: Mapping[str, Any]) -> None:
        path = self.folder / record["file"]
        if not path.exists():
            if record.get("seq") not in self.acked:  # an acked copy was removed once it landed
                logger.warning("%s: artifact copy %s is missing: not sent", self.folder, record["file"])
                self.counts["missing_artifacts"] += 1
            return
        where = record.get("artifact_path")
        if not self.call([record.get("seq")], self.client.log_artifact, self.run_id, str(path), where):
            return
        self.counts["artifacts"] += int(record.get("files", 1))
        self.ack([record.get("seq")])


def _last_timestamp(state: SpoolState) -> int | None:
    stamps = [int(r["timestamp"]) for r in state.calls if isinstance(r.get("timestamp"), int | float)]
    if isinstance(state.header.get("created"), int):
        stamps.append(state.header["created"])
    return max(stamps) if stamps else None


def _send(
    client: Any, run_id: str, state: SpoolState, records: list[dict[str, Any]], fresh: bool
) -> dict[str, Any]:
    """Send ``records`` in their order, then close the run (its end record's status, or KILLED if interrupted)."""
    sender = _Sender(client, run_id, state.folder, set(state.acked), fresh)
    for record in records:
        kind = record.get("kind")
        if kind == "metrics":
            sender.metrics(record)
            continue
        sender.flush()
        if kind == "params":
            sender.params(record)
        elif kind == "tags":
            sender.tags(record)
        elif kind == "artifact":
            sender.artifact(record)
    sender.flush()
    end = state.end
    if end is not None:
        status, end_time = str(end["status"]), int(end["timestamp"])
    else:  # interrupted (the caller holds the lock: no process runs it), unless its end landed unrecorded
        status, end_time = "KILLED", _last_timestamp(state)
        stored = client.get_run(run_id).info.status
        if stored != "RUNNING":  # an old spool has no end record, or the end landed after its ack was lost
            return {"status": stored, **sender.counts}
    client.set_terminated(run_id, status=status, end_time=end_time)
    if end is not None:
        sender.ack([end.get("seq")])
    return {"status": status, **sender.counts}


def replay_offline(
    spool_dir: str | Path,
    tracking_uri: str,
    *,
    experiment: str | None = None,
    timeout_s: float = 10.0,
    force: bool = False,
) -> dict[str, Any]:
    """Send a spool folder (``RunLogger.report()["spool_dir"]``) to ``tracking_uri``; see the module docstring.

    ``force`` replays a spool already replayed and resends its acknowledged calls too (what the run already has
    is skipped). A spool whose run is still alive is refused (``SpoolError``); an unreachable store raises
    ``TrackingUnavailableError`` before anything is sent or marked.

    Returns:
        ``{"run_id", "created_run", "status", "interrupted", "params", "tags", "metrics", "artifacts",
        "skipped_metrics", "skipped_params", "missing_artifacts", "rejected"}`` (counts sent, skipped or rejected).
    """
    folder = Path(spool_dir)
    state = inspect_spool(folder)
    if state.replayed is not None and not force:
        raise SpoolError(
            f"{folder} was already replayed into run {state.replayed.get('run_id')}; pass force=True (--force) "
            "to resend"
        )
    with spool_lock(state, force):
        status = check_tracking(tracking_uri, timeout_s)
        if not status.ok:
            raise TrackingUnavailableError(f"cannot replay {folder}: {status.detail}")
        limit_mlflow_http(tracking_uri, timeout_s)
        state = inspect_spool(folder)  # as of now, under the lock
        interrupted = state.end is None
        try:
            client = make_client(tracking_uri)
            run_id, created = _target_run(client, state, tracking_uri, experiment)
            sent = _send(client, run_id, state, state.calls if force else state.unsent, created)
        except SpoolError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, HTTP and disk errors: one line; the acks say what landed
            raise TrackingUnavailableError(
                f"replay of {folder} into {redact_uri(tracking_uri)} stopped: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; what landed is recorded, run it again for the rest"
            ) from exc
    counts = (
        "params",
        "tags",
        "metrics",
        "artifacts",
        "skipped_metrics",
        "skipped_params",
        "missing_artifacts",
        "rejected",
    )
    result = {
        "run_id": run_id,
        "created_run": created,
        "status": sent["status"],
        "interrupted": interrupted,
        **{k: int(sent.get(k, 0)) for k in counts},
    }
    atomic_write_text(
        folder / REPLAYED_FILE, json.dumps({**result, "tracking_uri": redact_uri(tracking_uri)}, indent=2)
    )
    logger.info("replayed %s into run %s at %s: %s", folder, run_id, redact_uri(tracking_uri), result)
    return result
