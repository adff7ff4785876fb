"""Log a checkpoint as an MLflow model, register it, move aliases, and resolve model URIs back to files.

A medseg model in MLflow is a ``pyfunc`` model named ``model`` in its training run, holding

- the checkpoint file as the pyfunc data file, loaded by ``loader_module`` :mod:`medseg.inference.pyfunc` (MLflow
  imports it by name, so this module never imports inference code),
- ``metadata: {medseg: <spec>, medseg_checkpoint_sha256: <hex>}`` in its ``MLmodel`` file (channel spec, labels,
  spacing, normalization, patch size, network config, medseg version; the checkpoint's SHA-256, checked before
  a resolved checkpoint is handed out),
- a column signature (one path column per channel, optional ``output``) and pinned pip requirements taken from
  the installed packages (no dependency inference, no network access).

:func:`resolve_model_uri` turns ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/<model id>``,
``runs:/RUN_ID/model`` or a local checkpoint path into a local checkpoint file plus that spec.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import InputError, ReasonCode
from medseg.hashing import file_sha256
from medseg.tracking.config import validate_alias, validate_model_name
from medseg.tracking.errors import (
    ModelIntegrityError,
    ModelNotFoundError,
    ModelUriError,
    TrackingUnavailableError,
)
from medseg.tracking.privacy import check_no_patient_identifiers
from medseg.tracking.store import (
    ambient_tracking_uri,
    check_tracking,
    make_client,
    mlflow_http_limits,
    redact_uri,
    use_global_tracking_uri,
)

if TYPE_CHECKING:
    from medseg.tracking.logger import RunLogger

logger = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name inside its run: runs:/<run_id>/model
CHECKPOINT_ARTIFACT = "checkpoint"
SPEC_METADATA_KEY = "medseg"
PYFUNC_LOADER = "medseg.inference.pyfunc"  # imported by name by mlflow.pyfunc.load_model, never by medseg.tracking
PYFUNC_OUTPUT_COLUMN = "output"
SHA256_METADATA_KEY = "medseg_checkpoint_sha256"  # pins the checkpoint artifact; checked before it is loaded
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
_LISTED = 30  # how many existing names / versions an error message lists


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


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI resolved to a local checkpoint file (``spec`` is None for a plain checkpoint path)."""

    checkpoint_path: Path
    spec: dict[str, Any] | None
    name: str | None
    version: int | None
    run_id: str | None
    uri: str


# ----------------------------------------------------------------------------------------------- helpers
def _plain(value: Any, where: str) -> Any:
    """``value`` as YAML/JSON-safe builtins (tuples -> lists, NumPy scalars -> numbers, paths -> text)."""
    if isinstance(value, Mapping):
        out = {}
        for key, sub in value.items():
            if not isinstance(key, str | int | float | bool):
                raise TypeError(f"spec{where}: key {key!r} must be text or a number")
            out[key] = _plain(sub, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return value.as_posix()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"spec{where}: {type(value).__name__} is not JSON-able")


def plain_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise a model spec (JSON-able, no patient identifiers)."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec must be a mapping, got {type(spec).__name__}")
    out = _plain(spec, "")
    json.dumps(out, allow_nan=True)
    check_no_patient_identifiers(out, "model spec")
    return out


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package).split("+", 1)[0]  # drop local tags such as "+cpu"
    except importlib.metadata.PackageNotFoundError:
        return None


def default_pip_requirements() -> list[str]:
    """Pins of the installed medseg, MLflow, NumPy, torch and MONAI (read locally, no network access)."""
    pins = []
    for package in ("medseg", "mlflow", "numpy", "torch", "monai"):
        version = _installed(package)
        if version is not None:
            pins.append(f"{package}=={version}")
    return pins


def model_signature(channel_names: list[str]) -> Any:
    """The pyfunc input schema: one string column (a file or DICOM folder path) per channel, plus ``output``.

    Paths, not arrays, so that each case's geometry reaches the model and labels come back on the input grid
    (see :mod:`medseg.inference.pyfunc`).
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema

    if not channel_names:
        raise ValueError("model_signature: the model's channel spec is empty")
    columns = [ColSpec("string", str(name)) for name in channel_names]
    return ModelSignature(inputs=Schema([*columns, ColSpec("string", PYFUNC_OUTPUT_COLUMN, required=False)]))


@contextlib.contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """Silence MLflow's advice that does not apply here (no input example on purpose; pickled class by reference)."""

    class _DropPickleAdvice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "CloudPickle" not in record.getMessage()

    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    drop = _DropPickleAdvice()
    pyfunc_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*input example was not provided.*")
            yield
    finally:
        pyfunc_logger.removeFilter(drop)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


