"""Run logging, registry and model URIs against real stores: an embedded SQLite store and a real `mlflow server`.

Every test runs once per store (module-scoped, parametrized fixture). The server is started on a free loopback
port with its own SQLite database and artifact folder, and always terminated at the end of the module.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from medseg.tracking import (
    ModelNotFoundError,
    ModelUriError,
    PatientDataError,
    RunLogger,
    SpoolError,
    TrackingConfig,
    promote,
    register_model,
    replay_offline,
    resolve_model_uri,
    resolve_tracking_uri,
    scrub_params,
)

CANARY_ID = "CANARY-PID-55821"
SPEC = {
    "channels": [
        {"name": "CBF", "normalization": {"name": "zscore"}},
        {"name": "MTT", "normalization": {"name": "zscore"}},
    ],
    "labels": {0: "background", 1: "lesion"},
    "spacing": [1.0, 1.0, 2.0],
    "patch_size": [16, 16, 8],
    "network": {"name": "unet", "features": [8, 16]},
    "medseg_version": "0.1.0",
}


@pytest.fixture(autouse=True, scope="module")
def _quiet_mlflow():
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="module", autouse=True)
def _boot_server_early(mlflow_server_process):
    """Start the shared server when this module starts, so it boots while the embedded tests run."""
    return mlflow_server_process


@pytest.fixture(scope="module", params=["embedded", "server"])
def store(request, tmp_path_factory):
    """``{"uri", "root", "kind"}``; the process works in an empty folder to catch files MLflow drops in the cwd."""
    cwd = tmp_path_factory.mktemp(f"cwd_{request.param}")
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        if request.param == "embedded":
            root = tmp_path_factory.mktemp("embedded")
            info = {"uri": resolve_tracking_uri(None, {}, root / "work"), "root": root / "work"}
        else:
            info = request.getfixturevalue("mlflow_server")
        yield {**info, "kind": request.param, "cwd": cwd}
        assert sorted(p.name for p in cwd.iterdir()) == []  # no ./mlruns, no ./mlflow.db
    finally:
        os.chdir(old_cwd)


def _png(path: Path) -> Path:
    """A real 2x2 grey PNG (no imaging library needed)."""
    raw = b"".join(b"\x00" + bytes([0, 255]) for _ in range(2))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _download_text(uri: str, run_id: str, path: str, dst: Path) -> bytes:
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri
    )
    return Path(local).read_bytes()


def test_run_logs_params_metrics_artifacts(store, tmp_path):
    cfg = TrackingConfig(experiment=f"exp-{store['kind']}", timeout_s=10)
    params = {"data": SPEC, "optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "epochs": 3}
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    png = _png(tmp_path / "slice.png")
    with RunLogger(cfg, store["uri"], tmp_path / "spool").start("fold0", params, tags={"fold": 0}) as run:
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            run.log_metrics({"train/loss": loss, "val/dice": np.float32(1 - loss)}, step=step)
        run.log_artifact(notes, "extra")
        assert run.log_image(png) is True
        run.log_dict({"best_epoch": 2, "dice": 0.75}, "summary.json")
        info = run.log_system_info()
    report = run.report()
    assert report["run_id"] == run.run_id and report["status"] == "FINISHED"
    assert report["offline"] is False and report["not_logged"] == {} and report["spool_dir"] is None
    assert not (tmp_path / "spool").exists()  # nothing spooled, nothing created

    client = _client(store["uri"])
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "fold0"
    assert client.get_experiment(logged.info.experiment_id).name == f"exp-{store['kind']}"
    p = logged.data.params
    assert p["data.labels.1"] == "lesion" and p["data.channels.1.name"] == "MTT"
    assert p["data.spacing"] == "[1.0, 1.0, 2.0]" and p["optim.lr"] == "0.001" and p["epochs"] == "3"
    assert p["data.network.features"] == "[8, 16]" and p["optim.betas"] == "[0.9, 0.99]"
    assert "data" not in p and "optim" not in p  # only leaves are parameters
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.9),
        (1, 0.5),
        (2, 0.25),
    ]
    dice = sorted(client.get_metric_history(run.run_id, "val/dice"), key=lambda m: m.step)
    assert [m.value for m in dice] == pytest.approx([0.1, 0.5, 0.75])
    assert logged.data.tags["fold"] == "0"
    assert logged.data.tags["sys.python"] == info["python"] and logged.data.tags["sys.cpu_count"] == str(
        os.cpu_count()
    )
    assert _download_text(store["uri"], run.run_id, "extra/notes.txt", tmp_path / "d1") == b"hello"
    assert _download_text(store["uri"], run.run_id, "qc/slice.png", tmp_path / "d2") == png.read_bytes()
    summary = _download_text(store["uri"], run.run_id, "summary.json", tmp_path / "d3")
    assert b'"best_epoch": 2' in summary
    if store["kind"] == "embedded":  # artifacts beside the database
        assert (store["root"] / "mlruns.db").is_file()
        stored = store["root"] / "mlartifacts" / run.run_id / "artifacts" / "qc" / "slice.png"
        assert stored.read_bytes() == png.read_bytes()


def test_qc_images_switch_and_png_check(store, tmp_path):
    off = TrackingConfig(experiment=f"exp-{store['kind']}", log_qc_images=False)
    with RunLogger(off, store["uri"], tmp_path / "spool").start("no-qc") as run_off:
        assert run_off.log_image(_png(tmp_path / "a.png")) is False
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"GIF89a-not-a-png")
    with RunLogger(TrackingConfig(experiment=f"exp-{store['kind']}"), store["uri"], tmp_path / "spool").start(
        "bad-png"
    ) as run_on:
        with pytest.raises(ValueError, match="fake.png is not a PNG file"):
            run_on.log_image(fake)
    client = _client(store["uri"])
    assert client.list_artifacts(run_off.run_id) == [] and client.list_artifacts(run_on.run_id) == []


def _checkpoint(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"ckpt_{content.decode()}.pt"
    path.write_bytes(content)
    return path


def test_register_twice_moves_alias_and_resolves(store, tmp_path):
    name = f"seg-{store['kind']}"
    cfg = TrackingConfig(experiment=f"exp-{store['kind']}", timeout_s=10)
    versions = []
    for content in (b"weights-one", b"weights-two"):
        with RunLogger(cfg, store["uri"], tmp_path / "spool").start("train") as run:
            versions.append(register_model(run, _checkpoint(tmp_path, content), SPEC, name))
    assert [(v.name, v.version, v.alias) for v in versions] == [(name, 1, "champion"), (name, 2, "champion")]
    assert versions[1].uri == f"models:/{name}/2" and versions[1].alias_uri == f"models:/{name}@champion"
    client = _client(store["uri"])
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2

    cache = tmp_path / "cache"
    champion = resolve_model_uri(f"models:/{name}@champion", store["uri"], cache)
    assert champion.checkpoint_path.read_bytes() == b"weights-two"
    assert champion.spec == SPEC and champion.spec["labels"] == {0: "background", 1: "lesion"}
    assert (champion.name, champion.version, champion.run_id) == (name, 2, versions[1].run_id)
    first = resolve_model_uri(f"models:/{name}/1", store["uri"], cache)
    assert first.checkpoint_path.read_bytes() == b"weights-one" and first.spec == SPEC and first.version == 1
    by_run = resolve_model_uri(f"runs:/{versions[0].run_id}/model", store["uri"], cache)
    assert by_run.checkpoint_path.read_bytes() == b"weights-one" and by_run.run_id == versions[0].run_id
    latest = resolve_model_uri(f"models:/{name}/latest", store["uri"], cache)
    assert latest.version == 2

    # the signature asks for one path per channel (geometry travels with the files) and an optional output
    from mlflow.models import Model

    signature = Model.load(str(champion.checkpoint_path.parent.parent / "MLmodel")).signature
    assert [(c.name, c.required) for c in signature.inputs.inputs] == [("CBF", True), ("MTT", True),
                                                                        ("output", False)]

    # promote (the `medseg register RUN_ID` path): a third version from run 1's logged model
    promoted = promote(versions[0].run_id, name, "champion", store["uri"])
    assert promoted.version == 3 and int(client.get_model_version_by_alias(name, "champion").version) == 3
    assert resolve_model_uri(
        f"models:/{name}@champion", store["uri"], cache
    ).checkpoint_path.read_bytes() == (b"weights-one")


def test_unknown_model_references_list_what_exists(store, tmp_path):
    name = f"seg-{store['kind']}"
    uri = store["uri"]
    with pytest.raises(ModelNotFoundError, match=r"model '.*' has no alias 'nope'; aliases: champion -> \d"):
        resolve_model_uri(f"models:/{name}@nope", uri, tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"has no version 99; versions: 1, 2"):
        resolve_model_uri(f"models:/{name}/99", uri, tmp_path)
    with pytest.raises(ModelNotFoundError, match=rf"no registered model 'nope'.*registered models: .*{name}"):
        resolve_model_uri("models:/nope@champion", uri, tmp_path)
    with pytest.raises(ModelNotFoundError, match="no run 'deadbeef'"):
        resolve_model_uri("runs:/deadbeef/model", uri, tmp_path)
    with pytest.raises(ModelNotFoundError, match="no run 'deadbeef'"):
        promote("deadbeef", name, "champion", uri)
    with pytest.raises(ModelUriError, match="expected models:/NAME/VERSION"):
        resolve_model_uri(f"models:/{name}/one", uri, tmp_path)
    with pytest.raises(ModelUriError, match="unsupported model URI 's3://bucket/m'"):
        resolve_model_uri("s3://bucket/m", uri, tmp_path)


def test_spec_with_patient_identifier_is_refused(store, tmp_path):
    cfg = TrackingConfig(experiment=f"exp-{store['kind']}")
    with RunLogger(cfg, store["uri"], tmp_path / "spool").start("canary") as run:
        with pytest.raises(PatientDataError, match="model spec"):
            register_model(
                run, _checkpoint(tmp_path, b"w"), {**SPEC, "source": {"PatientID": CANARY_ID}}, "canary"
            )
        with pytest.raises(PatientDataError):
            run.log_params({"cohort": {"PatientID": CANARY_ID}})
        with pytest.raises(PatientDataError):
            run.log_dict({"cases": [{"PatientID": CANARY_ID}]}, "cases.json")
    client = _client(store["uri"])
    assert client.get_run(run.run_id).data.params == {}
    assert [a.path for a in client.list_artifacts(run.run_id)] == []
    assert [m.name for m in client.search_registered_models(filter_string="name = 'canary'")] == []

    # scrubbed params go through; the canary value reaches no file of the store
    params = scrub_params(
        {"lr": 0.1, "cohort": {"PatientID": CANARY_ID, "size": 12}, "who": "DOE^" + CANARY_ID}
    )
    with RunLogger(cfg, store["uri"], tmp_path / "spool").start("scrubbed", params) as run:
        pass
    assert client.get_run(run.run_id).data.params == {"lr": "0.1", "cohort.size": "12"}
    if store["kind"] == "embedded":
        for path in store["root"].rglob("*"):
            if path.is_file():
                assert CANARY_ID.encode() not in path.read_bytes(), path


def test_offline_spool_replays_into_the_store(store, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = TrackingConfig(experiment=f"exp-{store['kind']}", timeout_s=2)
    png = _png(tmp_path / "qc.png")
    with RunLogger(cfg, dead, tmp_path / "spool").start(
        "offline-run", {"model": {"depth": 3}}, {"fold": 1}
    ) as run:
        for step in range(3):
            run.log_metrics({"loss": 1.0 - 0.25 * step}, step=step)
        run.log_image(png)
    spool = run.report()["spool_dir"]
    result = replay_offline(spool, store["uri"], timeout_s=10)
    assert result["created_run"] is True
    assert {k: result[k] for k in ("params", "tags", "metrics", "artifacts")} == {
        "params": 1, "tags": 1, "metrics": 3, "artifacts": 1,
    }  # fmt: skip
    client = _client(store["uri"])
    replayed = client.get_run(result["run_id"])
    assert replayed.info.status == "FINISHED" and replayed.info.run_name == "offline-run"
    assert replayed.data.params == {"model.depth": "3"}
    assert replayed.data.tags["fold"] == "1" and replayed.data.tags["medseg.replayed_from_spool"] == "true"
    history = sorted(client.get_metric_history(result["run_id"], "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.75), (2, 0.5)]
    assert _download_text(store["uri"], result["run_id"], "qc/qc.png", tmp_path / "dl") == png.read_bytes()
    with pytest.raises(SpoolError, match="already replayed into run"):
        replay_offline(spool, store["uri"])


def test_a_sqlite_store_killed_while_being_created_is_absent_or_whole(tmp_path):
    """MLflow makes a new store's tables one migration at a time; medseg makes them in a temporary file and links
    it into place, so a kill at any moment leaves no store that MLflow cannot open again."""
    import signal
    import subprocess
    import sys
    import time

    from medseg.tracking.store import create_sqlite_store, make_client

    db = tmp_path / "store" / "mlruns.db"
    code = f"from pathlib import Path; from medseg.tracking.store import create_sqlite_store; create_sqlite_store(Path({str(db)!r}))"
    for delay in (1.5, 3.0):  # MLflow's import alone takes ~1-2 s: the kill lands in the import or the migrations
        child = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        if db.exists():
            break
    leftovers = [p.name for p in db.parent.iterdir() if p.name != db.name] if db.parent.exists() else []
    create_sqlite_store(db)  # a fresh attempt (or nothing, when the killed one had finished)
    client = make_client(f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("after-kill"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert all(name.startswith(".medseg-init-") for name in leftovers)  # only the killed attempt's temp file
