"""Scaling out archive segmentation: one device per worker, the shared work queue, worker loss, Ray actors."""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from test_batch_support import (
    NAME_KEY,
    ThresholdNet,
    register_threshold,
    save_threshold_checkpoint,
    threshold_spec,
    write_archive,
)

from medseg.atomic import TEMP_PREFIX
from medseg.batch import LEDGER_FILE, ScaleOut, Status, discover, segment_archive
from medseg.batch.cluster import check_device, parse_ray, plan_actors
from medseg.batch.devices import worker_devices
from medseg.batch.ledger import Ledger
from medseg.batch.process import RunContext
from medseg.batch.publish import sha256_file
from medseg.batch.workers import ModelSource, run_in_workers
from medseg.cli import main as cli_main
from medseg.errors import ConfigError
from medseg.inference.options import InferenceOptions
from medseg.nets.registry import NETWORKS
from medseg.synthetic.dataset import write_ct_study

TESTS = str(Path(__file__).resolve().parent)
FORMATS = ("nifti", "report")


# ---------------------------------------------------------------------------------------------- device assignment
def test_cuda_spreads_workers_over_the_visible_gpus():
    assert worker_devices("cuda", 5, cuda_count=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("auto", 4, cuda_count=3) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert worker_devices("auto", 3, cuda_count=0) == ["cpu", "cpu", "cpu"]
    assert worker_devices("cpu", 2, cuda_count=4) == ["cpu", "cpu"]
    assert worker_devices("cuda:1", 2, cuda_count=2) == ["cuda:1", "cuda:1"]


def test_a_device_list_pins_workers_in_turn_and_may_be_longer_than_the_workers():
    assert worker_devices("cuda:0,cuda:2", 3, cuda_count=4) == ["cuda:0", "cuda:2", "cuda:0"]
    assert worker_devices(" CUDA:3 , cuda:1,cuda:0", 2, cuda_count=4) == ["cuda:3", "cuda:1"]
    assert worker_devices("cuda:0,cpu", 2, cuda_count=1) == ["cuda:0", "cpu"]


@pytest.mark.parametrize(
    ("device", "count", "message"),
    [
        ("gpu0", 2, "device 'gpu0' is not a device"),
        ("cuda:0,cuda:x", 2, "device 'cuda:x' is not a device"),
        ("cuda:0,,cuda:1", 2, "device '' is not a device"),
        ("cuda:3", 2, "device 'cuda:3' is not visible on this machine (2 CUDA device(s))"),
        ("cuda:0,cuda:2", 2, "device 'cuda:2' is not visible"),
        ("cuda", 0, "device 'cuda': no CUDA device is visible"),
        ("cuda,cuda:1", 2, "name each GPU (cuda:N) in a list"),
    ],
)
def test_bad_devices_are_named(device, count, message):
    with pytest.raises(ConfigError) as exc:
        worker_devices(device, 2, cuda_count=count)
    assert message in str(exc.value)


def test_cli_names_a_bad_device_in_one_line(tmp_path, capsys, monkeypatch):
    archive = write_archive(tmp_path / "in", n_good=1, bad=False)
    ckpt = save_threshold_checkpoint(tmp_path / "m.pt")
    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)
    argv = ["segment", str(archive.root), str(tmp_path / "out"), "--model", str(ckpt), "--no-progress"]
    assert cli_main([*argv, "--workers", "2", "--device", "cuda:0,tpu:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "device 'tpu:1' is not a device" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_ray_targets_and_actor_plans():
    assert parse_ray("local") == parse_ray("local") and parse_ray("local").address is None
    assert parse_ray("local:3").cpus == 3 and parse_ray("auto").address == "auto"
    assert parse_ray("ray://head:10001").address == "ray://head:10001"
    with pytest.raises(ConfigError, match="N must be >= 1"):
        parse_ray("local:0")
    gpu = plan_actors("auto", None, cluster_gpus=4, cluster_cpus=32, min_node_cpus=16)
    assert (gpu.actors, gpu.gpus, gpu.cpus, gpu.device) == (4, 1, 1, "cuda")
    cpu = plan_actors("cpu", None, cluster_gpus=4, cluster_cpus=32, min_node_cpus=16)
    assert (cpu.actors, cpu.gpus, cpu.cpus, cpu.device) == (32, 0, 1, "cpu")
    capped = plan_actors("auto", 3, cluster_gpus=0, cluster_cpus=24, min_node_cpus=4)
    assert (capped.actors, capped.cpus) == (3, 4)  # 8 CPUs each would not fit on the 4-CPU nodes
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        plan_actors("cuda", None, cluster_gpus=0, cluster_cpus=8, min_node_cpus=8)
    with pytest.raises(ConfigError, match="each actor gets its own GPU from Ray"):
        check_device("cuda:0,cuda:1")


def test_ray_missing_gives_one_line_saying_how_to_install(tmp_path, capsys, monkeypatch):
    archive = write_archive(tmp_path / "in", n_good=1, bad=False)
    monkeypatch.setitem(
        sys.modules, "ray", None
    )  # as if Ray were not installed: `import ray` raises ImportError
    argv = ["segment", str(archive.root), str(tmp_path / "out"), "--model", "m.pt", "--ray", "local:2"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'medseg[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- local work queue
def _ledger_rows(out: Path) -> dict[str, tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT key, status, attempts, error, output, checksums FROM items").fetchall()
    return {r[0]: r[1:] for r in rows}


def _run_queue(root: Path, out: Path, ckpt: Path, workers: int, on_outcome=None) -> list:
    """``run_in_workers`` on every item under ``root`` (the runner's set-up, without its reports)."""
    found = discover(root, threshold_spec().contract.channels, NAME_KEY)
    out.mkdir()
    outcomes = []
    with Ledger.open(out / LEDGER_FILE) as ledger:
        run_id = ledger.begin_run("test", {})
        ledger.sync(((it.key, it.kind.value, None) for it in found.items), run_id)
        ctx = RunContext(found.root, out, ("nifti",), {}, NAME_KEY, _dt.datetime(2024, 1, 1))
        model = ModelSource(str(ckpt), None, InferenceOptions(device="cpu"))

        def record(outcome):
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

        run_in_workers(found.items, model, ctx, ledger, workers, record, setup=register_threshold)
    return outcomes


@pytest.mark.slow  # two spawned workers import torch and MONAI afresh
def test_one_slow_study_holds_one_worker_while_the_other_does_the_rest(tmp_path, monkeypatch):
    root = tmp_path / "in"
    for i in range(8):
        write_ct_study(root / f"s{i}", shape=(24, 24, 12), seed=i, n_organs=1)
    # 5 x 5 x 3 sliding windows instead of 2 x 2 x 1: about 15x the forward passes of a small study
    write_ct_study(root / "big", shape=(48, 48, 30), seed=99, n_organs=1)
    ckpt = save_threshold_checkpoint(tmp_path / "m.pt", delay_s=0.06)
    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)
    outcomes = _run_queue(root, tmp_path / "out", ckpt, workers=2)

    assert sorted(o.status.value for o in outcomes) == ["DONE"] * 9
    assert len({o.key for o in outcomes}) == 9  # every study once
    per_worker = collections.Counter(o.worker for o in outcomes)
    items = discover(root, threshold_spec().contract.channels, NAME_KEY).items
    big_key = next(it.key for it in items if Path(it.relative_path).parts[0] == "big")
    slow = next(o.worker for o in outcomes if o.key == big_key)
    other = next(w for w in per_worker if w != slow)
    # the big study goes out first; while it is computed the other worker takes the rest (a static split: 5 / 4)
    assert per_worker[slow] <= 3 and per_worker[other] >= 6, per_worker
    assert all(r[1] == 1 for r in _ledger_rows(tmp_path / "out").values())  # one attempt each


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_item_and_the_others_go_on(tmp_path, monkeypatch):
    archive = write_archive(tmp_path / "in", n_good=8, bad=False)
    ckpt = save_threshold_checkpoint(tmp_path / "m.pt", delay_s=0.25)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one(outcome):  # the worker that reported first, a moment later: in the middle of its next item
        if killed:
            return
        import multiprocessing as mp

        victim = next(p for p in mp.active_children() if p.name == f"medseg-batch-{outcome.worker}")
        killed.append(victim.pid)
        # from a timer thread: the parent must go on answering the workers (the victim asks for its next item first)
        threading.Timer(0.25, os.kill, (victim.pid, signal.SIGKILL)).start()

    outcomes = _run_queue(archive.root, out, ckpt, workers=2, on_outcome=kill_one)
    rows = _ledger_rows(out)
    statuses = collections.Counter(r[0] for r in rows.values())
    assert killed and statuses == {"DONE": 7, "FAILED": 1}, statuses
    failed = next(k for k, r in rows.items() if r[0] == "FAILED")
    assert "WorkerLost" in rows[failed][2] and rows[failed][1] == 1
    assert all(r[1] == 1 for r in rows.values())  # nothing handed out twice
    assert len(outcomes) == 8 and len({o.key for o in outcomes}) == 8
    assert not [p.name for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]  # no partial case left

    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)  # the rerun (one process) loads the model here
    summary = segment_archive(
        archive.root,
        out,
        str(ckpt),
        InferenceOptions(device="cpu"),
        formats=("nifti",),
        progress=False,
        name_key=NAME_KEY,
    )
    assert summary.counts()["DONE"] == 8 and summary.processed == 1 and summary.already_done == 7
    assert _ledger_rows(out)[failed][1] == 2  # retried once, by the rerun


# ---------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medseg[ray]')")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": TESTS}
        },  # actors import test_batch_support (register_threshold)
    )
    yield ray
    ray.shutdown()