def _require_reachable(uri: str, timeout_s: float, what: str) -> None:
    status = check_tracking(uri, timeout_s)
    if not status.ok:
        raise TrackingUnavailableError(f"cannot {what}: tracking store {redact_uri(uri)}: {status.detail}")


def _listing(items: list[str]) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _LISTED else "")


# -------------------------------------------------------------------------------------------- lookups
def _get_run(client: Any, uri: str, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if _error_code(exc) != _NOT_FOUND:
            raise
        raise ModelNotFoundError(f"no run {run_id!r} in {redact_uri(uri)}") from None


def _run_models(client: Any, run: Any, model_name: str) -> list[Any]:
    """Logged models named ``model_name`` produced by ``run``, newest first."""
    found = [
        m
        for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{model_name}'"
        )
        if m.source_run_id == run.info.run_id
    ]
    return sorted(found, key=lambda m: m.creation_timestamp, reverse=True)


def _logged_model(client: Any, uri: str, model_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_logged_model(model_id)
    except MlflowException as exc:
        if _error_code(exc) != _NOT_FOUND:
            raise
        raise ModelNotFoundError(f"no logged model {model_id!r} in {redact_uri(uri)}") from None


# ------------------------------------------------------------------------------------------ registering
def _register_version(
    client: Any, name: str, alias: str | None, run_id: str | None, model_id: str
) -> ModelVersionInfo:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
        logger.info("created registered model %r", name)
    except MlflowException as exc:
        if _error_code(exc) not in _ALREADY_EXISTS:
            raise
    # A local registry store looks the logged model up through MLflow's process-wide client.
    with use_global_tracking_uri(client.tracking_uri):
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id
        )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    info = ModelVersionInfo(
        name, int(version.version), alias, f"models:/{name}/{version.version}", run_id, model_id
    )
    logger.info("registered %s (run %s)%s", info.uri, run_id, f" as {info.alias_uri}" if alias else "")
    return info


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
        source: the run id, or the :class:`RunLogger` of the run (which supplies URI and timeout).
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
    import mlflow.pyfunc
    from mlflow.models import Model

    validate_model_name(name)
    if alias is not None:
        validate_alias(alias)
    if isinstance(source, str):
        run_id, uri, timeout = source, tracking_uri, timeout_s or 60.0
        if uri is None:
            raise ValueError("register_model: tracking_uri is required when source is a run id")
    else:
        run_id, uri = source.run_id, tracking_uri or source.tracking_uri
        timeout = timeout_s or source.config.timeout_s
        if run_id is None:
            raise TrackingUnavailableError(
                f"cannot register {name!r}: the run was never created on {redact_uri(uri)} "
                f"({source.report()['offline_reason'] or 'tracking disabled'}); the checkpoint stays at "
                f"{checkpoint_path}. Replay the spool, then register with `medseg register`"
            )
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"register_model: checkpoint {checkpoint_path} is not a file")
    clean_spec = plain_spec(spec)
    signature = model_signature([str(c["name"]) for c in clean_spec.get("channels") or []])
    requirements = list(pip_requirements) if pip_requirements is not None else default_pip_requirements()
    _require_reachable(uri, timeout, f"register {name!r}")
    with mlflow_http_limits(timeout):
        client = make_client(uri)
        run = _get_run(client, uri, run_id)
        # Create the logged model ourselves, in the run's experiment: MLflow would otherwise file it under the
        # *default* experiment, whose artifact root for a SQLite store is ./mlruns in the current directory.
        logged = client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            tags={"medseg.model": "true"},
        )
        with use_global_tracking_uri(uri), _quiet_model_logging():
            Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                loader_module=PYFUNC_LOADER,
                data_path=str(checkpoint_path),
                signature=signature,
                metadata={SPEC_METADATA_KEY: clean_spec, SHA256_METADATA_KEY: file_sha256(checkpoint_path)},
                pip_requirements=requirements,
            )
        return _register_version(client, name, alias, run_id, logged.model_id)


