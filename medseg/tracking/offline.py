"""A local spool of what could not be sent to the tracking server, and its replay.

Layout of one spool folder (one per training run)::

    <spool>/records.jsonl      one JSON object per line: run header, params, tags, metrics, artifact, end
    <spool>/artifacts/...      copies of the artifacts, under their MLflow artifact path
    <spool>/summary.json       counts of what is in the spool (written when the run ends)
    <spool>/replayed.json      written by :func:`replay_offline` once the spool reached a server

``records.jsonl`` is append-only and flushed after every line; a torn last line (crash while writing) is skipped
on replay. Metric values may be NaN/inf (Python's JSON extension), as MLflow accepts them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.atomic import atomic_path, atomic_write_text
from medseg.tracking.errors import SpoolError, TrackingUnavailableError
from medseg.tracking.store import (
    check_tracking,
    get_or_create_experiment,
    limit_mlflow_http,
    make_client,
    redact_uri,
)

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
REPLAYED_FILE = "replayed.json"
ARTIFACTS_DIR = "artifacts"
MAX_BATCH_PARAMS = 100  # MLflow's log_batch limits
MAX_BATCH_METRICS = 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


class Spool:
    """Append-only store for one run's unsent tracking data. Nothing is created until the first write."""

    def __init__(self, folder: str | Path, header: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self._header = dict(header)
        self._opened = False
        self.counts: Counter[str] = Counter()

    @property
    def used(self) -> bool:
        return self._opened

    def _append(self, record: Mapping[str, Any]) -> None:
        if not self._opened:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._opened = True
            self._append({"kind": "run", **self._header})
        with open(self.folder / RECORDS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()

    def set_run_id(self, run_id: str) -> None:
        """Remember the server-side run id (so a replay continues that run); re-written if already spooling."""
        self._header["run_id"] = run_id
        if self._opened:
            self._append({"kind": "run", **self._header})

    def params(self, params: Mapping[str, str]) -> None:
        self._append({"kind": "params", "params": dict(params)})
        self.counts["params"] += len(params)

    def tags(self, tags: Mapping[str, str]) -> None:
        self._append({"kind": "tags", "tags": dict(tags)})
        self.counts["tags"] += len(tags)

    def metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int) -> None:
        self._append({"kind": "metrics", "metrics": dict(metrics), "step": step, "timestamp": timestamp_ms})
        self.counts["metrics"] += len(metrics)

    def artifact(self, local_path: Path, artifact_path: str | None) -> None:
        """Copy a file (or a folder's files) into the spool under its artifact path."""
        local_path = Path(local_path)
        dest_root = self.folder / ARTIFACTS_DIR / (artifact_path or "")
        files = (
            sorted(p for p in local_path.rglob("*") if p.is_file()) if local_path.is_dir() else [local_path]
        )
        base = local_path if local_path.is_dir() else local_path.parent
        prefix = local_path.name if local_path.is_dir() else ""
        for src in files:
            dest = dest_root / prefix / src.relative_to(base)
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
            rel_dir = dest.parent.relative_to(self.folder / ARTIFACTS_DIR).as_posix()
            self._append(
                {
                    "kind": "artifact",
                    "file": dest.relative_to(self.folder).as_posix(),
                    "artifact_path": None if rel_dir == "." else rel_dir,
                }
            )
            self.counts["artifacts"] += 1

    def end(self, status: str) -> None:
        self._append({"kind": "end", "status": status, "timestamp": _now_ms()})
        self.counts["run_end"] += 1

    def write_summary(self, errors: list[str]) -> None:
        if self._opened:
            summary = {"counts": dict(self.counts), "errors": errors, "header": self._header}
            atomic_write_text(self.folder / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))


