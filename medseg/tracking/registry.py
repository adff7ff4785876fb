"""Log a checkpoint as its run's MLflow model, register it as a new model version, and move the alias.

The model folder (what is in it: :mod:`medseg.tracking.model_format`) is written locally and sent through an
``MlflowClient`` bound to the store: ``create_logged_model`` in the run's experiment, ``log_model_artifacts``,
``finalize_logged_model``, then ``create_model_version`` with the logged model's artifact location as source.
These are the steps ``mlflow.models.Model.log`` takes, but that function (and ``mlflow.pyfunc.log_model``) takes no
tracking URI and reads MLflow's process-wide one; so does the local registry store when a version's source is
``models:/<model id>``. Going through the client keeps every call on the store it was given, with no global
state, so registering is safe while other threads use other stores (checked by
``tests/test_tracking_environment.py``). Unlike ``Model.log``, the run's step-0 metrics are not copied onto the
logged model.

Turning ``models:/...`` URIs back into checkpoints is :mod:`medseg.tracking.resolve`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.tracking.config import validate_alias, validate_model_name
from medseg.tracking.errors import ModelNotFoundError, TrackingUnavailableError
from medseg.tracking.lookup import ALREADY_EXISTS, error_code, get_run, require_reachable, run_models
from medseg.tracking.model_format import (
    MODEL_NAME,
    default_pip_requirements,
    model_signature,
    plain_spec,
    spec_channel_names,
    write_model_folder,
)
from medseg.tracking.store import limit_mlflow_http, make_client, redact_uri

if TYPE_CHECKING:
    from medseg.tracking.logger import RunLogger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version. ``uri`` (``models:/NAME/VERSION``) never moves; ``alias_uri`` follows the alias."""

    name: str
    version: int
    alias: str | None
    uri: str
    run_id: str | None
    model_id: str | None

    @property
    def alias_uri(self) -> str | None:
        return f"models:/{self.name}@{self.alias}" if self.alias else None


