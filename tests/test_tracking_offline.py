"""Training must finish when the tracking server is down: bounded waits, local spool, report (no store needed)."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

import medseg.tracking.calls as calls_module
from medseg.tracking import RunLogger, TrackingConfig, read_spool, system_info
from medseg.tracking.store import Connectivity


@pytest.fixture(autouse=True, scope="module")
def _mlflow_imported():
    """Import MLflow once up front so that timings below measure waiting, not the import."""
    import mlflow.entities  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def _png(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)  # only the signature is checked
    return path


def _train(run: RunLogger, tmp_path: Path) -> None:
    """What a training loop logs: 3 epochs of 2 metrics, a file, a QC PNG, a JSON summary, system info."""
    for epoch in range(3):
        run.log_metrics({"train/loss": 1.0 / (epoch + 1), "val/dice": 0.2 * epoch}, step=epoch)
    notes = tmp_path / "notes.txt"
    notes.write_text("epoch log")
    run.log_artifact(notes, "logs")
    run.log_image(_png(tmp_path / "qc.png"))
    run.log_dict({"best": 2}, "summary.json")
    run.log_system_info()


PARAMS = {"data": {"spacing": [1.0, 1.0, 2.0], "labels": {0: "bg", 1: "lesion"}}, "lr": 0.001}


def test_unreachable_server_spools_everything_quickly(tmp_path, caplog):
    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = TrackingConfig(uri=uri, timeout_s=2.0)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="medseg.tracking"):
        with RunLogger(cfg, uri, tmp_path / "spool").start("fold0", PARAMS, tags={"fold": 0}) as run:
            _train(run, tmp_path)
    elapsed = time.monotonic() - t0
    assert elapsed < 4.0, f"offline run took {elapsed:.1f} s"

    report = run.report()
    n_sys = sum(
        1
        for line in read_spool(report["spool_dir"])
        if line["kind"] == "tags" and "sys.python" in line["tags"]
    )
    assert n_sys == 1
    assert report["run_id"] is None and report["offline"] is True and report["status"] == "FINISHED"
    assert "cannot connect" in report["offline_reason"] or "no answer" in report["offline_reason"]
    not_logged = report["not_logged"]
    assert not_logged["params"] == 4 and not_logged["metrics"] == 6 and not_logged["artifacts"] == 3
    assert not_logged["run_end"] == 1 and not_logged["tags"] == 1 + len(system_info())  # "fold" + sys.*
    assert report["lost"] == {}

    spool = Path(report["spool_dir"])
    assert (
        spool.parent == tmp_path / "spool"
        and spool.name.startswith(time.strftime("%Y"))
        and "fold0" in spool.name
    )
    records = read_spool(spool)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "run" and kinds[-1] == "end" and kinds.count("metrics") == 3
    assert records[0]["experiment"] == "medseg" and records[0]["run_name"] == "fold0"
    params = next(r["params"] for r in records if r["kind"] == "params")
    assert params == {
        "data.spacing": "[1.0, 1.0, 2.0]",
        "data.labels.0": "bg",
        "data.labels.1": "lesion",
        "lr": "0.001",
    }
    steps = [(r["step"], r["metrics"]["train/loss"]) for r in records if r["kind"] == "metrics"]
    assert steps == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    # each logged file's private copy lives in the journal folder (copied once, when it was logged)
    files = {Path(r["file"]).name: r for r in records if r["kind"] == "artifact"}
    assert {name: r["artifact_path"] for name, r in files.items()} == {
        "notes.txt": "logs",
        "qc.png": "qc",
        "summary.json": None,
    }
    assert all(r["file"].startswith("artifacts/") and r["files"] == 1 for r in files.values())
    assert (spool / files["notes.txt"]["file"]).read_text() == "epoch log"
    assert json.loads((spool / files["summary.json"]["file"]).read_text()) == {"best": 2}
    summary = json.loads((spool / "summary.json").read_text())
    assert summary["counts"] == not_logged
    assert str(spool) in caplog.text and "not logged" in caplog.text


def test_black_hole_server_costs_at_most_the_timeout(tmp_path):
    """A port that accepts connections but never answers: the probe gives up after timeout_s."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
        t0 = time.monotonic()
        with RunLogger(TrackingConfig(timeout_s=1.0), uri, tmp_path).start("r", {"a": 1}) as run:
            run.log_metrics({"m": 1.0}, step=0)
        elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 3.0, elapsed
    assert run.report()["offline"] and "within 1 s" in run.report()["offline_reason"]
    assert run.report()["not_logged"] == {"params": 1, "metrics": 1, "run_end": 1}


