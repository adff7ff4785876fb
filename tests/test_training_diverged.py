"""A non-finite loss stops training with TrainingDiverged: no checkpoint after it, no success reported."""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.errors import MedsegError
from medseg.training import Trainer, TrainingDiverged, train


class EndRecorder:
    def __init__(self) -> None:
        self.results = []
        self.epochs = []
        self.validations = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)

    def on_validation(self, epoch, metrics, qc_pngs):
        self.validations.append(epoch)

    def on_end(self, result):
        self.results.append(result)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_perfusion(tmp_path_factory.mktemp("div") / "data", n=4)


def test_nan_input_in_a_later_epoch_keeps_the_earlier_checkpoint(dataset, tmp_path, monkeypatch):
    original = Trainer.train_step

    def poisoned(self, batch, epoch, step):
        if (epoch, step) == (1, 1):
            batch = dict(batch)
            batch["image"] = batch["image"].clone()
            batch["image"][0, 0, 0, 0, 0] = float("nan")
        return original(self, batch, epoch, step)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    recorder = EndRecorder()
    work = tmp_path / "work"
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(train={"epochs": 3}), work, datalist=dataset, tracker=recorder)
    err = info.value
    assert isinstance(err, MedsegError) and (err.epoch, err.step) == (1, 1)
    assert "epoch 1, step 1" in str(err) and "nan" in str(err)
    last = load_checkpoint(work / "checkpoints" / "last.pt")
    assert last.epoch == 0  # nothing written after the divergence
    assert all(torch.isfinite(t).all() for t in last.state_dict.values())
    assert {p.name for p in (work / "checkpoints").iterdir()} - {"last-previous.pt"} == {"best.pt", "last.pt"}
    assert load_checkpoint(work / "checkpoints" / "best.pt").epoch == 0
    (result,) = recorder.results
    assert result.status == "diverged" and not result.succeeded and "epoch 1, step 1" in result.error
    assert result.model is None and [h["epoch"] for h in result.history] == [0.0]
    assert recorder.epochs == [0] and recorder.validations == [0]


def test_huge_learning_rate_diverges_without_any_checkpoint(dataset, tmp_path):
    recorder = EndRecorder()
    work = tmp_path / "work"
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 0"):
        train(
            tiny_config(train={"lr": 1e30, "optimizer": "sgd", "grad_clip": None}),
            work,
            datalist=dataset,
            tracker=recorder,
        )
    assert not (work / "checkpoints").exists() or not any((work / "checkpoints").iterdir())
    (result,) = recorder.results
    assert result.status == "diverged" and result.last_checkpoint is None and result.best_checkpoint is None
    assert recorder.epochs == []
