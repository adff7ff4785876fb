"""Kill training mid-epoch (SIGKILL), resume: the final weights equal those of an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.config import to_dict
from medseg.errors import ConfigError
from medseg.training import train

# Trains in a child process; after the first step of epoch 1 (epoch 0's checkpoint is on disk) it leaves a marker
# and blocks, so the parent's SIGKILL lands in the middle of epoch 1.
CHILD = """
import sys, time
from pathlib import Path
from medseg.config import load_config
from medseg.training import Trainer, train

config, work, markers, datalist = sys.argv[1:5]
original = Trainer.train_step

def step(self, batch, epoch, index):
    out = original(self, batch, epoch, index)
    Path(markers, f"step_{epoch}_{index}").touch()
    if (epoch, index) == (1, 0):
        time.sleep(600)
    return out

Trainer.train_step = step
train(load_config(config), work, datalist=datalist)
"""


class Seen:
    def on_start(self, params):
        self.resumed_from = params["run"]["resumed_from_epoch"]
        self.epochs = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)


def _config():
    return tiny_config(
        network={"deep_supervision": True},
        loss={
            "name": "dice_ce_boundary",
            "options": {
                "schedule": {
                    "name": "linear_ramp",
                    "start_epoch": 0,
                    "end_epoch": 2,
                    "max_boundary_weight": 0.5,
                }
            },
        },
        train={"epochs": 3, "samples_per_case": 2},
    )


def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    dataset = write_tiny_perfusion(tmp_path / "data", n=4)
    config = _config()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    markers = tmp_path / "markers"
    markers.mkdir()
    killed = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config_path), str(killed), str(markers), str(dataset)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not (markers / "step_1_0").exists():
            if child.poll() is not None:
                pytest.fail(f"training child exited early: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("training child did not reach epoch 1")
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert sorted(p.name for p in markers.iterdir()) == ["step_0_0", "step_0_1", "step_1_0"]
    assert load_checkpoint(killed / "checkpoints" / "last.pt").epoch == 0  # killed mid-epoch 1

    seen = Seen()
    resumed = train(config, killed, resume=True, datalist=dataset, tracker=seen)
    assert seen.resumed_from == 0 and seen.epochs == [1, 2]  # continued, did not start over
    fresh = train(config, tmp_path / "fresh", datalist=dataset)

    a = load_checkpoint(resumed.last_checkpoint)
    b = load_checkpoint(fresh.last_checkpoint)
    assert a.epoch == b.epoch == 2
    assert a.state_dict.keys() == b.state_dict.keys()
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in fresh.history]
    assert resumed.history[2]["train/boundary_weight"] == 0.5
    assert resumed.best_metrics == fresh.best_metrics


def test_resume_refuses_a_different_model(tmp_path):
    dataset = write_tiny_perfusion(tmp_path / "data", n=4)
    train(tiny_config(train={"epochs": 1}), tmp_path / "work", datalist=dataset)
    with pytest.raises(ConfigError, match="different network"):
        train(
            tiny_config(train={"epochs": 2}, network={"features": [4, 8, 12]}),
            tmp_path / "work",
            resume=True,
            datalist=dataset,
        )
    with pytest.raises(ConfigError, match="already holds checkpoints of another run"):
        train(tiny_config(), tmp_path / "work", datalist=dataset)
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        train(tiny_config(), tmp_path / "empty", resume=True, datalist=dataset)


def test_a_damaged_last_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
    """last.pt truncated (a copy cut short, a disk fault): --resume takes last-previous.pt, repeats that epoch and
    ends with the weights the run had; with both damaged it refuses, giving both reasons."""
    dataset = write_tiny_perfusion(tmp_path / "data", n=4)
    config = tiny_config(train={"epochs": 3})
    work = tmp_path / "work"
    train(config, work, datalist=dataset)
    folder = work / "checkpoints"
    last = folder / "last.pt"
    finished = load_checkpoint(last)
    assert finished.epoch == 2 and load_checkpoint(folder / "last-previous.pt").epoch == 1
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])

    seen = Seen()
    with caplog.at_level("WARNING", logger="medseg.training.run"):
        resumed = train(config, work, resume=True, datalist=dataset, tracker=seen)
    assert "resuming from the checkpoint before it, last-previous.pt" in caplog.text
    assert seen.resumed_from == 1 and seen.epochs == [2]  # the lost epoch again, not the whole run
    again = load_checkpoint(resumed.last_checkpoint)
    for key in finished.state_dict:
        assert torch.equal(again.state_dict[key], finished.state_dict[key]), key

    for name in ("last.pt", "last-previous.pt"):
        (folder / name).write_bytes(b"damaged")
    with pytest.raises(ConfigError, match="no usable checkpoint: .*last.pt.*last-previous.pt"):
        train(tiny_config(train={"epochs": 4}), work, resume=True, datalist=dataset)