def test_training_never_waits_for_a_hung_server(tmp_path):
    """A long timeout_s does not matter: the calls are queued, and the end waits flush_timeout_s at most."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
        cfg = TrackingConfig(timeout_s=30.0, flush_timeout_s=0.5)
        t0 = time.monotonic()
        run = RunLogger(cfg, uri, tmp_path).start("r", {"a": 1})
        for step in range(50):
            run.log_metrics({"m": float(step)}, step=step)
        logging_s = time.monotonic() - t0
        run.end()
        elapsed = time.monotonic() - t0
    assert logging_s < 0.5, f"the training thread waited {logging_s:.2f} s"
    assert 0.4 < elapsed < 2.0, elapsed  # the probe still unanswered after flush_timeout_s: given up
    report = run.report()
    assert report["offline"] and "probe: no answer within" in report["offline_reason"]
    assert report["not_logged"] == {"params": 1, "metrics": 50, "run_end": 1}
    steps = [r["step"] for r in read_spool(report["spool_dir"]) if r["kind"] == "metrics"]
    assert steps == list(range(50))


class _HealthyButHanging(http.server.BaseHTTPRequestHandler):
    """Answers /health, then hangs on every MLflow API call (a server stuck behind a healthy proxy)."""

    release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path.startswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
        else:
            self.release.wait(20)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_server_hanging_after_health_check_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthyButHanging)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        t0 = time.monotonic()
        with RunLogger(TrackingConfig(timeout_s=1.0), uri, tmp_path).start("r", PARAMS) as run:
            _train(run, tmp_path)
        elapsed = time.monotonic() - t0
    finally:
        _HealthyButHanging.release.set()
        server.shutdown()
        server.server_close()
    assert elapsed < 6.0, f"took {elapsed:.1f} s with timeout_s=1"
    report = run.report()
    assert report["offline"] and report["offline_reason"].startswith("could not create the run")
    assert "timeout" in report["errors"][0].lower() or "timed out" in report["errors"][0].lower()
    assert report["not_logged"]["metrics"] == 6 and report["not_logged"]["params"] == 4
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"  # restored after every call


class _FakeClient:
    """Stands in for MlflowClient to script failures in the middle of a run."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail = False
        self.hang = threading.Event()  # while set, log_batch hangs (a server that stopped answering)
        self.release = threading.Event()

    def get_experiment_by_name(self, name):
        return type("E", (), {"experiment_id": "1", "lifecycle_stage": "active"})()

    def create_run(self, experiment_id, run_name=None, tags=None):
        self.calls.append("create_run")
        return type("R", (), {"info": type("I", (), {"run_id": "run-1"})()})()

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        self.calls.append("log_batch")
        if self.hang.is_set():
            self.release.wait(10)
        if self.fail:
            raise ConnectionError("connection reset")

    def set_terminated(self, run_id, status=None, end_time=None):
        self.calls.append(f"set_terminated:{status}")


@pytest.fixture
def fake_store(monkeypatch):
    client = _FakeClient()
    state = {"reachable": True}
    monkeypatch.setattr(calls_module, "make_client", lambda uri: client)
    monkeypatch.setattr(
        calls_module, "check_tracking", lambda uri, t: Connectivity(state["reachable"], "scripted probe")
    )
    return client, state


def test_failure_mid_run_goes_offline_and_closes_run_when_back(tmp_path, fake_store):
    client, state = fake_store
    run = RunLogger(TrackingConfig(), "http://tracking.invalid", tmp_path).start("r", {"a": 1})
    run.log_metrics({"m": 1.0}, step=0)
    assert run.flush() is True  # the calls are made by the sender thread
    assert run.run_id == "run-1" and client.calls == ["create_run", "log_batch", "log_batch"]
    client.fail, state["reachable"] = True, False
    run.log_metrics({"m": 2.0}, step=1)  # fails, the probe confirms: offline from now on
    run.log_metrics({"m": 3.0}, step=2)  # not even attempted
    assert run.offline and client.calls.count("log_batch") == 3
    state["reachable"] = True  # the server is back by the end: the run is closed there
    run.end("FAILED")
    assert client.calls[-1] == "set_terminated:FAILED"
    report = run.report()
    assert report["not_logged"] == {"metrics": 2} and report["run_id"] == "run-1"
    records = read_spool(report["spool_dir"])
    assert records[0]["run_id"] == "run-1"  # a replay continues this run
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [1, 2]


