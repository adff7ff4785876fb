"""Tracking stores: which URI to use, whether it answers, and bounded MLflow calls.

The library never reads environment variables for paths: :func:`resolve_tracking_uri` takes the environment as
an argument and the CLI passes ``os.environ``. MLflow itself reads its HTTP timeout and retry count from
environment variables on every request; :func:`limit_mlflow_http` sets them once per process (the only write to
``os.environ`` in medseg) so a dead server costs at most the configured timeout instead of MLflow's default
(120 s x 7 retries). Every MLflow call gets its URI from an ``MlflowClient`` made by :func:`make_client`; medseg
never sets MLflow's process-wide tracking URI.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from medseg.tracking.errors import TrackingError

logger = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
EMBEDDED_DB_NAME = "mlruns.db"
EMBEDDED_ARTIFACTS_DIR = "mlartifacts"
_NETWORK_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def resolve_tracking_uri(config_uri: str | None, env: Mapping[str, str], workdir: str | Path) -> str:
    """The tracking URI to use: explicit config > ``MLFLOW_TRACKING_URI`` in ``env`` > embedded SQLite.

    The embedded default is ``sqlite:///<workdir>/mlruns.db`` (absolute path) with artifacts stored beside it in
    ``<workdir>/mlartifacts`` (see :func:`embedded_artifact_location`). Nothing is created here.
    """
    if config_uri is not None and config_uri.strip():
        return config_uri.strip()
    from_env = env.get(ENV_TRACKING_URI, "").strip()
    if from_env:
        return from_env
    db = (Path(workdir).expanduser().resolve() / EMBEDDED_DB_NAME).as_posix()
    return f"sqlite:///{db}"


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme.split("+", 1)[0].lower()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other URIs and in-memory databases)."""
    if _scheme(uri) != "sqlite":
        return None
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        return None
    path = unquote(rest[3:].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(path)


def absolute_uri(uri: str, cwd: str | Path | None = None) -> str:
    """``uri`` with a relative local path (``sqlite:///mlflow.db``, ``file:mlruns``, ``mlruns``) made absolute against
    ``cwd`` (default: the current directory), so that a spool's header names the same store from any directory."""
    base = Path(cwd if cwd is not None else os.getcwd()).expanduser().resolve()
    scheme = _scheme(uri)
    if scheme == "sqlite":
        prefix, rest = uri.split(":", 1)
        path = rest[3:] if rest.startswith("///") else ""
        if not path or path.startswith(("/", ":memory:", "?")) or Path(path.split("?", 1)[0]).is_absolute():
            return uri
        return f"{prefix}:///{(base / path).as_posix()}"
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc or not parts.path or parts.path.startswith("/"):
            return uri
        return (base / unquote(parts.path)).as_uri()
    if scheme == "" and uri.strip() and not Path(uri).expanduser().is_absolute():
        return (base / Path(uri).expanduser()).as_posix()
    return uri


def embedded_artifact_location(uri: str) -> str | None:
    """Artifact root for experiments created in a local SQLite store: ``mlartifacts`` beside the database.

    Returns ``None`` for server URIs (the server decides where artifacts go).
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.expanduser().resolve().parent / EMBEDDED_ARTIFACTS_DIR).as_posix()


def is_local_store(uri: str) -> bool:
    """Whether ``uri`` is a store on this machine's file system (``sqlite:///``, ``file:``, a plain path).

    Calls to a local store cannot hang on a network, so the run logger gives them no deadline (a fresh SQLite
    store takes seconds to create its tables on the first call).
    """
    return _scheme(uri) in ("sqlite", "file", "")


def redact_uri(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user:***@host``), for logs and reports."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_CREDENTIALS_RE = re.compile(r"(://[^/\s:@]+):[^@\s/]+@")


def redact_text(text: str) -> str:
    """``text`` (e.g. an exception message) with passwords of embedded URLs replaced by ``***``."""
    return _CREDENTIALS_RE.sub(r"\1:***@", text)


@dataclass(frozen=True)
class Connectivity:
    """Result of :func:`check_tracking`: whether the store answered, and why not."""

    ok: bool
    detail: str


def _probe_tcp(host: str, port: int, timeout_s: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


def _probe_http(uri: str, timeout_s: float) -> str | None:
    url = uri.rstrip("/") + "/health"
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
            response.read(64)
        return None
    except urllib.error.HTTPError:
        return None  # the server answered (maybe 401/404 behind a proxy): it is reachable
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError | socket.timeout) or "timed out" in str(reason):
            return f"no answer from {redact_uri(url)} within {timeout_s:g} s"
        return f"no answer from {redact_uri(url)}: {reason}"


def check_tracking(uri: str, timeout_s: float) -> Connectivity:
    """Check within ``timeout_s`` whether the tracking store at ``uri`` can be used.

    - ``http(s)://``: ``GET <uri>/health``; any HTTP answer counts as reachable (authentication is MLflow's job).
    - database URIs with a host (PostgreSQL, MySQL, ...): a TCP connection to the host.
    - ``sqlite:///`` and ``file:``: the folder of the database exists or can be created, and is writable.
    - anything else (``databricks``...): not probed, reported as reachable.
    """
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        problem = _probe_http(uri, timeout_s)
    elif scheme in _NETWORK_DEFAULT_PORTS:
        parts = urlsplit(uri)
        if not parts.hostname:
            return Connectivity(True, "no host to probe")
        problem = _probe_tcp(parts.hostname, parts.port or _NETWORK_DEFAULT_PORTS[scheme], timeout_s)
    elif scheme in ("sqlite", "file"):
        target = sqlite_path(uri) if scheme == "sqlite" else Path(unquote(urlsplit(uri).path)) / "x"
        if target is None:
            return Connectivity(True, "in-memory or relative store")
        problem = _probe_folder(target.expanduser().parent)
    else:
        return Connectivity(True, f"scheme {scheme!r} not probed")
    if problem is None:
        return Connectivity(True, "reachable")
    return Connectivity(False, problem)


def _probe_folder(folder: Path) -> str | None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return f"no existing parent folder for {folder}"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {existing} is not writable"
    return None


MLFLOW_HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
_HTTP_SCHEMES = ("http", "https", "databricks", "databricks-uc")
_http_lock = threading.Lock()
_http_limited = False


def limit_mlflow_http(uri: str, timeout_s: float, env: MutableMapping[str, str] | None = None) -> None:
    """Bound MLflow's HTTP requests in this process: ``timeout_s`` per request, no retries. Set once, never undone.

    Why the process environment: MLflow 3.17 reads ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` from it on every request and offers no per-client setting
    (``mlflow.utils.rest_utils.http_request``; the HTTP artifact repository likewise); its defaults (120 s,
    7 retries with backoff) let one call to a hung server take many minutes. Rewriting the variables around each
    call, as medseg once did, is not thread-safe (two calls restore each other's values, and C code in other
    threads may read the environment while it changes). So this is the one place medseg writes ``os.environ``:
    under a lock, at most once per process, the first time an HTTP store is used (before the
    :class:`~medseg.tracking.logger.RunLogger` starts its sender thread). Later calls, and calls for local stores
    (SQLite, files, databases: no HTTP), change nothing. Values already in the environment are the user's and are
    kept, as MLflow's own tools would.

    The run logger does not rely on these limits (each of its calls has its own deadline, see
    :mod:`medseg.tracking.sender`); they bound the synchronous calls (registering, resolving, replaying) and how
    long a call the logger gave up on lingers in the background.
    """
    global _http_limited
    env = os.environ if env is None else env
    if (_scheme(uri) or uri.strip().lower()) not in _HTTP_SCHEMES:
        return
    with _http_lock:
        if _http_limited:
            return
        _http_limited = True
        wanted = dict(zip(MLFLOW_HTTP_ENV, (str(max(1, math.ceil(timeout_s))), "0"), strict=True))
        for key, value in wanted.items():
            if key not in env:
                env[key] = value
        logger.debug("MLflow HTTP limits for this process: %s", {k: env.get(k) for k in MLFLOW_HTTP_ENV})


def ambient_tracking_uri() -> str | None:
    """The tracking URI MLflow itself would use when one was set, else ``None``.

    Set means ``mlflow.set_tracking_uri(...)`` in this process or ``MLFLOW_TRACKING_URI`` in its environment, as
    ``mlflow.pyfunc.load_model`` would honour; MLflow's implicit local default does not count (resolving a model
    against a store nobody named would only create an empty one in the current folder).
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if not tracking_utils.is_tracking_uri_set():
        return None
    return str(mlflow.get_tracking_uri())


def make_client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri`` for both tracking and registry (no process-wide state).

    For a local SQLite store the database folder is created first (SQLite does not create folders).
    """
    from mlflow import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        create_sqlite_store(db.expanduser())
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_INIT_PREFIX = ".medseg-init-"
_STALE_INIT_S = 600.0
_INIT_LOCK = threading.Lock()  # MLflow's migrations (alembic) are not thread-safe within one process


def create_sqlite_store(db: Path) -> None:
    """Create MLflow's tables in a new SQLite store all at once, or not at all.

    MLflow creates a store's tables one migration at a time, in place; a process killed meanwhile (the run is
    started in the background, so a kill in the first seconds of training can do it) leaves a database that no
    MLflow client can open again ("table ... already exists"). Here the tables are made in a temporary file of the
    same folder, which is then linked to ``db`` only if ``db`` does not exist yet (another process may have won the
    race: its store is used). Temporary files of killed attempts are removed once they are 10 minutes old.
    """
    with _INIT_LOCK:
        if not db.exists():
            _create_sqlite_store(db)


def _create_sqlite_store(db: Path) -> None:
    folder = db.parent
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for stale in folder.glob(f"{_INIT_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > _STALE_INIT_S:
                stale.unlink()
    tmp = folder / f"{_INIT_PREFIX}{os.getpid()}-{threading.get_ident()}-{db.name}"
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{tmp}", embedded_artifact_location(f"sqlite:///{db}"))
        store.engine.dispose()
        with contextlib.suppress(FileExistsError):
            os.link(tmp, db)  # atomic: fails when another process created the store meanwhile
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with embedded artifact root for SQLite stores) if missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=embedded_artifact_location(uri))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created concurrently by another process
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"experiment {name!r} exists but is deleted in {redact_uri(uri)}; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or use another name"
        )
    return experiment.experiment_id