def promote(run_id: str, name: str, alias: str | None, uri: str, timeout_s: float = 10.0) -> ModelVersionInfo:
    """Register the model already logged by run ``run_id`` as a new version of ``name`` and move ``alias``.

    Used by ``medseg register RUN_ID --name NAME --alias ALIAS``.
    """
    validate_model_name(name)
    if alias is not None:
        validate_alias(alias)
    _require_reachable(uri, timeout_s, f"register run {run_id}")
    with mlflow_http_limits(timeout_s):
        client = make_client(uri)
        models = _run_models(client, _get_run(client, uri, run_id), MODEL_NAME)
        if not models:
            raise ModelNotFoundError(
                f"run {run_id} has no logged model named {MODEL_NAME!r} in {redact_uri(uri)}; "
                "log one with register_model (or train with tracking.registered_model set)"
            )
        return _register_version(client, name, alias, run_id, models[0].model_id)


# --------------------------------------------------------------------------------------------- resolving
def _registered_version(client: Any, uri: str, name: str, alias: str | None, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) != _NOT_FOUND:
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise ModelNotFoundError(
            f"no registered model {name!r} in {redact_uri(uri)}; registered models: {_listing(names)}"
        ) from None
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except MlflowException:  # e.g. a quote in the name breaks the filter syntax: list nothing
        versions = []
    if alias is not None:
        aliases = dict(registered.aliases or {})
        if alias not in aliases:
            shown = [f"{a} -> {v}" for a, v in sorted(aliases.items())]
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}; aliases: {_listing(shown)}")
        version = str(aliases[alias])
    elif version == "latest":
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions")
        version = str(versions[-1])
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if _error_code(exc) not in (_NOT_FOUND, "INVALID_PARAMETER_VALUE"):
            raise
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; versions: {_listing([str(v) for v in versions])}"
        ) from None


def _run_model_location(client: Any, uri: str, run_id: str, path: str) -> str:
    run = _get_run(client, uri, run_id)
    models = _run_models(client, run, path)
    if models:
        return models[0].artifact_location
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"  # MLflow 2 kept models inside the run's artifacts


