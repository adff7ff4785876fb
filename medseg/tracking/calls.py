"""The MLflow calls of a run, each packed as a :class:`~medseg.tracking.sender.Job` with its journal record.

:class:`~medseg.tracking.logger.RunLogger` validates what is logged, builds these jobs and journals their records
(:mod:`medseg.tracking.journal`, the format :func:`medseg.tracking.replay_offline` reads); the sender thread runs
them. The run's client and id exist only once the sender created the run, so the calls read them from a
:class:`RunHandle` when they run, not when they are queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.tracking.config import TrackingConfig
from medseg.tracking.journal import ARTIFACTS_DIR, MAX_BATCH_METRICS, MAX_BATCH_PARAMS, Spool
from medseg.tracking.sender import Job, Unreachable
from medseg.tracking.store import (
    Connectivity,
    check_tracking,
    get_or_create_experiment,
    make_client,
    redact_uri,
)

logger = logging.getLogger(__name__)


@dataclass
class RunHandle:
    """The run on the store, filled in by the sender thread once it is created."""

    client: Any = None
    run_id: str | None = None


def store_probe(uri: str) -> Callable[[float], Connectivity]:
    """The sender's check whether the store at ``uri`` answers within the given seconds."""
    return lambda timeout_s: check_tracking(uri, timeout_s)


def _chunks(items: dict[str, Any], size: int) -> list[dict[str, Any]]:
    pairs = list(items.items())
    return [dict(pairs[i : i + size]) for i in range(0, len(pairs), size)]


def open_run(
    handle: RunHandle,
    uri: str,
    config: TrackingConfig,
    run_name: str | None,
    tags: dict[str, str],
    spool: Spool | None,
) -> list[Job]:
    """Probe the store, then create (or find) the experiment and create the run with ``tags``.

    Two jobs, so that a flush can tell a store that never answered (the probe still in flight) from a slow call.
    """

    def probe() -> None:
        status = check_tracking(uri, config.timeout_s)
        if not status.ok:
            raise Unreachable(status.detail)

    def create() -> tuple[Any, str]:
        client = make_client(uri)
        experiment_id = get_or_create_experiment(client, config.experiment, uri)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return client, run.info.run_id

    def created(result: tuple[Any, str]) -> None:
        handle.client, handle.run_id = result
        if spool is not None:
            spool.set_run_id(handle.run_id)  # a replay continues this run
        logger.info("tracking run %s in %s", handle.run_id, redact_uri(uri))

    return [
        # its own timeout answers first: "no answer from ... within N s"
        Job(
            "probe", "probe", 0, probe, None, opens_run=True, deadline_s=1.5 * config.timeout_s, is_probe=True
        ),
        Job(
            "create run",
            "tags",
            len(tags),
            create,
            {"kind": "tags", "tags": dict(tags)} if tags else None,
            done=created,
            opens_run=True,
        ),
    ]


def params_jobs(handle: RunHandle, flat: dict[str, str]) -> list[Job]:
    """Flat parameters in batches of MLflow's limit."""
    from mlflow.entities import Param

    return [
        Job(
            "params",
            "params",
            len(chunk),
            lambda c=chunk: handle.client.log_batch(
                handle.run_id, params=[Param(k, v) for k, v in c.items()], synchronous=True
            ),
            {"kind": "params", "params": chunk},
        )
        for chunk in _chunks(flat, MAX_BATCH_PARAMS)
    ]


def tags_job(handle: RunHandle, tags: dict[str, str]) -> Job:
    from mlflow.entities import RunTag

    return Job(
        "tags",
        "tags",
        len(tags),
        lambda: handle.client.log_batch(
            handle.run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True
        ),
        {"kind": "tags", "tags": dict(tags)},
    )


def metrics_jobs(handle: RunHandle, values: dict[str, float], step: int, timestamp_ms: int) -> list[Job]:
    """Metric values of one step in batches of MLflow's limit."""
    from mlflow.entities import Metric

    return [
        Job(
            "metrics",
            "metrics",
            len(chunk),
            lambda c=chunk: handle.client.log_batch(
                handle.run_id,
                metrics=[Metric(k, v, timestamp_ms, step) for k, v in c.items()],
                synchronous=True,
            ),
            {"kind": "metrics", "metrics": chunk, "step": step, "timestamp": timestamp_ms},
        )
        for chunk in _chunks(values, MAX_BATCH_METRICS)
    ]


def artifact_job(
    handle: RunHandle, staged: Path, artifact_path: str | None, files: int, spool_folder: Path | None
) -> Job:
    """The file or folder ``staged`` (a private copy, see RunLogger) under ``artifact_path``.

    Its record names the copy relative to the spool folder when it lives there (the journal's own copy).
    """
    try:
        file = staged.relative_to(spool_folder).as_posix() if spool_folder is not None else str(staged)
    except ValueError:
        file = str(staged)
    if not file.startswith(f"{ARTIFACTS_DIR}/"):  # a temporary copy (no journal): replayable while it exists
        file = str(staged)
    return Job(
        "artifacts",
        "artifacts",
        files,
        lambda: handle.client.log_artifact(handle.run_id, str(staged), artifact_path),
        {"kind": "artifact", "file": file, "artifact_path": artifact_path, "files": files},
    )


def end_job(handle: RunHandle, status: str) -> Job:
    """Close the run; tried once more after the run went offline if a fresh probe answers."""
    client, run_id = handle.client, handle.run_id
    end_ms = int(time.time() * 1000)
    close = None if run_id is None else (lambda: client.set_terminated(run_id, status=status, end_time=end_ms))
    record = {"kind": "end", "status": status, "timestamp": end_ms}
    return Job("end run", "run_end", 1, close, record, retry_offline=True)
