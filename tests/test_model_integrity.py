"""Models that must not segment anything: a registered checkpoint changed after registration, weights that do not
fit the network, NaN weights, a label map the network cannot produce, a truncated file, a pickle payload.

Each is refused before any output exists, with one line naming the file, through the real loading path.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medseg
from medseg.checkpoint import Checkpoint, CheckpointError, ModelSpec, save_checkpoint
from medseg.cli import main as cli_main
from medseg.contract import DataContract
from medseg.inference.options import InferenceOptions
from medseg.nets import build_network
from medseg.tracking import RunLogger, TrackingConfig, register_model, resolve_model_uri, resolve_tracking_uri
from medseg.tracking.errors import ModelIntegrityError

NET = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 8]}


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _spec(network: dict | None = None, labels: dict | None = None) -> ModelSpec:
    return ModelSpec(
        network=dict(network or NET),
        contract=DataContract.from_dict(
            {
                "data": {
                    "channels": [{"name": "image", "normalization": {"name": "zscore"}, "series": None}],
                    "labels": labels or {0: "background", 1: "organ"},
                    "spacing": None,
                    "orientation": "RAS",
                    "spatial_dims": 3,
                },
                "patch_size": [16, 16, 16],
            }
        ),
    )


def _weights(network: dict | None = None) -> dict[str, torch.Tensor]:
    cfg = dict(network or NET)
    torch.manual_seed(0)
    return build_network(cfg.pop("name"), **cfg).state_dict()


def _save(path: Path, state: dict[str, torch.Tensor], spec: ModelSpec) -> Path:
    return save_checkpoint(path, Checkpoint(state_dict=state, spec=spec))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "study.nii.gz"
    data = np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


def _refused(study: Path, model: str, out: Path, capsys, *extra: str) -> str:
    code = cli_main(["segment", str(study), str(out), "--model", model, "--no-progress", "--formats", "nifti",
                     *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    err = [line for line in err.splitlines() if line.startswith("medseg segment:")]  # MLflow prints its own
    assert len(err) == 1, err
    err = err[0]
    assert not out.exists()  # refused before the output folder was made
    return err


def test_a_good_checkpoint_segments(study, tmp_path, capsys):
    good = _save(tmp_path / "good.pt", _weights(), _spec())
    code = cli_main(["segment", str(study), str(tmp_path / "out"), "--model", str(good), "--no-progress",
                     "--formats", "nifti"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("*/label.nii.gz"))) == 1


def test_state_dict_that_does_not_fit_the_network_is_refused(study, tmp_path, capsys):
    wider = {**NET, "features": [6, 8]}
    path = _save(tmp_path / "mismatch.pt", _weights(wider), _spec())
    err = _refused(study, str(path), tmp_path / "out", capsys)
    assert "mismatch.pt: not a usable model" in err and "has shape" in err and "the network needs" in err
    path = _save(tmp_path / "missing.pt", {}, _spec())
    assert "missing weight(s)" in _refused(study, str(path), tmp_path / "out", capsys)


def test_nan_weights_are_refused(study, tmp_path, capsys):
    state = _weights()
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[first] = state[first].clone()
    state[first].view(-1)[3] = float("nan")
    path = _save(tmp_path / "nan.pt", state, _spec())
    err = _refused(study, str(path), tmp_path / "out", capsys)
    assert "NaN or infinite" in err and first in err


def test_labels_the_network_cannot_produce_are_refused(study, tmp_path, capsys):
    path = _save(tmp_path / "labels.pt", _weights(), _spec(labels={0: "background", 1: "liver", 2: "spleen"}))
    err = _refused(study, str(path), tmp_path / "out", capsys)
    assert "labels [0, 1, 2] need 3 outputs, network out_channels=2" in err


def test_truncated_checkpoint_is_refused(study, tmp_path, capsys):
    good = _save(tmp_path / "good.pt", _weights(), _spec())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "cut.pt: not a readable checkpoint" in _refused(study, str(cut), tmp_path / "out", capsys)


class _Payload:
    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __reduce__(self):
        return (Path.touch, (Path(self.canary),))


def test_pickle_payload_never_runs(study, tmp_path, capsys):
    canary = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medseg-checkpoint", "payload": _Payload(str(canary))}, evil, pickle_protocol=2)
    with pytest.raises(pickle.UnpicklingError):  # the file really carries a payload a plain pickle would run
        torch.load(evil, weights_only=True)
    _refused(study, str(evil), tmp_path / "out", capsys)
    assert not canary.exists()


def test_registered_checkpoint_changed_after_registration_is_refused(study, tmp_path, capsys):
    uri = resolve_tracking_uri(None, {}, tmp_path / "mlflow")
    ckpt = _save(tmp_path / "best.pt", _weights(), _spec())
    with RunLogger(TrackingConfig(experiment="integrity", timeout_s=10), uri, tmp_path / "spool").start(
        "t"
    ) as run:
        register_model(run, ckpt, _spec().to_dict(), "integrity-model")
    # the registered model loads as it is
    assert (
        medseg.load_model(
            "models:/integrity-model@champion",
            InferenceOptions(device="cpu"),
            tracking_uri=uri,
            cache_dir=tmp_path / "c1",
        ).model_name
        == "integrity-model"
    )
    # one flipped byte in the stored artifact (what a damaged disk or a tampering hand would leave)
    stored = [p for p in (tmp_path / "mlflow").rglob("best.pt")]
    assert len(stored) == 1
    raw = bytearray(stored[0].read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored[0].write_bytes(bytes(raw))
    with pytest.raises(ModelIntegrityError, match="SHA-256 does not match"):
        resolve_model_uri("models:/integrity-model@champion", uri, tmp_path / "c2")
    capsys.readouterr()
    err = _refused(study, "models:/integrity-model@champion", tmp_path / "out", capsys, "--tracking-uri", uri)
    assert "pinned at registration" in err


def test_check_weights_names_the_file_for_in_memory_checkpoints():
    from medseg.inference import Predictor

    with pytest.raises(CheckpointError, match="checkpoint: not a usable model"):
        Predictor.from_checkpoint(Checkpoint(state_dict={}, spec=_spec()), InferenceOptions(device="cpu"))