def _download(
    artifact_location: str, tracking_uri: str, cache_dir: Path | None, key: str, reuse: bool
) -> Path:
    """Download the model folder at ``artifact_location`` to ``cache_dir/key`` (or a new temporary folder).

    With ``reuse``, an earlier complete download in ``cache_dir/key`` is returned as is. The download goes to a
    staging folder first and is renamed into place, so a crash never leaves a half-filled cache entry.
    """
    import mlflow.artifacts

    if cache_dir is None:
        target = Path(tempfile.mkdtemp(prefix="medseg-model-")) / "model"
    else:
        target = Path(cache_dir) / key
        if reuse and (target / "MLmodel").is_file():
            logger.debug("using cached %s at %s", artifact_location, target)
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medseg-download-", dir=target.parent))
    try:
        # Some MLflow artifact repositories consult the process-wide URI even when given one explicitly.
        with use_global_tracking_uri(tracking_uri):
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=artifact_location, dst_path=str(staging), tracking_uri=tracking_uri
                )
            )
        if not (local / "MLmodel").is_file():
            raise ModelUriError(f"{artifact_location} is not an MLflow model (no MLmodel file)")
        if target.exists():  # an older or concurrent download
            shutil.rmtree(target, ignore_errors=True)
        os.replace(local, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_model(root: Path, uri: str) -> tuple[Path, dict[str, Any]]:
    from mlflow.models import Model

    model = Model.load(str(root / "MLmodel"))
    spec = (model.metadata or {}).get(SPEC_METADATA_KEY)
    pyfunc = model.flavors.get("python_function", {})
    entry = pyfunc.get("data") if pyfunc.get("loader_module") == PYFUNC_LOADER else None
    if entry is None:  # models registered before the loader module held the checkpoint as an artifact
        entry = ((pyfunc.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT) or {}).get("path")
    if spec is None or entry is None:
        raise ModelUriError(
            f"{uri} is an MLflow model but not a medseg model (no medseg metadata / checkpoint)"
        )
    checkpoint = root / entry
    if not checkpoint.is_file():
        raise ModelUriError(f"{uri}: checkpoint {entry} is missing from the downloaded model")
    pinned = (model.metadata or {}).get(SHA256_METADATA_KEY)
    if pinned is not None and file_sha256(checkpoint) != pinned:  # models registered before pinning have none
        raise ModelIntegrityError(
            f"{uri}: the checkpoint's SHA-256 does not match the one pinned at registration (the artifact was "
            "changed or damaged after it was registered); refusing to load it. Register the model again from "
            "its training run's checkpoint"
        )
    return checkpoint, dict(spec)


def _safe(text: str) -> str:
    return re.sub(r"[^\w.\-]", "_", text)


def resolve_model_uri(
    uri: str,
    tracking_uri: str | None,
    cache_dir: str | Path | None = None,
    timeout_s: float = 60.0,
) -> ResolvedModel:
    """Resolve a model reference to a local checkpoint file and its medseg spec.

    Accepted: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (or ``/latest``), ``models:/<model id>``,
    ``runs:/RUN_ID/model`` and a local checkpoint path (returned as is, ``spec=None``: the checkpoint describes
    itself). MLflow models are downloaded into ``cache_dir`` (default: a new temporary folder the caller owns).
    ``tracking_uri=None`` uses the URI MLflow itself would (``mlflow.set_tracking_uri`` or ``MLFLOW_TRACKING_URI``).

    Raises:
        ModelNotFoundError: unknown model name, alias, version or run (the message lists what exists).
        ModelUriError: malformed URI, or the MLflow model is not a medseg model.
        TrackingUnavailableError: the tracking store does not answer within ``timeout_s``.
        InputError: a local checkpoint path does not exist.
    """
    is_models, is_runs = uri.startswith("models:/"), uri.startswith("runs:/")
    if not (is_models or is_runs):
        if _SCHEME_RE.match(uri):
            raise ModelUriError(
                f"unsupported model URI {uri!r}; use models:/NAME@ALIAS, models:/NAME/VERSION, "
                "runs:/RUN_ID/model or a local checkpoint path"
            )
        path = Path(uri).expanduser()
        if not path.is_file():
            raise InputError(ReasonCode.FILE_NOT_FOUND, path, "model checkpoint file not found")
        return ResolvedModel(path, None, None, None, None, uri)
    if tracking_uri is None:
        tracking_uri = ambient_tracking_uri()
    if tracking_uri is None:
        raise ModelUriError(
            f"a tracking URI is needed to resolve {uri}: pass --tracking-uri (tracking_uri=) or set "
            "MLFLOW_TRACKING_URI"
        )
    name: str | None = None
    version: int | None = None
    if is_runs:
        parts = uri[len("runs:/") :].split("/", 1)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ModelUriError(f"malformed run URI {uri!r}; expected runs:/RUN_ID/model")
    else:
        rest = uri[len("models:/") :]
        if "@" in rest:
            name, ref = rest.rsplit("@", 1)
            if not name or not ref:
                raise ModelUriError(f"malformed model URI {uri!r}; expected models:/NAME@ALIAS")
        elif "/" in rest:
            name, ref = rest.rsplit("/", 1)
            if not name or not (ref.isdigit() or ref == "latest"):
                raise ModelUriError(f"malformed model URI {uri!r}; expected models:/NAME/VERSION")
        elif not rest:
            raise ModelUriError(f"malformed model URI {uri!r}")
    _require_reachable(tracking_uri, timeout_s, f"resolve {uri}")
    with mlflow_http_limits(timeout_s):
        client = make_client(tracking_uri)
        if is_runs:
            run_id = parts[0]
            location = _run_model_location(client, tracking_uri, run_id, parts[1])
            key = f"runs/{_safe(run_id)}/{_safe(parts[1])}"
        elif name is not None:
            alias = ref if "@" in rest else None
            mv = _registered_version(client, tracking_uri, name, alias, None if alias else ref)
            version, run_id = int(mv.version), mv.run_id
            location = client.get_model_version_download_uri(name, str(version))
            key = f"registry/{_safe(name)}/{version}"
        else:
            logged = _logged_model(client, tracking_uri, rest)
            run_id, location, key = logged.source_run_id, logged.artifact_location, f"logged/{_safe(rest)}"
        # Registered versions and logged models are immutable; a run's "model" can be logged again.
        root = _download(
            location, tracking_uri, Path(cache_dir) if cache_dir else None, key, reuse=not is_runs
        )
    checkpoint, spec = _read_model(root, uri)
    return ResolvedModel(checkpoint, spec, name, version, run_id, uri)
