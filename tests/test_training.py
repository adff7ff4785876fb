"""Two epochs on tiny synthetic perfusion data: self-describing checkpoints, real validation numbers, hooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg import __version__
from medseg.checkpoint import load_checkpoint
from medseg.contract import CropRule
from medseg.data.io import load_volume
from medseg.nets import build_network
from medseg.training import train
from medseg.training.datalist import load_datalist
from medseg.training.split import split_cases
from medseg.training.validation import Validator

PNG = b"\x89PNG\r\n\x1a\n"


class Recorder:
    """An observer that records every hook call (and fails in one of them)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, params):
        self.calls.append(("start", params))

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch", epoch, dict(metrics)))
        raise RuntimeError("tracker down")  # observers must not stop training

    def on_validation(self, epoch, metrics, qc_pngs):
        self.calls.append(("validation", epoch, dict(metrics), list(qc_pngs)))

    def on_end(self, result):
        self.calls.append(("end", result))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    dataset = write_tiny_perfusion(root / "data", n=4)
    config = tiny_config()
    recorder = Recorder()
    result = train(config, root / "work", datalist=dataset, tracker=recorder)
    return config, dataset, result, recorder


def test_checkpoint_describes_itself_and_reloads(trained):
    config, _, result, _ = trained
    assert result.status == "completed" and result.succeeded
    ckpt = load_checkpoint(result.best_checkpoint)
    spec = ckpt.spec
    contract = spec.contract
    assert spec.channel_names == ["CBF", "MTT", "CBV"]
    assert contract.channels[0].normalization == {"name": "zscore", "nonzero": True}
    assert spec.labels == {0: "background", 1: "infarct_core"}
    assert contract.data.spacing is None and contract.data.orientation == "RAS" and spec.spatial_dims == 3
    assert contract.patch_size == [16, 16, 8]
    assert spec.network["name"] == "unet" and spec.network["features"] == [4, 8, 16]
    assert (spec.network["in_channels"], spec.network["out_channels"]) == (3, 2)
    assert contract.to_dict()["inference"] == {
        "overlap": 0.5,
        "sw_batch_size": 2,
        "mode": "gaussian",
        "postprocess": {"largest_component": False, "min_volume_mm3": None, "connectivity": None},
    }
    assert contract.data.slice_axis is None
    assert contract.crop == CropRule(0.0, 2)  # train.crop_foreground with the schema defaults
    assert spec.medseg_version == __version__
    assert spec.config["train"]["epochs"] == 2 and spec.config["datalist"]["path"] is None
    assert ckpt.epoch == result.best_epoch and ckpt.optimizer is None
    assert ckpt.metrics["val/dice_mean"] == result.best_metrics["val/dice_mean"]

    last = load_checkpoint(result.last_checkpoint)
    assert (
        last.epoch == 1 and last.optimizer is not None and last.scheduler is not None and last.rng is not None
    )
    assert [h["epoch"] for h in last.extra["history"]] == [0.0, 1.0]

    net = build_network(**spec.network)
    net.load_state_dict(ckpt.state_dict)
    net.eval()
    x = torch.randn(1, 3, 20, 24, 12)
    with torch.no_grad():
        assert torch.equal(net(x), result.model(x))


def test_validation_numbers_are_reproducible(trained):
    """The recorded best Dice is what the returned model scores again on the held-out case."""
    config, dataset, result, _ = trained
    entries = load_datalist(dataset, config.data.channel_names)
    _, val_cases = split_cases(entries, val_fraction=0.25, folds=None, fold=0, seed=config.train.seed)
    assert len(val_cases) == 1
    spec = load_checkpoint(result.best_checkpoint).spec
    metrics, qc = Validator(spec, val_cases, torch.device("cpu"), qc_cases=1)(result.model)
    assert metrics["val/dice_mean"] == result.best_metrics["val/dice_mean"]
    assert 0.0 <= metrics["val/dice/infarct_core"] <= 1.0
    gt = load_volume(val_cases[0].label, dtype=None).numpy()[0]
    k = int(np.argmax((gt > 0).sum(axis=(0, 1))))  # the axial slice with the most foreground, on the case's grid
    assert np.array_equal(qc[0].label, gt[:, :, k])


def test_history_pictures_and_summary(trained):
    _, _, result, _ = trained
    assert [h["epoch"] for h in result.history] == [0.0, 1.0]
    for h in result.history:
        assert h["train/loss"] > 0 and h["train/steps"] == 2.0  # 3 training cases, 2 per step
        assert "val/dice_mean" in h
    assert result.history[0]["train/lr"] == pytest.approx(0.01)
    assert result.history[1]["train/lr"] == pytest.approx(0.01 * 0.5**0.9)  # poly decay
    assert result.learning_curve.read_bytes().startswith(PNG)
    assert result.qc_images and all(p.read_bytes().startswith(PNG) for p in result.qc_images)
    summary = json.loads((result.workdir / "dataset_summary.json").read_text())
    assert summary == result.dataset_summary
    assert (summary["n_cases"], summary["n_train"], summary["n_val"]) == (4, 3, 1)
    assert summary["spacing_mm"]["median"] == [3.0, 3.0, 5.0] and summary["shape"]["max"] == [24, 24, 12]
    assert summary["cases_with_label"] == {"background": 4, "infarct_core": 4}
    assert "case_0" not in json.dumps(summary)


def test_observer_sees_every_epoch_once(trained):
    _, _, result, recorder = trained
    kinds = [c[0] for c in recorder.calls]
    assert kinds == ["start", "epoch", "validation", "epoch", "validation", "end"]
    params = recorder.calls[0][1]
    assert set(params) == {"config", "dataset", "run"}
    assert params["config"]["datalist"]["path"] is None and params["run"]["device"] == "cpu"
    assert "case_0" not in json.dumps(params, default=str)
    assert recorder.calls[1][1] == 0 and set(recorder.calls[1][2]) >= {"train/loss", "train/lr"}
    epoch, metrics, pngs = recorder.calls[4][1:]
    val = {k: v for k, v in result.history[1].items() if k.startswith("val/")}
    best = max(h["val/dice_mean"] for h in result.history)  # the first strictly better epoch is the best
    best_epoch = next(h["epoch"] for h in result.history if h["val/dice_mean"] == best)
    assert epoch == 1 and metrics == {**val, "best/dice_mean": best, "best/epoch": best_epoch}
    assert pngs and all(p.is_file() for p in pngs)
    assert recorder.calls[-1][1] is result
