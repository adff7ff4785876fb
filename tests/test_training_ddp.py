"""Data-parallel training (DDP, Gloo on CPU): sharding, agreement with one process, kill + resume, rank failure.

The strong check: 2 ranks with ``batch_size`` 1 see, step by step, the samples of 1 process with ``batch_size`` 2
(same seed; :func:`medseg.training.data.shard_order`, per-item augmentation seeds), and DDP averages the ranks'
gradients; with a loss that is a mean over samples and instance norm, the runs differ only by float reassociation
(batch of 2 in one convolution vs 2 batches of 1, and the gradient all-reduce): measured here ~1e-7 in the loss,
~1e-6 in the weights. The tolerances (1e-5 relative on the loss, 1e-4 on weights and Dice) leave room for that
and nothing else: a different sample order or augmentation changes the loss in the 2nd or 3rd digit.

The runs go through the real command (``medseg train --nproc 2`` -> torchrun -> ``python -m medseg.train``); a
``sitecustomize`` on the ranks' PYTHONPATH stops them at a chosen step (to kill them there) or makes one fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.cli import _train_rank_args, build_parser
from medseg.config import to_dict
from medseg.launch import launched_by_torchrun, torchrun_command
from medseg.nets import build_network
from medseg.nets.registry import NETWORKS
from medseg.training import train
from medseg.training.data import SeededItems, shard_order
from medseg.training.distributed import LOCAL

HOOK = """
import json, os, time
spec = os.environ.get("MEDSEG_TEST_DDP_HOOK")
if spec and "RANK" in os.environ:
    from pathlib import Path
    from medseg.training.loop import Trainer
    cfg, rank, original, original_fit = json.loads(spec), int(os.environ["RANK"]), Trainer.train_step, Trainer.fit

    def step(self, batch, epoch, index):
        out = original(self, batch, epoch, index)
        Path(cfg["markers"], f"rank{rank}_step_{epoch}_{index}").write_text(str(os.getpid()))
        if cfg.get("fail") == [rank, epoch, index]:
            raise RuntimeError(f"injected failure on rank {rank}")
        if cfg.get("block") == [epoch, index]:
            time.sleep(600)
        return out

    def fit(self):
        time.sleep(cfg.get("late_start", {}).get(str(rank), 0))  # this rank's clock starts late
        return original_fit(self)

    Trainer.train_step, Trainer.fit = step, fit