def _register_version(
    client: Any, name: str, alias: str | None, run_id: str | None, logged: Any
) -> ModelVersionInfo:
    """A new version of ``name`` (created on first use) from the logged model ``logged``; ``alias`` moved to it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
        logger.info("created registered model %r", name)
    except MlflowException as exc:
        if error_code(exc) not in ALREADY_EXISTS:
            raise
    # The artifact location, not models:/<model id>: a local registry store would look that up through MLflow's
    # process-wide tracking URI. The server accepts it because model_id names the logged model it belongs to.
    version = client.create_model_version(
        name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    info = ModelVersionInfo(
        name, int(version.version), alias, f"models:/{name}/{version.version}", run_id, logged.model_id
    )
    logger.info("registered %s (run %s)%s", info.uri, run_id, f" as {info.alias_uri}" if alias else "")
    return info


def _log_model(
    client: Any,
    run: Any,
    checkpoint_path: Path,
    spec: dict[str, Any],
    signature: Any,
    requirements: list[str],
) -> Any:
    """Log ``checkpoint_path`` as the pyfunc model ``model`` of ``run``; returns the READY logged model."""
    from mlflow.entities import LoggedModelOutput

    # In the run's experiment: MLflow's fluent API would file it under the *default* experiment, whose artifact
    # root for a SQLite store is ./mlruns in the current directory.
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run.info.run_id,
        tags={"medseg.model": "true"},
    )
    try:
        client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="medseg-model-") as tmp:
            folder = Path(tmp) / MODEL_NAME
            write_model_folder(folder, checkpoint_path, spec, signature, requirements, logged)
            client.log_model_artifacts(logged.model_id, str(folder))
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - the first error is the one to report
            logger.debug("could not mark logged model %s FAILED: %s", logged.model_id, exc)
        raise
    return client.finalize_logged_model(logged.model_id, "READY")


def _source_of(
    source: str | RunLogger,
    checkpoint_path: str | Path,
    name: str,
    tracking_uri: str | None,
    timeout_s: float | None,
) -> tuple[str, str, float]:
    """``(run_id, tracking URI, timeout)`` of a ``register_model`` source (a run id or a :class:`RunLogger`)."""
    if isinstance(source, str):
        if tracking_uri is None:
            raise ValueError("register_model: tracking_uri is required when source is a run id")
        return source, tracking_uri, timeout_s or 60.0
    uri = tracking_uri or source.tracking_uri
    source.flush()  # the run's queued metrics and artifacts reach the store before its model does
    if source.run_id is None:
        raise TrackingUnavailableError(
            f"cannot register {name!r}: the run was never created on {redact_uri(uri)} "
            f"({source.report()['offline_reason'] or 'tracking disabled'}); the checkpoint stays at "
            f"{checkpoint_path}. Send the run with `medseg replay WORKDIR`, then register with `medseg register`"
        )
    return source.run_id, uri, timeout_s or source.config.timeout_s


def register_model(
    source: str | RunLogger,
    checkpoint_path: str | Path,
    spec: Mapping[str, Any],
    name: str,
    alias: str | None = "champion",
    *,
    tracking_uri: str | None = None,
    timeout_s: float | None = None,
    pip_requirements: list[str] | None = None,
) -> ModelVersionInfo:
    """Log ``checkpoint_path`` as the run's MLflow model and register it as a new version of ``name``.

    Args:
        source: the run id, or the :class:`RunLogger` of the run (which supplies URI and timeout; what it still
            has queued is sent first).
        checkpoint_path: the checkpoint file (copied into the model's artifacts).
        spec: JSON-able data contract of the checkpoint (stored as ``metadata.medseg`` of the MLmodel file).
        name: registered model name; created on first use.
        alias: alias moved to the new version (``None``: no alias).
        tracking_uri: required when ``source`` is a run id.
        timeout_s: bound of each HTTP call (default: the logger's ``timeout_s``, else 60 s).
        pip_requirements: the model's pip requirements (default: :func:`default_pip_requirements`).

    Raises:
        TrackingUnavailableError: the store does not answer, or the logger never created its run.
        ModelNotFoundError: the run does not exist.
        PatientDataError: the spec looks like it holds patient identifiers.
    """
    validate_model_name(name)
    if alias is not None:
        validate_alias(alias)
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"register_model: checkpoint {checkpoint_path} is not a file")
    clean_spec = plain_spec(spec)
    signature = model_signature(spec_channel_names(clean_spec))
    requirements = list(pip_requirements) if pip_requirements is not None else default_pip_requirements()
    run_id, uri, timeout = _source_of(source, checkpoint_path, name, tracking_uri, timeout_s)
    require_reachable(uri, timeout, f"register {name!r}")
    limit_mlflow_http(uri, timeout)
    client = make_client(uri)
    run = get_run(client, uri, run_id)
    logged = _log_model(client, run, checkpoint_path, clean_spec, signature, requirements)
    return _register_version(client, name, alias, run_id, logged)


def promote(run_id: str, name: str, alias: str | None, uri: str, timeout_s: float = 10.0) -> ModelVersionInfo:
    """Register the model already logged by run ``run_id`` as a new version of ``name`` and move ``alias``.

    Used by ``medseg register RUN_ID --name NAME --alias ALIAS``.
    """
    validate_model_name(name)
    if alias is not None:
        validate_alias(alias)
    require_reachable(uri, timeout_s, f"register run {run_id}")
    limit_mlflow_http(uri, timeout_s)
    client = make_client(uri)
    models = run_models(client, get_run(client, uri, run_id), MODEL_NAME)
    if not models:
        raise ModelNotFoundError(
            f"run {run_id} has no logged model named {MODEL_NAME!r} in {redact_uri(uri)}; "
            "log one with register_model (or train with tracking.registered_model set)"
        )
    return _register_version(client, name, alias, run_id, models[0])
