"""The run logger: observes a training loop and sends what it is given to MLflow, never stopping training.

Every MLflow call is bounded by ``TrackingConfig.timeout_s``. When the store does not answer (at start, or
later: one failed call that a fresh probe confirms, or two failures in a row), the logger goes offline for the
rest of the run and everything from then on is written to a local spool folder (see
:mod:`medseg.tracking.offline`); :meth:`RunLogger.report` says what was not logged and where it is, and
:func:`medseg.tracking.replay_offline` sends it later.

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
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

from medseg.tracking.config import TrackingConfig
from medseg.tracking.offline import MAX_BATCH_METRICS, MAX_BATCH_PARAMS, Spool
from medseg.tracking.params import cap_value, flatten_params, sanitize_key, stringify
from medseg.tracking.privacy import check_no_patient_identifiers, check_text_file
from medseg.tracking.store import (
    check_tracking,
    get_or_create_experiment,
    make_client,
    mlflow_http_limits,
    redact_text,
    redact_uri,
)
from medseg.tracking.sysinfo import system_info

logger = logging.getLogger(__name__)

T = TypeVar("T")
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_TAG_VALUE_LENGTH = 8000  # MLflow's limit
MAX_CONSECUTIVE_FAILURES = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_KEPT_ERRORS = 20


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
        config: the ``tracking:`` section (experiment, timeout, enabled, ...).
        tracking_uri: the resolved tracking URI (see :func:`medseg.tracking.resolve_tracking_uri`).
        spool_dir: folder under which an offline spool sub-folder is created if anything cannot be sent.
            Nothing is created unless needed.
    """

    def __init__(self, config: TrackingConfig, tracking_uri: str, spool_dir: str | Path) -> None:
        self.config = config
        self.tracking_uri = tracking_uri
        self.spool_root = Path(spool_dir)
        self._client: Any = None
        self._run_id: str | None = None
        self._state = "new"
        self._status: str | None = None
        self._offline_reason: str | None = None
        self._failures = 0
        self._errors: list[str] = []
        self._lost: Counter[str] = Counter()
        self._spool: Spool | None = None

    # ------------------------------------------------------------------ state
    @property
    def run_id(self) -> str | None:
        """The MLflow run id (``None`` while not started, when disabled, or when the run could not be created)."""
        return self._run_id

    @property
    def offline(self) -> bool:
        return self._offline_reason is not None

    @property
    def active(self) -> bool:
        return self._state == "running" and self.config.enabled

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state == "running":
            if exc_type is None:
                self.end("FINISHED")
            else:
                self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # ------------------------------------------------------------ internals
    def _attempt(self, what: str, call: Callable[[], T], even_offline: bool = False) -> tuple[bool, T | None]:
        """Run one MLflow call with bounded HTTP limits; on failure record it and maybe go offline."""
        if self._offline_reason is not None and not even_offline:
            return False, None
        try:
            with mlflow_http_limits(self.config.timeout_s):
                result = call()
        except Exception as exc:  # noqa: BLE001 - a tracking failure must never stop training
            message = redact_text(f"{what}: {type(exc).__name__}: {exc}")[:500]
            if len(self._errors) < _MAX_KEPT_ERRORS:
                self._errors.append(message)
            logger.warning("tracking call failed, kept in the offline spool: %s", message)
            self._failures += 1
            if self._failures >= MAX_CONSECUTIVE_FAILURES:
                self._go_offline(f"{self._failures} tracking calls failed in a row; last: {message}")
            else:
                probe = check_tracking(self.tracking_uri, self.config.timeout_s)
                if not probe.ok:
                    self._go_offline(probe.detail)
            return False, None
        self._failures = 0
        return True, result

    def _go_offline(self, reason: str) -> None:
        if self._offline_reason is None:
            self._offline_reason = redact_text(reason)
            logger.warning(
                "tracking store %s unavailable (%s); logging to the offline spool %s for the rest of the run",
                redact_uri(self.tracking_uri),
                self._offline_reason,
                self._spool.folder if self._spool else self.spool_root,
            )

    def _to_spool(self, what: str, count: int, write: Callable[[Spool], None]) -> None:
        if self._spool is None:  # only when disabled, where nothing is sent either
            return
        try:
            write(self._spool)
        except OSError as exc:
            self._lost[what] += count
            logger.error("could not write %s to the offline spool %s: %s", what, self._spool.folder, exc)

    def _send(self, what: str, count: int, call: Callable[[], Any], spool: Callable[[Spool], None]) -> bool:
        if self._run_id is not None:
            ok, _ = self._attempt(what, call)
            if ok:
                return True
        self._to_spool(what, count, spool)
        return False

    def _require_running(self, method: str) -> bool:
        if self._state == "new":
            raise RuntimeError(f"RunLogger.{method}() called before start()")
        if self._state == "ended":
            raise RuntimeError(f"RunLogger.{method}() called after end()")
        return self.config.enabled

    # ------------------------------------------------------------ public API
    def start(
        self,
        run_name: str | None,
        params: Mapping[str, Any] | Any | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> RunLogger:
        """Create the run and log ``params`` (nested: flattened to dotted keys) and ``tags``. Returns ``self``.

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
                "tracking_uri": redact_uri(self.tracking_uri),
                "created": int(time.time() * 1000),
            },
        )
        probe = check_tracking(self.tracking_uri, self.config.timeout_s)
        if not probe.ok:
            self._go_offline(probe.detail)
        else:

            def create() -> tuple[Any, str]:
                client = make_client(self.tracking_uri)
                experiment_id = get_or_create_experiment(client, self.config.experiment, self.tracking_uri)
                run = client.create_run(experiment_id, run_name=run_name, tags=tag_map)
                return client, run.info.run_id

            ok, created = self._attempt("create run", create)
            if ok and created is not None:
                self._client, self._run_id = created
                self._spool.set_run_id(self._run_id)
                logger.info("tracking run %s in %s", self._run_id, redact_uri(self.tracking_uri))
            else:
                self._go_offline(
                    f"could not create the run: {self._errors[-1] if self._errors else 'unknown'}"
                )
        if self._run_id is None and tag_map:
            self._to_spool("tags", len(tag_map), lambda s: s.tags(tag_map))
        if flat:
            self._log_params(flat)
        return self

    def _tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        check_no_patient_identifiers(tags, "run tags")
        return {sanitize_key(str(k)): cap_value(stringify(v), MAX_TAG_VALUE_LENGTH) for k, v in tags.items()}

    def _log_params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = list(flat.items())
        for i in range(0, len(items), MAX_BATCH_PARAMS):
            chunk = dict(items[i : i + MAX_BATCH_PARAMS])
            self._send(
                "params",
                len(chunk),
                lambda c=chunk: self._client.log_batch(
                    self._run_id, params=[Param(k, v) for k, v in c.items()], synchronous=True
                ),
                lambda s, c=chunk: s.params(c),
            )

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log more (nested) parameters. MLflow refuses to change the value of an already logged parameter."""
        if self._require_running("log_params"):
            check_no_patient_identifiers(params, "run parameters")
            self._log_params(flatten_params(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified; tags, unlike parameters, may be overwritten)."""
        if not self._require_running("set_tags"):
            return
        from mlflow.entities import RunTag

        tag_map = self._tags(tags)
        if tag_map:
            self._send(
                "tags",
                len(tag_map),
                lambda: self._client.log_batch(
                    self._run_id, tags=[RunTag(k, v) for k, v in tag_map.items()], synchronous=True
                ),
                lambda s: s.tags(tag_map),
            )

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
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        items = list(values.items())
        for i in range(0, len(items), MAX_BATCH_METRICS):
            chunk = dict(items[i : i + MAX_BATCH_METRICS])
            self._send(
                "metrics",
                len(chunk),
                lambda c=chunk: self._client.log_batch(
                    self._run_id,
                    metrics=[Metric(k, v, timestamp, step) for k, v in c.items()],
                    synchronous=True,
                ),
                lambda s, c=chunk: s.metrics(c, step, timestamp),
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file or a folder (under ``artifact_path/<folder name>``).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            PatientDataError: a small text file (JSON, YAML, CSV, ...) looks like it holds patient identifiers.
        """
        if not self._require_running("log_artifact"):
            return
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            check_text_file(file)
        self._send(
            "artifacts",
            1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file()),
            lambda: self._client.log_artifact(self._run_id, str(path), artifact_path),
            lambda s: s.artifact(path, artifact_path),
        )

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
        """Close the run with ``status`` (FINISHED, FAILED or KILLED); warn if anything went to the spool."""
        if status not in RUN_STATUSES:
            raise ValueError(f"end: status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if self._state != "running":
            return
        self._state = "ended"
        self._status = status
        if not self.config.enabled:
            return
        sent = False
        if self._run_id is not None:
            # After going offline, close the run anyway if the store answers again (one bounded probe).
            retry = (
                self._offline_reason is not None
                and check_tracking(self.tracking_uri, self.config.timeout_s).ok
            )
            if self._offline_reason is None or retry:
                sent, _ = self._attempt(
                    "end run",
                    lambda: self._client.set_terminated(self._run_id, status=status),
                    even_offline=True,
                )
        if not sent:
            self._to_spool("run_end", 1, lambda s: s.end(status))
        report = self.report()
        if self._spool is not None and self._spool.used:
            try:
                self._spool.write_summary(self._errors)
            except OSError as exc:
                logger.error("could not write the spool summary: %s", exc)
        if report["not_logged"] or report["lost"]:
            logger.warning(
                "tracking: not logged to %s: %s; kept in %s (send later with medseg.tracking.replay_offline)%s",
                report["tracking_uri"],
                report["not_logged"],
                report["spool_dir"],
                f"; LOST (spool not writable): {report['lost']}" if report["lost"] else "",
            )

    def report(self) -> dict[str, Any]:
        """What happened: run id, whether the logger went offline and why, and counts of what was not logged.

        ``not_logged`` counts entries kept in the spool (params, tags, metric values, artifact files,
        run_end); ``lost`` counts entries that could not even be written to the spool.
        """
        spool_used = self._spool is not None and self._spool.used
        return {
            "enabled": self.config.enabled,
            "tracking_uri": redact_uri(self.tracking_uri),
            "run_id": self._run_id,
            "status": self._status,
            "offline": self._offline_reason is not None,
            "offline_reason": self._offline_reason,
            "not_logged": dict(self._spool.counts) if self._spool is not None else {},
            "lost": dict(self._lost),
            "spool_dir": str(self._spool.folder) if spool_used and self._spool is not None else None,
            "errors": list(self._errors),
        }
