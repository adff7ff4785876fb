"""Finding runs, logged models and registered model versions in a store, with errors that list what exists.

Every function takes an ``MlflowClient`` bound to the store (see :func:`medseg.tracking.store.make_client`) and the
store's URI only to name it in messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medseg.tracking.errors import ModelNotFoundError, TrackingUnavailableError
from medseg.tracking.store import check_tracking, redact_uri

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_LISTED = 30  # how many existing names / versions an error message lists


def error_code(exc: BaseException) -> str:
    """MLflow's error code of ``exc`` (``""`` for other exceptions)."""
    return str(getattr(exc, "error_code", ""))


def require_reachable(uri: str, timeout_s: float, what: str) -> None:
    """Raise :class:`TrackingUnavailableError` (naming ``what`` could not be done) unless the store answers."""
    status = check_tracking(uri, timeout_s)
    if not status.ok:
        raise TrackingUnavailableError(f"cannot {what}: tracking store {redact_uri(uri)}: {status.detail}")


def listing(items: list[str]) -> str:
    """``items`` for an error message: the first few, comma separated, and how many in all."""
    if not items:
        return "none"
    shown = ", ".join(items[:_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _LISTED else "")


def _found(call: Callable[[], Any], missing: str) -> Any:
    """``call()``, with MLflow's "does not exist" error turned into :class:`ModelNotFoundError` (``missing``)."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        if error_code(exc) != NOT_FOUND:
            raise
        raise ModelNotFoundError(missing) from None


def get_run(client: Any, uri: str, run_id: str) -> Any:
    """The run ``run_id``; :class:`ModelNotFoundError` if the store has none."""
    return _found(lambda: client.get_run(run_id), f"no run {run_id!r} in {redact_uri(uri)}")


def run_models(client: Any, run: Any, model_name: str) -> list[Any]:
    """Logged models named ``model_name`` produced by ``run``, newest first."""
    found = [
        m
        for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{model_name}'"
        )
        if m.source_run_id == run.info.run_id
    ]
    return sorted(found, key=lambda m: m.creation_timestamp, reverse=True)


def run_model_location(client: Any, uri: str, run_id: str, path: str) -> str:
    """Artifact location of the model ``path`` logged by run ``run_id`` (``runs:/RUN_ID/PATH``)."""
    run = get_run(client, uri, run_id)
    models = run_models(client, run, path)
    if models:
        return models[0].artifact_location
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"  # MLflow 2 kept models inside the run's artifacts


def logged_model(client: Any, uri: str, model_id: str) -> Any:
    """The logged model ``model_id``; :class:`ModelNotFoundError` if the store has none."""
    return _found(lambda: client.get_logged_model(model_id), f"no logged model {model_id!r} in {redact_uri(uri)}")


def registered_version(client: Any, uri: str, name: str, alias: str | None, version: str | None) -> Any:
    """The model version of ``name`` that ``alias`` points to, or ``version`` (a number or ``"latest"``).

    Raises:
        ModelNotFoundError: no such model, alias or version; the message lists the ones that exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if error_code(exc) != NOT_FOUND:
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise ModelNotFoundError(
            f"no registered model {name!r} in {redact_uri(uri)}; registered models: {listing(names)}"
        ) from None
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except MlflowException:  # e.g. a quote in the name breaks the filter syntax: list nothing
        versions = []
    if alias is not None:
        aliases = dict(registered.aliases or {})
        if alias not in aliases:
            shown = [f"{a} -> {v}" for a, v in sorted(aliases.items())]
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}; aliases: {listing(shown)}")
        version = str(aliases[alias])
    elif version == "latest":
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions")
        version = str(versions[-1])
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if error_code(exc) not in (NOT_FOUND, "INVALID_PARAMETER_VALUE"):
            raise
        raise ModelNotFoundError(
            f"model {name!r} has no version {version}; versions: {listing([str(v) for v in versions])}"
        ) from None
