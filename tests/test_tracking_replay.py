"""The run's write-ahead journal and `medseg replay`: a SIGKILLed run loses nothing, a replay never duplicates.

Real MLflow stores (SQLite, and MLflow's file store where a repeated metric value is stored twice), a real killed
process, and the loopback stubs of the offline tests (a port that never answers, a port that refuses).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.cli import main
from medseg.tracking import RunLogger, TrackingConfig, read_spool, replay_offline, resolve_tracking_uri
from medseg.tracking.journal import Spool, inspect_spool
from medseg.tracking.spools import warn_unsent_spools

N_STEPS = 7
CHILD = r"""
import sys, time
from medseg.tracking import RunLogger, TrackingConfig
uri, root, n, flush = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "flush"
run = RunLogger(TrackingConfig(timeout_s=10.0), uri, root).start("killed", {"lr": 0.01, "net": {"depth": 3}})
for step in range(n):
    run.log_metrics({"train/loss": 1.0 / (step + 1), "val/dice": step / 10}, step=step)
if flush:
    assert run.flush()
print("logged", flush=True)
time.sleep(120)
"""


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _run_and_kill(tmp_path: Path, uri: str, work: Path, flush: bool) -> None:
    """Start the child (a RunLogger driven like training), wait until it logged N_STEPS epochs, SIGKILL it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    args = [
        sys.executable,
        "-c",
        CHILD,
        uri,
        str(work / "mlflow-offline"),
        str(N_STEPS),
        "flush" if flush else "-",
    ]
    child = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        line = child.stdout.readline() if ready else b""
        assert line.strip() == b"logged", child.stderr.read1() if child.poll() is not None else "no answer"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        child.stderr.close()


