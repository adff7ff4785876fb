"""Resolve a model reference (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/<model id>``,
``runs:/RUN_ID/model`` or a local checkpoint path) to a local checkpoint file and its medseg spec.

Lookups go through an ``MlflowClient`` bound to the given store and the download through
``mlflow.artifacts.download_artifacts(..., tracking_uri=, registry_uri=)``: MLflow's process-wide tracking URI is
read (never set) only when the caller names no store, as ``mlflow.pyfunc.load_model`` would.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import InputError, ReasonCode
from medseg.tracking.errors import ModelUriError
from medseg.tracking.lookup import logged_model, registered_version, require_reachable, run_model_location
from medseg.tracking.model_format import read_model_folder
from medseg.tracking.store import ambient_tracking_uri, limit_mlflow_http, make_client

logger = logging.getLogger(__name__)

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI resolved to a local checkpoint file (``spec`` is None for a plain checkpoint path)."""

    checkpoint_path: Path
    spec: dict[str, Any] | None
    name: str | None
    version: int | None
    run_id: str | None
    uri: str


@dataclass(frozen=True)
class _ModelRef:
    """A parsed ``models:/`` or ``runs:/`` URI: exactly one of run_id (+path), name (+alias or version), model_id."""

    run_id: str | None = None
    path: str | None = None
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    model_id: str | None = None


def _parse(uri: str) -> _ModelRef:
    if uri.startswith("runs:/"):
        parts = uri[len("runs:/") :].split("/", 1)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ModelUriError(f"malformed run URI {uri!r}; expected runs:/RUN_ID/model")
        return _ModelRef(run_id=parts[0], path=parts[1])
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if not name or not alias:
            raise ModelUriError(f"malformed model URI {uri!r}; expected models:/NAME@ALIAS")
        return _ModelRef(name=name, alias=alias)
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        if not name or not (version.isdigit() or version == "latest"):
            raise ModelUriError(f"malformed model URI {uri!r}; expected models:/NAME/VERSION")
        return _ModelRef(name=name, version=version)
    if not rest:
        raise ModelUriError(f"malformed model URI {uri!r}")
    return _ModelRef(model_id=rest)


def _safe(text: str) -> str:
    return re.sub(r"[^\w.\-]", "_", text)


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
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_location,
                dst_path=str(staging),
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
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
        ModelIntegrityError: the downloaded checkpoint differs from the one pinned at registration.
        TrackingUnavailableError: the tracking store does not answer within ``timeout_s``.
        InputError: a local checkpoint path does not exist.
    """
    if not (uri.startswith("models:/") or uri.startswith("runs:/")):
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
    ref = _parse(uri)
    require_reachable(tracking_uri, timeout_s, f"resolve {uri}")
    limit_mlflow_http(tracking_uri, timeout_s)
    client = make_client(tracking_uri)
    version: int | None = None
    if ref.run_id is not None and ref.path is not None:
        run_id: str | None = ref.run_id
        location = run_model_location(client, tracking_uri, ref.run_id, ref.path)
        key = f"runs/{_safe(ref.run_id)}/{_safe(ref.path)}"
    elif ref.name is not None:
        mv = registered_version(client, tracking_uri, ref.name, ref.alias, ref.version)
        version, run_id = int(mv.version), mv.run_id
        location = client.get_model_version_download_uri(ref.name, str(version))
        key = f"registry/{_safe(ref.name)}/{version}"
    else:
        model_id = str(ref.model_id)  # _parse returns exactly one kind of reference
        logged = logged_model(client, tracking_uri, model_id)
        run_id, location, key = logged.source_run_id, logged.artifact_location, f"logged/{_safe(model_id)}"
    # Registered versions and logged models are immutable; a run's "model" can be logged again.
    reuse = ref.run_id is None
    root = _download(location, tracking_uri, Path(cache_dir) if cache_dir else None, key, reuse=reuse)
    checkpoint, spec = read_model_folder(root, uri)
    return ResolvedModel(checkpoint, spec, ref.name, version, run_id, uri)