"""
GLOBAL_BATCH = 2


def _config(batch_size: int):
    return tiny_config(
        network={"deep_supervision": True},
        # fp32: the 1-process and 2-process runs are compared to float rounding (bf16 rounds each step's sums
        # differently when the batch is split across ranks)
        train={"epochs": 3, "batch_size": batch_size, "samples_per_case": 2, "precision": "fp32"},
        tracking={"registered_model": "tiny-ddp"},
    )


def _command(config: Path, dataset: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medseg.cli", "train", "--nproc", "2", "--config", str(config), "--datalist",
            str(dataset), "--workdir", str(work), "--quiet", *extra]  # fmt: skip


def _env(tmp_path: Path, **hook) -> dict[str, str]:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), *filter(None, [env.get("PYTHONPATH")])])
    if hook:
        env["MEDSEG_TEST_DDP_HOOK"] = json.dumps(hook)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a launch to its end; on timeout kill its process group (the ranks follow their launcher)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the launch did not end within {timeout} s (a rank waiting in a collective?)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _client(work: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlruns.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ---------------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("n, world", [(8, 2), (7, 2), (5, 3), (1, 2), (6, 1)])
def test_shards_are_disjoint_equal_and_cover_the_epoch(n, world):
    shards = [shard_order(n, shuffle=True, seed=3, epoch=4, rank=r, world_size=world) for r in range(world)]
    single = shard_order(n, shuffle=True, seed=3, epoch=4)
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    assert len(shards[0]) == -(-n // world)
    merged = [shards[k % world][k // world] for k in range(world * len(shards[0]))]
    assert merged[:n] == single and sorted(single) == list(range(n))
    if n % world == 0:  # no padding: disjoint shares
        assert sorted(i for s in shards for i in s) == list(range(n))
    assert shards[0] == shard_order(n, shuffle=True, seed=3, epoch=4, rank=0, world_size=world)  # replayable
    assert single != shard_order(n, shuffle=True, seed=3, epoch=5) or n < 3


def test_rank_batches_together_are_the_single_process_batch():
    n, world, batch = 12, 3, 2
    single = shard_order(n, shuffle=True, seed=0, epoch=1)
    shards = [shard_order(n, shuffle=True, seed=0, epoch=1, rank=r, world_size=world) for r in range(world)]
    for k in range(n // (batch * world)):
        ranks = sorted(i for s in shards for i in s[k * batch:(k + 1) * batch])
        assert ranks == sorted(single[k * batch * world:(k + 1) * batch * world])
    with pytest.raises(ValueError, match="rank 2 is not in"):
        shard_order(4, shuffle=False, seed=0, epoch=0, rank=2, world_size=2)


def test_an_item_is_augmented_the_same_whoever_draws_it():
    from monai.data import Dataset
    from monai.transforms import Compose, RandGaussianNoised

    ds = Dataset([{"x": torch.zeros(1, 4, 4)} for _ in range(3)], Compose([RandGaussianNoised("x", prob=1.0)]))
    a = SeededItems(ds, seed=1, epoch=2)
    first = [a[i]["x"] for i in (0, 1, 2)]
    again = [a[i]["x"] for i in (2, 0, 1)]  # another order, as another rank or worker would draw them
    assert torch.equal(first[0], again[1]) and torch.equal(first[2], again[0])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], SeededItems(ds, seed=1, epoch=3)[0]["x"])


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_every_parameter_takes_part_in_training(name, deep_supervision):
    """DistributedDataParallel runs with find_unused_parameters=False: a parameter without a gradient in a
    training step would make it fail at the next step."""
    model = build_network(name, spatial_dims=3, in_channels=2, out_channels=2, features=[4, 8, 16],
                          deep_supervision=deep_supervision).train()
    out = model(torch.randn(2, 2, 16, 16, 8))
    sum(o.float().mean() for o in (out if isinstance(out, list | tuple) else [out])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_rank_command_and_arguments():
    args = build_parser().parse_args(
        ["-vv", "train", "--config", "c.yaml", "--set", "train.epochs=3", "--set", "name=x", "--resume",
         "--workdir", "w", "--nproc", "4", "--no-register"]
    )  # fmt: skip
    rank_args = _train_rank_args(args)
    assert "--nproc" not in rank_args
    again = build_parser().parse_args(["-vv", "train", *[a for a in rank_args if a != "-v"]])
    for key in ("config", "set", "resume", "workdir", "no_register", "quiet", "datalist", "plan", "tracking_uri"):
        assert getattr(again, key) == getattr(args, key), key
    assert rank_args.count("-v") == 2
    cmd = torchrun_command(4, rank_args, python="py")
    assert cmd[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "--max-restarts=0"]
    assert cmd[6:8] == ["-m", "medseg.train"] and cmd[8:] == rank_args
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        torchrun_command(0, [])
    assert not launched_by_torchrun({"RANK": "0"})
    assert launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"})
    assert (LOCAL.mean(2.5), LOCAL.from_main("x"), LOCAL.is_main, LOCAL.active) == (2.5, "x", True, False)


def test_nproc_under_torchrun_must_match(monkeypatch, capsys, tmp_path):
    from medseg.cli import main

    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--nproc", "3"]) == 2
    assert "leave --nproc out" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--nproc", "0"]) == 2


# ---------------------------------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_sigkill(tmp_path):
    dataset = write_tiny_perfusion(tmp_path / "data", n=5)  # 4 training cases: 2 steps of 2 cases per epoch
    reference = train(_config(GLOBAL_BATCH), tmp_path / "one", datalist=dataset)

    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(to_dict(_config(GLOBAL_BATCH // 2))))
    work, markers = tmp_path / "two", tmp_path / "markers"
    markers.mkdir()
    log = (tmp_path / "killed.log").open("w")
    child = subprocess.Popen(_command(config, dataset, work), env=_env(tmp_path, markers=str(markers), block=[1, 0]),
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not all((markers / f"rank{r}_step_1_0").exists() for r in (0, 1)):
            if child.poll() is not None:
                pytest.fail(f"training exited early: {(tmp_path / 'killed.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the ranks did not reach epoch 1")
            time.sleep(0.2)
        time.sleep(0.5)  # both ranks wrote their marker just before blocking
        os.killpg(child.pid, signal.SIGKILL)  # medseg and torchrun; the ranks are in sessions of their own
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        log.close()
    ranks = [int((markers / f"rank{r}_step_1_0").read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in ranks), "ranks outlived their launcher"
    assert sorted(p.name for p in markers.iterdir()) == [
        "rank0_step_0_0", "rank0_step_0_1", "rank0_step_1_0", "rank1_step_0_0", "rank1_step_0_1", "rank1_step_1_0",
    ]  # fmt: skip
    assert load_checkpoint(work / "checkpoints" / "last.pt").epoch == 0
    client = _client(work)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert len(client.search_runs(experiments)) == 1  # rank 0's only

    done = _run(_command(config, dataset, work, "--resume"), _env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert {p.name for p in (work / "checkpoints").iterdir()} - {"last-previous.pt"} == {"best.pt", "last.pt"}

    resumed = load_checkpoint(work / "checkpoints" / "last.pt")
    history = resumed.extra["history"]
    assert [h["train/steps"] for h in history] == [h["train/steps"] for h in reference.history] == [2.0] * 3
    for mine, ref in zip(history, reference.history, strict=True):
        assert mine["train/loss"] == pytest.approx(ref["train/loss"], rel=1e-5)
        assert mine["val/dice_mean"] == pytest.approx(ref["val/dice_mean"], abs=1e-4)
    single = load_checkpoint(reference.last_checkpoint).state_dict
    assert resumed.state_dict.keys() == single.keys()  # no "module." prefix from the DDP wrapper
    assert max(float((resumed.state_dict[k] - single[k]).abs().max()) for k in single) < 1e-4

    runs = client.search_runs(experiments)
    assert len(runs) == 2  # the killed launch's and the resumed one's, none from rank 1
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].info.run_id == summary["run_id"]
    versions = client.search_model_versions("name = 'tiny-ddp'")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, summary["run_id"])]
    assert finished[0].data.metrics["val/dice_mean"] == pytest.approx(reference.history[-1]["val/dice_mean"], abs=1e-4)


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_with_a_clear_message(tmp_path):
    dataset = write_tiny_perfusion(tmp_path / "data", n=5)
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(to_dict(_config(1))))
    markers = tmp_path / "markers"
    markers.mkdir()
    start = time.monotonic()
    done = _run(_command(config, dataset, tmp_path / "work"), _env(tmp_path, markers=str(markers), fail=[1, 0, 1]))
    assert done.returncode == 1
    assert time.monotonic() - start < 200  # rank 0 did not wait for its peer until a timeout
    assert "RuntimeError: injected failure on rank 1" in done.stderr
    assert "the training run of 2 processes failed" in done.stderr and "--resume" in done.stderr
    assert not (tmp_path / "work" / "checkpoints" / "last.pt").exists()  # epoch 0 never finished



@pytest.mark.slow
def test_the_ranks_stop_together_at_the_end_of_the_budget(tmp_path):
    """Rank 1's clock starts 3 s after rank 0's: left to their own clocks, rank 0 would end the run (validate,
    write checkpoints) while rank 1 still trains, and they would wait for each other in different collectives."""
    dataset = write_tiny_perfusion(tmp_path / "data", n=5)
    config = tmp_path / "two.yaml"
    budget = tiny_config(train={"epochs": 500, "batch_size": 1, "budget_minutes": 0.1, "val_every": 4},
                         tracking={"registered_model": "tiny-ddp"})
    config.write_text(yaml.safe_dump(to_dict(budget)))
    markers = tmp_path / "markers"
    markers.mkdir()
    done = _run(_command(config, dataset, tmp_path / "work"),
                _env(tmp_path, markers=str(markers), late_start={"1": 3.0}), timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["status"] == "completed" and summary["stopped_by"] == "budget"
    assert 2 <= summary["epochs_run"] < 500 and summary["model_uri"] == "models:/tiny-ddp@champion"
    last = summary["epochs_run"] - 1
    steps = {r: sorted(p.name for p in markers.glob(f"rank{r}_step_*")) for r in (0, 1)}
    assert steps[0] == [n.replace("rank1", "rank0") for n in steps[1]]  # the same steps on both ranks
    assert f"rank0_step_{last}_0" in steps[0] and not any(n.startswith(f"rank0_step_{last + 1}_") for n in steps[0])
    assert load_checkpoint(tmp_path / "work" / "checkpoints" / "last.pt").extra["stopped_by"] == "budget"