def _labels(out: Path, rows: dict[str, tuple]) -> dict[str, str]:
    return {k: sha256_file(out / r[3] / "label.nii.gz") for k, r in rows.items() if r[0] == "DONE"}


@pytest.mark.slow
def test_ray_actors_segment_the_archive_like_one_process_and_survive_a_killed_actor(
    tmp_path, ray_cluster, monkeypatch
):
    from medseg.batch.cluster import ACTOR_PREFIX

    ray = ray_cluster
    archive = write_archive(tmp_path / "in", n_good=17)
    ckpt = save_threshold_checkpoint(tmp_path / "m.pt", delay_s=0.15)
    monkeypatch.setitem(NETWORKS, "threshold", ThresholdNet)  # the driver loads the model for its spec
    common = dict(formats=FORMATS, progress=False, name_key=NAME_KEY)
    single = segment_archive(
        archive.root, tmp_path / "single", str(ckpt), InferenceOptions(device="cpu"), **common
    )
    assert single.counts()["DONE"] == 17

    out = tmp_path / "ray"
    killed: list[str] = []

    def kill_an_actor_mid_run():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if sum(r[0] == "DONE" for r in _ledger_rows(out).values()) >= 3:
                    names = sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))
                    ray.kill(ray.get_actor(names[0]))
                    killed.append(names[0])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_an_actor_mid_run, daemon=True)
    killer.start()
    scale = ScaleOut(ray="local:2", worker_setup=register_threshold)
    summary = segment_archive(
        archive.root, out, str(ckpt), InferenceOptions(device="cpu"), scale=scale, **common
    )
    killer.join(timeout=5)

    assert killed, "the actor was not killed during the run"
    assert summary.counts() == {"DONE": 17, "QUARANTINED": 3, "FAILED": 0, "PENDING": 0}
    rows = _ledger_rows(out)
    quarantined = sorted(r[0] for r in rows.values() if r[0] == "QUARANTINED")
    assert len(quarantined) == 3
    attempts = sorted(r[1] for r in rows.values() if r[0] == "DONE")
    assert attempts == [1] * 16 + [2]  # the study lost with its actor was computed again, no other twice
    assert not [p.name for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]  # no partial case left
    assert _labels(out, rows) == _labels(tmp_path / "single", _ledger_rows(tmp_path / "single"))
    for key, r in rows.items():  # every published file is the one the ledger recorded
        if r[0] == "DONE":
            assert {n: sha256_file(out / r[3] / n) for n in json.loads(r[4])} == json.loads(r[4]), key

    # a rerun resumes from the ledger: only the study whose outputs went missing is computed again
    gone = sorted(k for k, r in rows.items() if r[0] == "DONE")[0]
    shutil.rmtree(out / gone)
    again = segment_archive(
        archive.root, out, str(ckpt), InferenceOptions(device="cpu"), scale=scale, **common
    )
    assert again.processed == 1 and again.already_done == 16 and again.counts()["DONE"] == 17
    assert _labels(out, _ledger_rows(out)) == _labels(tmp_path / "single", _ledger_rows(tmp_path / "single"))
    assert Status.DONE.value == _ledger_rows(out)[gone][0]
