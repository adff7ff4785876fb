"""Shared fixtures: a real `mlflow server` on a free loopback port, started once per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

SERVER_START_TIMEOUT_S = 120.0


@pytest.fixture(autouse=True)
def _fresh_mlflow_http_limits():
    """medseg bounds MLflow's HTTP requests once per process (medseg.tracking.store.limit_mlflow_http); each test
    starts as a fresh process would, and the values one test set do not reach the next."""
    from medseg.tracking import store

    saved = {key: os.environ.get(key) for key in store.MLFLOW_HTTP_ENV}
    store._http_limited = False
    yield
    store._http_limited = False
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory):
    """Launch a real `mlflow server` on 127.0.0.1 at module start (it boots while the embedded tests run).

    SQLite backend, proxied artifacts in its own folder; the process group is always terminated at teardown.
    """
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in the finally block
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{(root / 'srv.db').as_posix()}",
        "--artifacts-destination", (root / "art").as_posix(),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield {"proc": proc, "uri": f"http://127.0.0.1:{port}", "root": root}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process):
    """The launched server once ``GET /health`` answers (bounded wait)."""
    proc, url, root = mlflow_server_process["proc"], mlflow_server_process["uri"], mlflow_server_process["root"]
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not _healthy(url):
        if proc.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S} s")
        time.sleep(0.5)
    return {"uri": url, "root": root}


