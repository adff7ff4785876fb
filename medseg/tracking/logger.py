"""The run logger: observes a training loop and hands what it is given to MLflow, never making training wait.

:class:`RunLogger` checks and shapes what is logged (numbers, flattened parameters, no patient identifiers, PNG
signatures) in the caller's thread, then queues the MLflow calls for the run's sender thread
(:mod:`medseg.tracking.sender`): the training thread never waits on the network. Each call is first written to the
run's journal, a spool folder under ``spool_dir`` (:mod:`medseg.tracking.journal`), so that a killed process loses
nothing; a run whose calls all landed removes its folder at the end. When the store does not answer (refused at
start, a call past ``TrackingConfig.timeout_s``, failures a probe confirms) the run goes offline and its calls stay
in the journal unsent; :meth:`RunLogger.report` says what was not logged and where it is, and ``medseg replay``
(:func:`medseg.tracking.replay_offline`) sends it later. Artifacts are copied into the journal folder when they are
logged, so the caller may delete its file at once.

Typical use (the training loop only sees the hooks)::

    with RunLogger(cfg.tracking, uri, workdir / "tracking_spool").start("fold0", params=cfg_dict) as run:
        run.log_system_info()
        for epoch in ...:
            run.log_metrics({"train/loss": loss}, step=epoch)
    run.report()
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from medseg.tracking import calls
from medseg.tracking.config import TrackingConfig
from medseg.tracking.offline import Spool
from medseg.tracking.params import cap_value, flatten_params, sanitize_key, stringify
from medseg.tracking.privacy import check_no_patient_identifiers, check_text_file
from medseg.tracking.sender import Job, Sender
from medseg.tracking.store import absolute_uri, is_local_store, limit_mlflow_http, redact_uri
from medseg.tracking.sysinfo import system_info

logger = logging.getLogger(__name__)

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_TAG_VALUE_LENGTH = 8000  # MLflow's limit
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):
        return value.as_posix()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class RunLogger:
    """One tracked run. Create it, :meth:`start` it, log, :meth:`end` it (or use it as a context manager).

    Args:
        config: the ``tracking:`` section (experiment, timeouts, enabled, ...).
        tracking_uri: the resolved tracking URI (see :func:`medseg.tracking.resolve_tracking_uri`).
        spool_dir: folder under which the run's journal (spool) sub-folder is created when the run starts; it is
            removed (with ``spool_dir`` if the run created it) when every call landed.
    """

    def __init__(self, config: TrackingConfig, tracking_uri: str, spool_dir: str | Path) -> None:
        self.config = config
        self.tracking_uri = tracking_uri
        self.spool_root = Path(spool_dir)
        self._run = calls.RunHandle()
        self._state = "new"
        self._status: str | None = None
        self._spool: Spool | None = None
        self._sender: Sender | None = None
        self._opening = 0  # number of the job that creates the run
        self._staging: Path | None = None  # copies of artifacts until they are sent or spooled

    # ------------------------------------------------------------------ state
    @property
    def run_id(self) -> str | None:
        """The MLflow run id (``None`` while not started, when disabled, or when the run could not be created).

        Waits for the run to be created (at most ``flush_timeout_s`` for a call in flight).
        """
        if self._sender is not None and self._run.run_id is None:
            self._sender.flush(self._opening)
        return self._run.run_id

    @property
    def offline(self) -> bool:
        """Whether the run went offline; first waits for the calls queued so far (see :meth:`flush`)."""
        return not self.flush() if self._sender is not None else False

    @property
    def active(self) -> bool:
        return self._state == "running" and self.config.enabled

    def flush(self) -> bool:
        """Wait until every call queued so far was sent or spooled; True if the run is still online.

        Never waits more than ``flush_timeout_s`` for a call in flight: past that the run goes offline and the
        call and everything queued after it are spooled.
        """
        return self._sender.flush() if self._sender is not None else False

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state == "running":
            if exc_type is None:
                self.end("FINISHED")
            else:
                self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # ------------------------------------------------------------ internals
    def _require_running(self, method: str) -> bool:
        if self._state == "new":
            raise RuntimeError(f"RunLogger.{method}() called before start()")
        if self._state == "ended":
            raise RuntimeError(f"RunLogger.{method}() called after end()")
        return self.config.enabled

    def _submit(self, job: Job) -> int:
        """Journal ``job`` (on disk before it is queued), then queue it."""
        if self._sender is None:
            return 0
        if self._spool is not None and job.record is not None:
            job.seq = self._spool.write(job.record, job.kind, job.count)
        return self._sender.submit(job)

    def _stage(self, path: Path) -> Path:
        """A private copy of the file or folder ``path`` (same name) in the journal folder, until it was sent.

        In a temporary folder (removed when the run ends) when the journal cannot be written.
        """
        try:
            slot = self._spool.new_slot() if self._spool is not None else None
        except OSError:
            slot = None
        if slot is None:
            if self._staging is None:
                self._staging = Path(tempfile.mkdtemp(prefix="medseg-tracking-"))
            slot = Path(tempfile.mkdtemp(dir=self._staging))
        target = slot / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copyfile(path, target)
        return target

    # ------------------------------------------------------------ public API
    def start(
        self,
        run_name: str | None,
        params: Mapping[str, Any] | Any | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> RunLogger:
        """Create the run and log ``params`` (nested: flattened to dotted keys) and ``tags``. Returns ``self``.

        The run is created by the sender thread; nothing here waits for the store.

        Raises:
            PatientDataError: params or tags look like they hold patient identifiers (nothing is sent).
        """
        if self._state != "new":
            raise RuntimeError("RunLogger.start() can be called once")
        self._state = "running"
        if not self.config.enabled:
            logger.info("tracking disabled: nothing will be logged")
            return self
        params = params if params is not None else {}
        check_no_patient_identifiers(params, "run parameters")
        tag_map = self._tags(tags or {})
        flat = flatten_params(params)
        safe_name = re.sub(r"[^\w.\-]", "_", run_name or "run")[:60]
        folder = self.spool_root / f"{time.strftime('%Y%m%dT%H%M%S')}-{safe_name}-{uuid.uuid4().hex[:8]}"
        self._spool = Spool(
            folder,
            {
                "experiment": self.config.experiment,
                "run_name": run_name,
                "tracking_uri": redact_uri(absolute_uri(self.tracking_uri)),  # a replay may run elsewhere
                "created": int(time.time() * 1000),
            },
        )
        try:
            self._spool.open()
        except OSError as exc:
            logger.error("cannot write the tracking journal %s (%s): calls that cannot be sent will be lost",
                         folder, exc)
        cfg = self.config
        # MLflow's import takes seconds of CPU: done here, so that the first call's deadline measures the network
        import mlflow.entities  # noqa: F401

        limit_mlflow_http(self.tracking_uri, cfg.timeout_s)  # before the sender thread exists
        self._sender = Sender(
            self.tracking_uri,
            None if is_local_store(self.tracking_uri) else cfg.timeout_s,
            cfg.flush_timeout_s,
            self._spool,
            calls.store_probe(self.tracking_uri),
        )
        self._sender.start()
        for job in calls.open_run(self._run, self.tracking_uri, cfg, run_name, tag_map, self._spool):
            self._opening = self._submit(job)  # the run's id is known once the last one is done
        if is_local_store(self.tracking_uri):
            # a store on this machine cannot hang: the run exists before training starts (a run killed in its first
            # epoch is still found in the store), at the cost of creating a new store's tables first (seconds)
            self._sender.flush(self._opening)
        if flat:
            self._log_params(flat)
        return self

    def _tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        check_no_patient_identifiers(tags, "run tags")
        return {sanitize_key(str(k)): cap_value(stringify(v), MAX_TAG_VALUE_LENGTH) for k, v in tags.items()}

    def _log_params(self, flat: dict[str, str]) -> None:
        for job in calls.params_jobs(self._run, flat):
            self._submit(job)

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log more (nested) parameters. MLflow refuses to change the value of an already logged parameter."""
        if self._require_running("log_params"):
            check_no_patient_identifiers(params, "run parameters")
            self._log_params(flatten_params(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified; tags, unlike parameters, may be overwritten)."""
        if not self._require_running("set_tags"):
            return
        tag_map = self._tags(tags)
        if tag_map:
            self._submit(calls.tags_job(self._run, tag_map))

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log numeric metrics (Python / NumPy / 0-d tensor numbers) at ``step``.

        Raises:
            ValueError / TypeError: a value is not a number, or ``step`` is not a non-negative integer.
        """
        if not self._require_running("log_metrics"):
            return
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"log_metrics: step must be a non-negative integer, got {step!r}")
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values[sanitize_key(str(key))] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"log_metrics: metric {key!r} is not a number: {value!r}") from None
        check_no_patient_identifiers(dict.fromkeys(values, 0.0), "metric names")
        if not values:
            return
        for job in calls.metrics_jobs(self._run, values, step, int(time.time() * 1000)):
            self._submit(job)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder (under ``artifact_path/<folder name>``); it is copied now, sent later.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            PatientDataError: a small text file (JSON, YAML, CSV, ...) looks like it holds patient identifiers.
        """
        if not self._require_running("log_artifact"):
            return
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            check_text_file(file)
        try:
            staged = self._stage(path)
        except OSError as exc:  # a full disk must not stop the training: the file is counted as lost
            logger.error("could not copy %s for tracking (%s): not logged", path, exc)
            if self._sender is not None:
                self._sender.lost["artifacts"] += len(files)
            return
        folder = self._spool.folder if self._spool is not None else None
        self._submit(calls.artifact_job(self._run, staged, artifact_path, len(files), folder))

    def log_image(self, png_path: str | Path, artifact_path: str = "qc") -> bool:
        """Log a QC PNG under ``artifact_path``; skipped (returns False) when ``log_qc_images`` is off.

        Raises:
            ValueError: the file is not a PNG.
        """
        if not self._require_running("log_image"):
            return False
        if not self.config.log_qc_images:
            logger.debug("log_qc_images is off: not logging %s", png_path)
            return False
        png_path = Path(png_path)
        with open(png_path, "rb") as fh:
            if fh.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise ValueError(f"log_image: {png_path} is not a PNG file")
        self.log_artifact(png_path, artifact_path)
        return True

    def log_figure(self, figure: Any, filename: str, artifact_path: str = "qc") -> bool:
        """Save a figure (anything with ``savefig``, e.g. Matplotlib) as PNG ``filename`` and log it."""
        if not filename.endswith(".png") or "/" in filename or "\\" in filename:
            raise ValueError(f"log_figure: filename must be a plain '<name>.png', got {filename!r}")
        if not self._require_running("log_figure") or not self.config.log_qc_images:
            return False
        with tempfile.TemporaryDirectory(prefix="medseg-figure-") as tmp:
            target = Path(tmp) / filename
            figure.savefig(target, format="png")
            return self.log_image(target, artifact_path)

    def log_dict(self, data: Mapping[str, Any], name: str, artifact_path: str | None = None) -> None:
        """Log ``data`` as JSON artifact ``name`` (must end with ``.json``)."""
        if not name.endswith(".json") or "/" in name or "\\" in name:
            raise ValueError(f"log_dict: name must be a plain '<name>.json', got {name!r}")
        if not self._require_running("log_dict"):
            return
        check_no_patient_identifiers(data, f"artifact {name}")
        text = json.dumps(data, indent=2, sort_keys=True, default=_json_default)
        with tempfile.TemporaryDirectory(prefix="medseg-dict-") as tmp:
            target = Path(tmp) / name
            target.write_text(text, encoding="utf-8")
            self.log_artifact(target, artifact_path)

    def log_system_info(self) -> dict[str, Any]:
        """Tag the run with versions (python, torch, monai, mlflow, medseg), CPU count and CUDA devices."""
        info = system_info()
        if self._require_running("log_system_info"):
            self.set_tags({f"sys.{k}": v for k, v in info.items()})
        return info

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED); warn if anything went to the spool.

        Waits for the queued calls as :meth:`flush` does; a run that went offline is still closed on the store if
        a fresh probe answers.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"end: status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if self._state != "running":
            return
        self._state = "ended"
        self._status = status
        if self._sender is None:  # disabled
            return
        sender = self._sender
        sender.flush()
        self._submit(calls.end_job(self._run, status))
        sender.flush()
        sender.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._spool is not None:
            self._spool.finish(list(sender.errors))  # removed when every call landed
        report = self.report()
        if report["not_logged"] or report["lost"]:
            logger.warning(
                "tracking: not logged to %s: %s; kept in %s (send it later with `medseg replay %s`)%s",
                report["tracking_uri"],
                report["not_logged"],
                report["spool_dir"],
                report["spool_dir"],
                f"; LOST (spool not writable): {report['lost']}" if report["lost"] else "",
            )

    def report(self) -> dict[str, Any]:
        """What happened: run id, whether the logger went offline and why, and counts of what was not logged.

        ``not_logged`` counts entries kept in the spool (params, tags, metric values, artifact files,
        run_end); ``lost`` counts entries that could not even be written to the spool. Does not wait: while the
        run is open, calls still queued are in neither.
        """
        sender = self._sender
        spool_used = self._spool is not None and self._spool.used
        return {
            "enabled": self.config.enabled,
            "tracking_uri": redact_uri(self.tracking_uri),
            "run_id": self._run.run_id,
            "status": self._status,
            "offline": sender is not None and sender.offline_reason is not None,
            "offline_reason": sender.offline_reason if sender is not None else None,
            "not_logged": dict(self._spool.counts) if self._spool is not None else {},
            "lost": dict(sender.lost) if sender is not None else {},
            "spool_dir": str(self._spool.folder) if spool_used and self._spool is not None else None,
            "errors": list(sender.errors) if sender is not None else [],
        }
