"""What a medseg model is in MLflow: how its folder is written and how it is read back and checked.

A medseg model in MLflow is a ``pyfunc`` model named ``model`` in its training run, holding

- the checkpoint file as the pyfunc data file, loaded by ``loader_module`` :mod:`medseg.inference.pyfunc` (MLflow
  imports it by name, so :mod:`medseg.tracking` never imports inference code),
- ``metadata: {medseg: <spec>, medseg_checkpoint_sha256: <hex>}`` in its ``MLmodel`` file (channel spec, labels,
  spacing, normalization, patch size, network config, medseg version; the checkpoint's SHA-256, checked before
  a resolved checkpoint is handed out),
- a column signature (one path column per channel, optional ``output``) and pinned pip requirements taken from
  the installed packages (no dependency inference, no network access).

This module touches only local files; sending the folder to a store is :mod:`medseg.tracking.registry`'s job.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from medseg.hashing import file_sha256
from medseg.tracking.errors import ModelIntegrityError, ModelUriError
from medseg.tracking.privacy import check_no_patient_identifiers

MODEL_NAME = "model"  # the logged model's name inside its run: runs:/<run_id>/model
CHECKPOINT_ARTIFACT = "checkpoint"
SPEC_METADATA_KEY = "medseg"
PYFUNC_LOADER = (
    "medseg.inference.pyfunc"  # imported by name by mlflow.pyfunc.load_model, never by medseg.tracking
)
PYFUNC_OUTPUT_COLUMN = "output"
SHA256_METADATA_KEY = "medseg_checkpoint_sha256"  # pins the checkpoint artifact; checked before it is loaded


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


def spec_channel_names(spec: Mapping[str, Any]) -> list[str]:
    """The channel names of a model spec: ``contract.data.channels`` (``ModelSpec.to_dict()``), or the top-level
    ``channels`` of a format-1 spec (written before the data contract, see :func:`medseg.contract.upgrade_spec`)."""
    if "contract" in spec:
        channels = ((spec.get("contract") or {}).get("data") or {}).get("channels") or []
    else:
        channels = spec.get("channels") or []
    return [str(c["name"]) for c in channels]


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
def _quiet_model_saving() -> Iterator[None]:
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


def write_model_folder(
    folder: Path,
    checkpoint_path: Path,
    spec: dict[str, Any],
    signature: Any,
    pip_requirements: list[str],
    logged: Any,
) -> None:
    """Write the pyfunc model folder of ``checkpoint_path`` for the logged model ``logged`` (an MLflow LoggedModel).

    ``spec`` must already be :func:`plain_spec`'d, ``signature`` from :func:`model_signature`. Local only: ``mlflow.pyfunc.save_model`` with an ``MLmodel``
    that names the logged model, as ``mlflow.models.Model.log`` would write it.
    """
    import mlflow.pyfunc
    from mlflow.models import Model

    mlflow_model = Model(
        artifact_path=logged.artifact_location,
        run_id=logged.source_run_id,
        model_uuid=logged.model_id,
        model_id=logged.model_id,
    )
    with _quiet_model_saving():
        mlflow.pyfunc.save_model(
            path=str(folder),
            loader_module=PYFUNC_LOADER,
            data_path=str(checkpoint_path),
            mlflow_model=mlflow_model,
            signature=signature,
            metadata={SPEC_METADATA_KEY: spec, SHA256_METADATA_KEY: file_sha256(checkpoint_path)},
            pip_requirements=pip_requirements,
        )


def read_model_folder(root: Path, uri: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file and spec of the downloaded model folder ``root`` (``uri`` is named in errors).

    Raises:
        ModelUriError: the folder is not a medseg model, or its checkpoint is missing.
        ModelIntegrityError: the checkpoint's SHA-256 differs from the one pinned at registration.
    """
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