def read_spool(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a spool folder (a torn last line is skipped with a warning)."""
    path = Path(folder) / RECORDS_FILE
    if not path.is_file():
        raise SpoolError(f"{folder}: not an offline spool folder (no {RECORDS_FILE})")
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                logger.warning("%s: skipping torn last line %d", path, number)
                continue
            raise SpoolError(f"{path}: line {number} is not JSON: {exc}") from exc
    return records


def _header(records: list[dict[str, Any]]) -> dict[str, Any]:
    header: dict[str, Any] = {}
    for record in records:
        if record.get("kind") == "run":
            header.update({k: v for k, v in record.items() if v is not None})
    return header


def _target_run(client: Any, header: Mapping[str, Any], uri: str, experiment: str | None) -> tuple[str, bool]:
    from mlflow.exceptions import MlflowException

    run_id = header.get("run_id")
    if run_id:
        try:
            client.get_run(run_id)
            return run_id, False
        except MlflowException:
            logger.info(
                "run %s of the spool does not exist in %s: creating a new run", run_id, redact_uri(uri)
            )
    name = experiment or header.get("experiment") or "medseg"
    experiment_id = get_or_create_experiment(client, name, uri)
    tags = {"medseg.replayed_from_spool": "true"}
    if run_id:
        tags["medseg.original_run_id"] = str(run_id)
    run = client.create_run(experiment_id, run_name=header.get("run_name"), tags=tags)
    return run.info.run_id, True


def _send_records(
    client: Any, run_id: str, records: list[dict[str, Any]], folder: Path
) -> tuple[Counter[str], dict[str, Any] | None]:
    """Send the params, tags, metrics and artifacts of ``records`` in their order; returns counts and the end record."""
    from mlflow.entities import Metric, Param, RunTag

    sent: Counter[str] = Counter()
    end_status = None
    for record in records:
        kind = record.get("kind")
        if kind == "params":
            params = [Param(k, v) for k, v in record["params"].items()]
            for i in range(0, len(params), MAX_BATCH_PARAMS):
                client.log_batch(run_id, params=params[i : i + MAX_BATCH_PARAMS], synchronous=True)
            sent["params"] += len(params)
        elif kind == "tags":
            tags = [RunTag(k, v) for k, v in record["tags"].items()]
            for i in range(0, len(tags), MAX_BATCH_PARAMS):
                client.log_batch(run_id, tags=tags[i : i + MAX_BATCH_PARAMS], synchronous=True)
            sent["tags"] += len(tags)
        elif kind == "metrics":
            metrics = [
                Metric(k, float(v), int(record["timestamp"]), int(record["step"]))
                for k, v in record["metrics"].items()
            ]
            for i in range(0, len(metrics), MAX_BATCH_METRICS):
                client.log_batch(run_id, metrics=metrics[i : i + MAX_BATCH_METRICS], synchronous=True)
            sent["metrics"] += len(metrics)
        elif kind == "artifact":
            client.log_artifact(run_id, str(folder / record["file"]), record.get("artifact_path"))
            sent["artifacts"] += 1
        elif kind == "end":
            end_status = record
    return sent, end_status


def replay_offline(
    spool_dir: str | Path,
    tracking_uri: str,
    *,
    experiment: str | None = None,
    timeout_s: float = 10.0,
    force: bool = False,
) -> dict[str, Any]:
    """Send a spool folder (``RunLogger.report()["spool_dir"]``) to ``tracking_uri``.

    The records go into the spool's original run when it exists on that server, else into a new run of
    ``experiment`` (default: the spool's experiment) tagged ``medseg.replayed_from_spool``. A replayed spool is
    marked and refused a second time unless ``force``.

    Returns:
        ``{"run_id", "created_run", "params", "tags", "metrics", "artifacts"}`` (counts sent).
    """
    folder = Path(spool_dir)
    records = read_spool(folder)
    if (folder / REPLAYED_FILE).exists() and not force:
        done = json.loads((folder / REPLAYED_FILE).read_text(encoding="utf-8"))
        raise SpoolError(
            f"{folder} was already replayed into run {done.get('run_id')}; pass force=True to resend"
        )
    status = check_tracking(tracking_uri, timeout_s)
    if not status.ok:
        raise TrackingUnavailableError(f"cannot replay {folder}: {status.detail}")
    header = _header(records)
    limit_mlflow_http(tracking_uri, timeout_s)
    client = make_client(tracking_uri)
    run_id, created = _target_run(client, header, tracking_uri, experiment)
    sent, end_status = _send_records(client, run_id, records, folder)
    if end_status is not None:
        client.set_terminated(run_id, status=end_status["status"], end_time=int(end_status["timestamp"]))
    elif created:
        client.set_terminated(run_id, status="FINISHED")
    result = {
        "run_id": run_id,
        "created_run": created,
        **{k: sent[k] for k in ("params", "tags", "metrics", "artifacts")},
    }
    atomic_write_text(
        folder / REPLAYED_FILE, json.dumps({**result, "tracking_uri": redact_uri(tracking_uri)}, indent=2)
    )
    logger.info("replayed %s into run %s at %s: %s", folder, run_id, redact_uri(tracking_uri), result)
    return result