def test_two_failures_in_a_row_go_offline_even_if_probe_answers(tmp_path, fake_store):
    client, _ = fake_store
    run = RunLogger(TrackingConfig(), "http://tracking.invalid", tmp_path).start("r")
    client.fail = True
    for step in range(4):
        run.log_metrics({"m": float(step)}, step=step)
    assert run.offline and client.calls.count("log_batch") == 2  # `offline` waits for the queued calls
    assert "2 tracking calls failed in a row" in run.report()["offline_reason"]
    run.end()
    assert run.report()["not_logged"] == {"metrics": 4}


def test_disabled_tracking_does_nothing(tmp_path, fake_store):
    client, _ = fake_store
    with RunLogger(TrackingConfig(enabled=False), "http://tracking.invalid", tmp_path / "s").start(
        "r", {"a": 1}
    ) as run:
        run.log_metrics({"m": 1.0}, step=0)
        run.log_artifact(_png(tmp_path / "x.png"))
    assert client.calls == [] and not (tmp_path / "s").exists()
    assert run.report()["enabled"] is False and run.report()["run_id"] is None


def test_logger_usage_errors(tmp_path, fake_store):
    run = RunLogger(TrackingConfig(), "http://tracking.invalid", tmp_path)
    with pytest.raises(RuntimeError, match=r"log_metrics\(\) called before start\(\)"):
        run.log_metrics({"m": 1.0}, step=0)
    run.start("r")
    with pytest.raises(RuntimeError, match="can be called once"):
        run.start("again")
    with pytest.raises(ValueError, match="metric 'm' is not a number: 'high'"):
        run.log_metrics({"m": "high"}, step=0)
    with pytest.raises(ValueError, match="step must be a non-negative integer, got -1"):
        run.log_metrics({"m": 1.0}, step=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run.log_artifact(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="name must be a plain '<name>.json'"):
        run.log_dict({}, "a.yaml")
    with pytest.raises(ValueError, match="status must be one of FINISHED, FAILED, KILLED"):
        run.end("DONE")
    run.end()
    with pytest.raises(RuntimeError, match=r"log_metrics\(\) called after end\(\)"):
        run.log_metrics({"m": 1.0}, step=0)


def test_first_timeout_sends_the_rest_of_the_run_to_the_spool_in_order(tmp_path, fake_store):
    client, _ = fake_store
    cfg = TrackingConfig(timeout_s=0.5, flush_timeout_s=0.5)
    run = RunLogger(cfg, "http://tracking.invalid", tmp_path).start("r")
    run.log_metrics({"m": 0.0}, step=0)
    assert run.flush() is True
    client.hang.set()
    t0 = time.monotonic()
    for step in range(1, 21):
        run.log_metrics({"m": float(step)}, step=step)
    assert time.monotonic() - t0 < 0.2  # queued: the training thread does not wait for the hung call
    assert run.offline  # the first call past its 0.5 s deadline opened the breaker
    assert client.calls.count("log_batch") == 2  # step 0, then step 1 which hung; none after the timeout
    assert run.report()["not_logged"] == {"metrics": 20}  # step 1 given up on, 2-20 never tried
    client.hang.clear()
    client.release.set()  # the hung call for step 1 now returns: it landed after all
    journal = Path(run.report()["spool_dir"]) / "records.jsonl"
    deadline = time.monotonic() + 5
    while '"late": true' not in journal.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    run.end()
    assert client.calls[-1] == "set_terminated:FINISHED"  # the store answers again: the run is closed there
    report = run.report()
    assert "log_batch" not in client.calls[client.calls.index("log_batch") + 2 :]
    assert "timed out, no answer within 0.5 s" in report["offline_reason"]
    assert report["not_logged"] == {"metrics": 19}  # the late landing is acknowledged: not replayed
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    step1 = next(r["seq"] for r in lines if r["kind"] == "metrics" and r["step"] == 1)
    assert {"kind": "ack", "seq": step1, "late": True} in lines
    records = read_spool(report["spool_dir"])
    assert records[0]["run_id"] == "run-1"
    assert [(r["step"], r["metrics"]["m"]) for r in records if r["kind"] == "metrics"] == [
        (step, float(step)) for step in range(2, 21)
    ]
