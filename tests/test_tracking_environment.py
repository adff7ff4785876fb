"""MLflow calls take their store from a client, never from process-wide state.

A log / register / resolve / replay cycle must leave ``os.environ`` and MLflow's process-wide tracking URI alone,
as seen before, after and by a thread watching while it runs (a training prefetch thread shares the process); and
two cycles running at once against two SQLite stores must each land in their own store.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from medseg.tracking import RunLogger, TrackingConfig, register_model, replay_offline, resolve_model_uri
from medseg.tracking.store import limit_mlflow_http, resolve_tracking_uri

SPEC = {
    "channels": [{"name": "CBF", "normalization": {"name": "zscore"}}],
    "labels": {0: "background", 1: "lesion"},
    "network": {"name": "unet", "features": [4, 8]},
}


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _EnvironmentWatcher:
    """Compares ``os.environ`` and MLflow's process-wide URI with their values at start, every millisecond."""

    def __init__(self) -> None:
        from mlflow.tracking._tracking_service import utils as tracking_utils

        self._utils = tracking_utils
        self.environ = dict(os.environ)
        self.global_uri = tracking_utils._tracking_uri
        self.changes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _diff(self) -> list[str]:
        now = dict(os.environ)
        keys = sorted(k for k in set(now) | set(self.environ) if now.get(k) != self.environ.get(k))
        found = [f"os.environ[{k!r}]: {self.environ.get(k)!r} -> {now.get(k)!r}" for k in keys]
        if self._utils._tracking_uri != self.global_uri:
            found.append(f"mlflow tracking URI: {self.global_uri!r} -> {self._utils._tracking_uri!r}")
        return found

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            for change in self._diff():
                if change not in self.changes:
                    self.changes.append(change)

    def __enter__(self) -> _EnvironmentWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.changes.extend(c for c in self._diff() if c not in self.changes)


def _cycle(uri: str, work: Path, name: str) -> dict:
    """Log a run, register its checkpoint, resolve the alias, replay an offline spool into the same store."""
    checkpoint = work / "best.pt"
    checkpoint.write_bytes(f"weights of {name}".encode())
    notes = work / "notes.txt"
    notes.write_text(name)
    cfg = TrackingConfig(experiment=f"env-{name}", timeout_s=30)
    with RunLogger(cfg, uri, work / "spool").start(name, {"lr": 0.1, "name": name}) as run:
        for step in range(3):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        run.log_artifact(notes)
        version = register_model(run, checkpoint, SPEC, name)
    resolved = resolve_model_uri(f"models:/{name}@champion", uri, work / "cache")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once the socket is closed
    with RunLogger(TrackingConfig(timeout_s=2), dead, work / "offline").start(f"{name}-offline") as offline:
        offline.log_metrics({"loss": 0.5}, step=0)
    replayed = replay_offline(offline.report()["spool_dir"], uri, experiment=f"env-{name}")
    return {"run_id": run.run_id, "version": version, "resolved": resolved, "replayed": replayed}


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_cycle_leaves_the_environment_and_mlflow_global_state_alone(kind, tmp_path, monkeypatch, request):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if kind == "embedded":
        uri = resolve_tracking_uri(None, {}, tmp_path / "mlflow")
    else:
        uri = request.getfixturevalue("mlflow_server")["uri"]
    # The one write medseg allows itself, once per process at the first HTTP store (the cycle's offline run uses
    # one): done before the cycle, as in a process that already used a server (conftest resets it per test).
    limit_mlflow_http("http://127.0.0.1", 30)
    import mlflow

    before = mlflow.get_tracking_uri()
    with _EnvironmentWatcher() as watcher:
        result = _cycle(uri, tmp_path, f"env-{kind}")
    assert watcher.changes == []
    assert mlflow.get_tracking_uri() == before
    assert result["version"].version == 1 and result["resolved"].version == 1
    assert result["resolved"].checkpoint_path.read_bytes() == f"weights of env-{kind}".encode()
    assert result["replayed"]["metrics"] == 1 and result["replayed"]["created_run"] is True


def test_two_cycles_at_once_each_use_their_own_store(tmp_path):
    from mlflow import MlflowClient

    limit_mlflow_http("http://127.0.0.1", 30)

    uris = {name: resolve_tracking_uri(None, {}, tmp_path / name / "mlflow") for name in ("left", "right")}
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            (tmp_path / name).mkdir(exist_ok=True)
            results[name] = _cycle(uris[name], tmp_path / name, name)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    with _EnvironmentWatcher() as watcher:
        threads = [threading.Thread(target=run, args=(name,)) for name in uris]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    assert errors == [] and watcher.changes == []
    for name, uri in uris.items():
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert [m.name for m in client.search_registered_models()] == [name]
        runs = client.search_runs([client.get_experiment_by_name(f"env-{name}").experiment_id])
        assert sorted(r.info.run_name for r in runs) == sorted([name, f"{name}-offline"])
        assert client.get_run(results[name]["run_id"]).data.params == {"lr": "0.1", "name": name}
        assert results[name]["resolved"].checkpoint_path.read_bytes() == f"weights of {name}".encode()
        stored = tmp_path / name / "mlflow" / "mlartifacts"
        assert stored.is_dir() and not (tmp_path / "mlruns").exists()