def test_a_run_killed_while_the_server_hangs_is_replayed_by_the_command(tmp_path, caplog, capsys):
    """(i) Every epoch logged before the SIGKILL was still queued (the server never answered): the journal has them,
    `medseg train` would name the spool, and `medseg replay WORKDIR` sends them all and closes the run as KILLED."""
    work = tmp_path / "work"
    with socket.socket() as hole:  # accepts connections, never answers: the calls wait in the sender's queue
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        hung = f"http://127.0.0.1:{hole.getsockname()[1]}"
        _run_and_kill(tmp_path, hung, work, flush=False)

    (spool,) = (work / "mlflow-offline").iterdir()
    state = inspect_spool(spool)
    assert state.interrupted and state.owner is None and state.end is None and not state.acked
    assert state.header["pid"] > 0 and state.header["host"] == socket.gethostname()
    assert [r["step"] for r in state.unsent if r["kind"] == "metrics"] == list(range(N_STEPS))

    with caplog.at_level(logging.WARNING, logger="medseg.tracking"):
        assert warn_unsent_spools(work) == [spool]  # what `medseg train` logs when it starts in this workdir
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "medseg.tracking.spools"]
    assert (
        "1 interrupted run(s)" in warning and spool.name in warning and f"`medseg replay {work}`" in warning
    )

    target = resolve_tracking_uri(None, {}, tmp_path / "store")
    assert main(["replay", str(work), "--tracking-uri", target]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{spool}: run ") and "new run, KILLED, interrupted" in line
    assert f"sent {2 * N_STEPS} metrics, 2 params" in line and f"the run was tracked at {hung}" in line

    client = _client(target)
    result = json.loads((spool / "replayed.json").read_text())
    run = client.get_run(result["run_id"])
    assert run.info.status == "KILLED" and run.info.run_name == "killed"
    assert run.data.params == {"lr": "0.01", "net.depth": "3"}
    assert run.data.tags["medseg.replayed_from_spool"] == "true"
    assert _history(client, result["run_id"], "train/loss") == [(s, 1.0 / (s + 1)) for s in range(N_STEPS)]
    assert [s for s, _ in _history(client, result["run_id"], "val/dice")] == list(range(N_STEPS))

    assert main(["replay", str(work), "--tracking-uri", target]) == 0  # nothing left: nothing sent twice
    assert "nothing to replay" in capsys.readouterr().out
    assert len(client.get_metric_history(result["run_id"], "train/loss")) == N_STEPS
    assert warn_unsent_spools(work) == []


def test_a_healthy_run_killed_is_closed_as_killed_with_nothing_resent(tmp_path, capsys):
    """A SQLite run killed after its calls landed: the run stays RUNNING in the store until `medseg replay` (default
    store: the workdir's, as `medseg train` picks it) closes it as KILLED; the acked calls are not sent again."""
    work = tmp_path / "work"
    uri = resolve_tracking_uri(None, {}, work)
    _run_and_kill(tmp_path, uri, work, flush=True)
    (spool,) = (work / "mlflow-offline").iterdir()
    state = inspect_spool(spool)
    assert state.interrupted and state.unsent == [] and len(state.acked) == 1 + N_STEPS  # params, epochs
    client = _client(uri)
    run_id = state.header["run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"

    assert main(["replay", str(work)]) == 0
    assert "(continued, KILLED, interrupted): sent 0 metrics, 0 params, 0 tags" in capsys.readouterr().out
    assert client.get_run(run_id).info.status == "KILLED"
    assert len(client.get_metric_history(run_id, "train/loss")) == N_STEPS


def _offline_spool(tmp_path: Path) -> Path:
    """A run against a refusing server: everything stays in the journal."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    with RunLogger(TrackingConfig(timeout_s=2.0), uri, tmp_path / "spool").start("twice", {"lr": 0.1}) as run:
        for step in range(5):
            run.log_metrics(
                {"loss": 1.0 / (step + 1), "dice": float("nan") if step == 0 else 0.1 * step}, step
            )
        notes = tmp_path / "notes.txt"
        notes.write_text("epoch log")
        run.log_artifact(notes, "logs")
    return Path(run.report()["spool_dir"])


@pytest.fixture(params=["file", "sqlite"])
def store_uri(request, tmp_path, monkeypatch) -> str:
    if request.param == "file":  # MLflow's file store stores a repeated metric value twice
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return (tmp_path / "fstore").as_uri()
    return resolve_tracking_uri(None, {}, tmp_path / "sstore")


def test_replaying_twice_keeps_one_value_per_step(tmp_path, store_uri):
    """(ii) A forced second replay resends every record into the same run; nothing is stored twice."""
    spool = _offline_spool(tmp_path)
    first = replay_offline(spool, store_uri)
    assert first["created_run"] and (first["metrics"], first["params"], first["artifacts"]) == (10, 1, 1)
    second = replay_offline(spool, store_uri, force=True)
    assert second["run_id"] == first["run_id"] and not second["created_run"]  # the run the first replay made
    assert (second["metrics"], second["skipped_metrics"], second["params"], second["skipped_params"]) == (
        0,
        10,
        0,
        1,
    )
    client = _client(store_uri)
    assert _history(client, first["run_id"], "loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    dice = sorted(client.get_metric_history(first["run_id"], "dice"), key=lambda m: m.step)
    assert [m.step for m in dice] == list(range(5)) and dice[0].value != dice[0].value  # NaN kept, once
    assert client.get_run(first["run_id"]).data.params == {"lr": "0.1"}


def test_values_that_landed_late_are_not_logged_twice(tmp_path, store_uri):
    """(b) A call given up on that reached the store anyway (its ack never written: the process died first) is in
    the run and in the journal; the replay skips the values the run already has."""
    from mlflow.entities import Metric, Param

    client = _client(store_uri)
    experiment = client.create_experiment("late")
    run_id = client.create_run(experiment, run_name="late").info.run_id
    client.log_batch(run_id, params=[Param("lr", "0.1")], synchronous=True)
    stamp = 1_700_000_000_000
    client.log_batch(
        run_id, metrics=[Metric("loss", 1.0 / (s + 1), stamp + s, s) for s in (0, 1)], synchronous=True
    )
    spool = Spool(tmp_path / "mlflow-offline" / "late", {"experiment": "late", "run_name": "late"})
    spool.open()
    spool.set_run_id(run_id)
    spool.write({"kind": "params", "params": {"lr": "0.1"}}, "params", 1)
    for s in range(4):
        record = {"kind": "metrics", "metrics": {"loss": 1.0 / (s + 1)}, "step": s, "timestamp": stamp + s}
        spool.write(record, "metrics", 1)
    spool.write({"kind": "end", "status": "FINISHED", "timestamp": stamp + 10}, "run_end", 1)
    spool.finish([])
    result = replay_offline(spool.folder, store_uri)
    assert (result["run_id"], result["created_run"], result["status"]) == (run_id, False, "FINISHED")
    assert (result["metrics"], result["skipped_metrics"], result["params"], result["skipped_params"]) == (
        2,
        2,
        0,
        1,
    )
    assert _history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(4)]
    assert client.get_run(run_id).info.end_time == stamp + 10


def test_a_healthy_run_journals_every_call_and_leaves_nothing_behind(tmp_path):
    """(iii) While the run is alive its journal holds each call and its ack (artifact copies dropped once sent);
    when the run ends with everything acked the folder goes, and the spool root the run created with it."""
    uri = resolve_tracking_uri(None, {}, tmp_path / "store")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    run = RunLogger(TrackingConfig(), uri, tmp_path / "work" / "mlflow-offline").start(
        "ok", {"lr": 0.1}, {"f": 0}
    )
    for step in range(3):
        run.log_metrics({"loss": 1.0 - 0.1 * step}, step=step)
    run.log_artifact(notes, "logs")
    assert run.flush()
    (spool,) = (tmp_path / "work" / "mlflow-offline").iterdir()
    state = inspect_spool(spool)
    assert state.owner == f"pid {os.getpid()} on {socket.gethostname()}"  # this process holds the lock
    kinds = [r["kind"] for r in state.calls]
    assert kinds == ["tags", "params", "metrics", "metrics", "metrics", "artifact"]  # create run (tags), ...
    assert state.unsent == [] and not state.interrupted
    assert not any((spool / "artifacts").iterdir())  # the copy went once the artifact was sent
    run.end()
    assert run.report()["spool_dir"] is None and not (tmp_path / "work" / "mlflow-offline").exists()
    assert _history(_client(uri), run.run_id, "loss") == [(0, 1.0), (1, 0.9), (2, 0.8)]


def test_a_spool_written_before_the_journal_is_replayed_whole(tmp_path, capsys):
    """Spools of the previous format (no seq, no lock, copies under their artifact path): all records unsent."""
    spool = tmp_path / "work" / "mlflow-offline" / "20250101T000000-old-1234abcd"
    (spool / "artifacts" / "logs").mkdir(parents=True)
    (spool / "artifacts" / "logs" / "notes.txt").write_text("old")
    records = [
        {
            "kind": "run",
            "experiment": "old",
            "run_name": "old",
            "tracking_uri": "http://user:***@x:5000",  # stored without its password: not a usable default
            "created": 1000,
        },
        {"kind": "params", "params": {"a": "1"}},
        {"kind": "metrics", "metrics": {"m": 0.5}, "step": 0, "timestamp": 2000},
        {"kind": "metrics", "metrics": {"m": 0.25}, "step": 1, "timestamp": 3000},
        {"kind": "artifact", "file": "artifacts/logs/notes.txt", "artifact_path": "logs"},
    ]
    (spool / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "met')
    assert [r["kind"] for r in read_spool(spool)] == ["run", "params", "metrics", "metrics", "artifact"]
    uri = resolve_tracking_uri(None, {}, tmp_path / "work")
    assert main(["replay", str(spool)]) == 0  # default store: the workdir's (the recorded one has no password)
    assert "sent 2 metrics, 1 params, 0 tags, 1 artifacts" in capsys.readouterr().out
    result = json.loads((spool / "replayed.json").read_text())
    client = _client(uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "KILLED" and run.info.end_time == 3000  # no end record: it was interrupted
    assert _history(client, result["run_id"], "m") == [(0, 0.5), (1, 0.25)]
    assert [a.path for a in client.list_artifacts(result["run_id"], "logs")] == ["logs/notes.txt"]
    assert inspect_spool(spool).end is None  # the torn last line was ended before the replay's records


def test_replay_command_errors(tmp_path, capsys):
    """(iv) Bad PATH: one line naming it, exit 2; a spool whose run is alive: refused, exit 2; store down: exit 1,
    nothing marked replayed."""
    sqlite = resolve_tracking_uri(None, {}, tmp_path / "store")
    missing = tmp_path / "nope"
    assert main(["replay", str(missing), "--tracking-uri", sqlite]) == 2
    err = capsys.readouterr().err
    assert err == f"medseg replay: {missing} does not exist\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["replay", str(empty), "--tracking-uri", sqlite]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"medseg replay: {empty} is neither an offline spool folder (no records.jsonl) nor a training workdir "
        "(no mlflow-offline/)"
    )

    dead = f"http://127.0.0.1:{_closed_port()}"
    live = RunLogger(TrackingConfig(timeout_s=2.0), dead, tmp_path / "work" / "mlflow-offline").start("live")
    live.log_metrics({"m": 1.0}, step=0)
    try:
        assert live.offline
        spool = Path(live.report()["spool_dir"])
        assert main(["replay", str(spool), "--tracking-uri", sqlite]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err.startswith(f"medseg replay: {spool} is in use by pid {os.getpid()} on ") and "\n" not in err
        )
        # in a workdir: listed as in use, not a failure (a training in progress there is no reason for exit 1)
        assert main(["replay", str(tmp_path / "work"), "--tracking-uri", sqlite]) == 0
        assert capsys.readouterr().out == f"{spool}: in use: its run (pid {os.getpid()} on {socket.gethostname()}) is still running: not replayed\n"
    finally:
        live.end()
    journal = (spool / "records.jsonl").read_text()
    down = f"http://127.0.0.1:{_closed_port()}"
    assert main(["replay", str(spool), "--tracking-uri", down]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg replay: cannot replay {spool}: ") and "\n" not in err
    assert not (spool / "replayed.json").exists() and (spool / "records.jsonl").read_text() == journal

    outside = tmp_path / "elsewhere"
    spool.rename(outside)
    assert main(["replay", str(outside)]) == 1  # no URI given: the run's own store, still down
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg replay: cannot replay {outside}: no answer from http://127.0.0.1:")
    records = [json.loads(line) for line in (outside / "records.jsonl").read_text().splitlines()]
    for record in records:  # a URI stored without its password names no usable store
        if "tracking_uri" in record:
            record["tracking_uri"] = "http://user:***@127.0.0.1:1"
    (outside / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["replay", str(outside)]) == 2  # no workdir, no URI: which store is unknown
    assert "names no store a replay can log in to: name it with --tracking-uri" in capsys.readouterr().err
    assert main(["replay", str(outside), "--tracking-uri", sqlite]) == 0
    assert main(["replay", str(outside), "--tracking-uri", sqlite]) == 2
    assert "was already replayed into run" in capsys.readouterr().err


def test_train_warns_about_interrupted_spools(tmp_path, caplog):
    """`medseg train` (train_and_register) names the interrupted spools of its workdir once, and sends nothing."""
    from medseg.synthetic.dataset import write_perfusion_dataset
    from medseg.workflows import train_and_register

    work = tmp_path / "work"
    spool = work / "mlflow-offline" / "20250101T000000-killed-0000abcd"
    spool.mkdir(parents=True)
    (spool / "records.jsonl").write_text(json.dumps({"kind": "run", "run_name": "killed"}) + "\n")
    data = write_perfusion_dataset(tmp_path / "data", 3, shape=(16, 16, 8))
    tiny = [
        "train.epochs=1", "network.features=[4,8,16]", "train.patch_size=[16,16,8]", "train.num_workers=0",
        "train.batch_size=1", "train.samples_per_case=1", "tracking.enabled=false", "tracking.registered_model=null",
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="medseg"):
        train_and_register("configs/demo.yaml", work, tracking_uri="", datalist=data, overrides=tiny)
    warnings = [r.getMessage() for r in caplog.records if "medseg replay" in r.getMessage()]
    assert warnings == [
        f"tracking: 1 interrupted run(s) ({spool.name}) in {work / 'mlflow-offline'} were not sent to MLflow; "
        f"send them with `medseg replay {work}`"
    ]
    assert not (spool / "replayed.json").exists()


def _worker(started) -> None:
    started.set()
    time.sleep(30)


def test_the_lock_dies_with_the_runs_process_not_with_forked_workers(tmp_path):
    """Data loader workers forked by the run drop their copy of the lock: a killed run's spool is not kept 'alive'
    by orphaned workers."""
    import multiprocessing

    spool = Spool(tmp_path / "mlflow-offline" / "run", {"run_name": "run"})
    spool.open()
    context = multiprocessing.get_context("fork")
    started = context.Event()
    worker = context.Process(target=_worker, args=(started,))
    worker.start()
    try:
        assert started.wait(10)  # past the fork hooks: running its own code
        assert inspect_spool(spool.folder).owner is not None
        spool._release()  # what the kernel does when the run's process dies
        assert inspect_spool(spool.folder).owner is None and worker.is_alive()
    finally:
        worker.kill()
        worker.join(10)


def test_replay_sends_to_the_store_the_workdir_trained_with(tmp_path, monkeypatch, capsys):
    """``medseg replay WORKDIR`` of a spool whose recorded store is unusable (stored without its password) picks the
    store as ``medseg train`` did: the flag, else the workdir config's ``tracking.uri``, else MLFLOW_TRACKING_URI,
    else the workdir's embedded SQLite store."""
    import yaml

    from medseg.config import load_config, to_dict

    work = tmp_path / "work"
    config = to_dict(load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"))
    uris = {name: f"sqlite:///{(tmp_path / f'{name}.db').as_posix()}" for name in ("env", "configured", "flag")}
    uris["embedded"] = resolve_tracking_uri(None, {}, work)

    def replay(*extra: str) -> set[str]:
        """Replay a fresh spool (a redacted recorded URI); the stores that hold a run afterwards."""
        folder = work / "mlflow-offline" / f"s{len(list((work / 'mlflow-offline').glob('s*')))}"
        header = {"kind": "run", "experiment": "e", "run_name": "r", "tracking_uri": "http://u:***@127.0.0.1:1"}
        _write_spool(folder, [header, {"kind": "metrics", "metrics": {"m": 1.0}, "step": 0, "timestamp": 1}])
        assert main(["replay", str(work), *extra]) == 0
        assert f"{folder}: run " in capsys.readouterr().out
        return json.loads((folder / "replayed.json").read_text())["tracking_uri"]

    (work / "mlflow-offline").mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    assert replay() == uris["embedded"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uris["env"])
    assert replay() == uris["env"]
    config["tracking"]["uri"] = uris["configured"]
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    assert replay() == uris["configured"]
    assert replay("--tracking-uri", uris["flag"]) == uris["flag"]
    for name in ("env", "configured", "flag"):
        assert len(_client(uris[name]).search_runs([_client(uris[name]).get_experiment_by_name("e").experiment_id])) == 1


def test_replay_defaults_to_the_store_the_run_was_tracked_at(tmp_path, capsys, monkeypatch):
    """Without --tracking-uri a spool goes back to the store its run was tracked at (recorded in its header), not
    to the workdir's embedded store or MLFLOW_TRACKING_URI; --tracking-uri still overrides it."""
    elsewhere = f"sqlite:///{(tmp_path / 'server' / 'mlruns.db').as_posix()}"
    (tmp_path / "server").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(tmp_path / 'env.db').as_posix()}")
    spools = []
    for name in ("20250101T000000-a-00000001", "20250101T000000-b-00000002"):
        spool = tmp_path / "work" / "mlflow-offline" / name
        spool.mkdir(parents=True)
        header = {"kind": "run", "experiment": "e", "run_name": name, "tracking_uri": elsewhere, "created": 1}
        metric = {"kind": "metrics", "metrics": {"m": 1.0}, "step": 0, "timestamp": 2}
        (spool / "records.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(metric) + "\n")
        spools.append(spool)
    other = resolve_tracking_uri(None, {}, tmp_path / "other")
    assert main(["replay", str(spools[1]), "--tracking-uri", other]) == 0
    assert main(["replay", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "the run was tracked at" in out[0] and "tracked at" not in out[1]
    assert len(_client(elsewhere).search_runs(["0"] + [e.experiment_id for e in _client(elsewhere).search_experiments()])) == 1
    assert not (tmp_path / "env.db").exists() and not (tmp_path / "work" / "mlruns.db").exists()


def _write_spool(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_call_the_store_rejects_is_recorded_and_later_spools_are_still_replayed(tmp_path, capsys):
    """A changed parameter value (INVALID_PARAMETER_VALUE: no replay could ever send it) is acked with the reason and
    the rest of its spool lands; in a workdir an unreadable spool is its own line and the next spools are replayed."""
    work = tmp_path / "work"
    uri = resolve_tracking_uri(None, {}, work)
    bad = work / "mlflow-offline" / "20250101T000000-bad-00000000"
    bad.mkdir(parents=True)
    (bad / "records.jsonl").write_bytes(b"\xff\xfe not a journal\n")
    with RunLogger(TrackingConfig(), uri, work / "mlflow-offline").start("p", {"lr": 0.1}) as run:
        run.log_params({"lr": 0.2})  # rejected by the store: kept for a replay
        run.log_metrics({"m": 1.0}, 0)
    spool = Path(run.report()["spool_dir"])
    later = _write_spool(
        work / "mlflow-offline" / "29990101T000000-later-00000001",
        [{"kind": "run", "run_name": "later", "tracking_uri": uri, "created": 1},
         {"kind": "metrics", "metrics": {"x": 2.0}, "step": 0, "timestamp": 2, "seq": 1}],
    )  # fmt: skip
    assert main(["replay", str(work)]) == 1  # the unreadable spool failed; the others were replayed
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].startswith(f"{bad}: skipped: ") and "cannot be read" in out[0]
    assert out[1].startswith(f"{spool}: run {run.run_id} (continued, FINISHED)")
    assert out[1].endswith("sent 0 metrics, 0 params, 0 tags, 0 artifacts; 1 rejected by the store")
    assert out[2].startswith(f"{later}: run ") and "sent 1 metrics" in out[2]
    acks = [json.loads(line) for line in (spool / "records.jsonl").read_text().splitlines()]
    rejected = [a for a in acks if a["kind"] == "ack" and "rejected" in a]
    assert len(rejected) == 1 and rejected[0]["rejected"].startswith("INVALID_PARAMETER_VALUE: Changing param")
    assert inspect_spool(spool).unsent == [] and (spool / "replayed.json").is_file()
    assert _client(uri).get_run(run.run_id).data.params == {"lr": "0.1"}
    assert main(["replay", str(work)]) == 1 and len(capsys.readouterr().out.splitlines()) == 1  # only the bad one


ENOSPC_CHILD = r"""
import json, logging, os, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
from medseg.tracking import RunLogger, TrackingConfig
from medseg.tracking.journal import _HELD_LOCKS
tmp, uri = Path(sys.argv[1]), sys.argv[2]
png = tmp / "qc.png"; png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100000)
run = RunLogger(TrackingConfig(timeout_s=2.0), uri, tmp / "mlflow-offline").start("full")
run.log_metrics({"m": 0.0}, 0)
assert run.offline
journal = next((tmp / "mlflow-offline").iterdir()) / "records.jsonl"
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (journal.stat().st_size + 10, hard))  # the disk fills up
run.log_metrics({"m": 1.0}, 1)
run.log_image(png)  # its copy fails: counted as lost, not raised
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is freed
run.log_metrics({"m": 2.0}, 2)
resource.setrlimit(resource.RLIMIT_FSIZE, (journal.stat().st_size + 10, hard))  # full again until the end
run.log_metrics({"m": 3.0}, 3)
run.end()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print(json.dumps({"state": run._spool._state, "locks": sorted(_HELD_LOCKS), "lock_fd": run._spool._lock_fd,
                  "lost": run.report()["lost"], "journal": str(journal)}))
"""


def test_a_full_disk_never_raises_into_training_nor_duplicates_a_record(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the run ends normally (lock released, spool closed), the failed records
    are counted as lost, and the journal never holds two calls with one seq (nothing buffered comes back later)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    args = [sys.executable, "-c", ENOSPC_CHILD, str(tmp_path), f"http://127.0.0.1:{_closed_port()}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["state"] == "closed" and report["locks"] == [] and report["lock_fd"] is None
    assert report["lost"] == {"metrics": 2, "artifacts": 1, "run_end": 1}
    assert "Traceback" not in done.stderr
    calls = [r for r in read_spool(Path(report["journal"]).parent)[1:]]
    assert [(r["seq"], r["step"]) for r in calls] == [(1, 0), (2, 2)]


def test_replay_does_not_kill_a_run_that_finished(tmp_path):
    """A spool without end record (old format, or its end's ack was lost) whose run the store has as FINISHED keeps
    that status; only a run still RUNNING in the store is closed as KILLED."""
    uri = resolve_tracking_uri(None, {}, tmp_path / "store")
    client = _client(uri)
    experiment = client.create_experiment("e")
    run_id = client.create_run(experiment, run_name="r").info.run_id
    client.set_terminated(run_id, "FINISHED", end_time=5000)
    running = client.create_run(experiment, run_name="k").info.run_id
    for name, rid in (("done", run_id), ("alive", running)):
        _write_spool(
            tmp_path / name,
            [{"kind": "run", "experiment": "e", "run_name": "r", "tracking_uri": uri, "run_id": rid},
             {"kind": "metrics", "metrics": {"m": 1.0}, "step": 3, "timestamp": 4000}],
        )  # fmt: skip
    assert replay_offline(tmp_path / "done", uri)["status"] == "FINISHED"
    assert (client.get_run(run_id).info.status, client.get_run(run_id).info.end_time) == ("FINISHED", 5000)
    assert _history(client, run_id, "m") == [(3, 1.0)]
    assert replay_offline(tmp_path / "alive", uri)["status"] == "KILLED"
    assert (client.get_run(running).info.status, client.get_run(running).info.end_time) == ("KILLED", 4000)


def test_a_relative_store_uri_is_recorded_absolute(tmp_path, monkeypatch, capsys):
    """The header names the store absolutely (a replay from another directory sends to the same database); an old
    spool with a relative URI is not sent to a database relative to the replay's directory."""
    from medseg.tracking.store import absolute_uri

    (tmp_path / "proj").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    dead = f"http://127.0.0.1:{_closed_port()}"
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{(tmp_path / 'proj' / 'mlflow.db').as_posix()}"
    assert absolute_uri("file:mlruns") == (tmp_path / "proj" / "mlruns").as_uri()
    assert absolute_uri("mlruns") == (tmp_path / "proj" / "mlruns").as_posix()
    assert absolute_uri(dead) == dead and absolute_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    with RunLogger(TrackingConfig(), "sqlite:///mlflow.db", tmp_path / "work" / "mlflow-offline").start("r") as run:
        spool = Path(run._spool.folder)
        assert inspect_spool(spool).header["tracking_uri"] == f"sqlite:///{(tmp_path / 'proj' / 'mlflow.db').as_posix()}"
    old = _write_spool(
        tmp_path / "work" / "mlflow-offline" / "old",
        [{"kind": "run", "run_name": "r", "tracking_uri": "sqlite:///mlflow.db"},
         {"kind": "metrics", "metrics": {"m": 1.0}, "step": 0, "timestamp": 1, "seq": 1}],
    )  # fmt: skip
    monkeypatch.chdir(tmp_path / "home")
    assert main(["replay", str(old)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.db")) == [
        "proj/mlflow.db", "work/mlruns.db"
    ]  # the workdir's store, as `medseg train` would pick it; nothing created in home/


def test_a_file_system_without_flock_keeps_the_journal_and_tells_live_runs_by_pid(tmp_path, monkeypatch, capsys):
    """flock answering ENOSYS (Lustre without -o flock): the journal works unlocked; a replay refuses a spool whose
    process lives on this host, replays one whose process is gone, and one of another host only with --force."""
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    sqlite = resolve_tracking_uri(None, {}, tmp_path / "store")
    dead = f"http://127.0.0.1:{_closed_port()}"
    run = RunLogger(TrackingConfig(timeout_s=2.0), dead, tmp_path / "work" / "mlflow-offline").start("r", {"a": 1})
    run.log_metrics({"m": 1.0}, 0)
    assert run.offline
    spool = Path(run.report()["spool_dir"])
    assert main(["replay", str(spool), "--tracking-uri", sqlite]) == 2
    assert "its run (pid" in capsys.readouterr().err
    run.end()
    assert run.report()["lost"] == {} and run.report()["not_logged"] == {"params": 1, "metrics": 1, "run_end": 1}
    assert main(["replay", str(spool), "--tracking-uri", sqlite]) == 0  # ended: its end record says so
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    metric = {"kind": "metrics", "metrics": {"m": 1.0}, "step": 0, "timestamp": 1, "seq": 1}
    killed = _write_spool(tmp_path / "killed", [{"kind": "run", "run_name": "k", "pid": int(gone.stdout),
                                                 "host": socket.gethostname()}, metric])  # fmt: skip
    (killed / "owner.lock").touch()
    assert main(["replay", str(killed), "--tracking-uri", sqlite]) == 0
    assert "KILLED, interrupted" in capsys.readouterr().out
    other = _write_spool(tmp_path / "other", [{"kind": "run", "run_name": "o", "pid": 1, "host": "elsewhere"}, metric])
    (other / "owner.lock").touch()
    assert main(["replay", str(other), "--tracking-uri", sqlite]) == 2
    err = capsys.readouterr().err
    assert "pid 1 on elsewhere" in err and "--force" in err and "\n" not in err.strip()
    assert main(["replay", str(other), "--tracking-uri", sqlite, "--force"]) == 0


def test_an_ack_arriving_after_finish_is_written_and_not_replayed(tmp_path):
    """A call given up on that lands after the run ended (the process still lives): its ack reaches the journal, its
    artifact copy is dropped, and a replay has nothing left to send."""
    spool = Spool(tmp_path / "mlflow-offline" / "x", {"run_name": "x"})
    spool.open()
    slot = spool.new_slot()
    (slot / "a.txt").write_text("a")
    record = {"kind": "artifact", "file": f"artifacts/{slot.name}/a.txt", "artifact_path": None, "files": 1}
    seq = spool.write(record, "artifacts", 1)
    spool.keep(seq, record, "artifacts", 1)
    spool.finish(["timed out"])
    assert inspect_spool(spool.folder).unsent == [{**record, "seq": seq}]
    spool.ack(seq, late=True)
    state = inspect_spool(spool.folder)
    assert state.acked == {seq} and state.unsent == [] and not slot.exists()
    assert {"kind": "ack", "seq": seq, "late": True} in [json.loads(x) for x in (spool.folder / "records.jsonl").read_text().splitlines()]


def test_a_store_down_fails_each_spool_of_a_workdir_and_marks_none(tmp_path, capsys):
    """In a workdir, a store that does not answer is each spool's line (exit 1); nothing is sent or marked."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    folders = [
        _write_spool(tmp_path / "work" / "mlflow-offline" / name,
                     [{"kind": "run", "run_name": name, "tracking_uri": dead},
                      {"kind": "metrics", "metrics": {"m": 1.0}, "step": 0, "timestamp": 1, "seq": 1}])
        for name in ("a", "b")
    ]  # fmt: skip
    journals = [(f / "records.jsonl").read_text() for f in folders]
    assert main(["replay", str(tmp_path / "work")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": skipped: cannot replay ")[0] for line in out] == [str(f) for f in folders]
    assert [(f / "records.jsonl").read_text() for f in folders] == journals
    assert not any((f / "replayed.json").exists() for f in folders)
