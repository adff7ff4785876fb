"""Checkpoints: round trip with weights_only loading, RNG capture/restore, refusal of foreign files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from medseg.checkpoint import (
    Checkpoint,
    CheckpointError,
    ModelSpec,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from medseg.contract import DataContract


def _spec() -> ModelSpec:
    return ModelSpec(
        network={"name": "unet", "spatial_dims": 3, "in_channels": 3, "out_channels": 2},
        contract=DataContract.from_dict(
            {
                "data": {
                    "channels": [
                        {"name": n, "normalization": {"name": "zscore"}, "series": None}
                        for n in ("CBF", "MTT", "CBV")
                    ],
                    "labels": {0: "background", 1: "lesion"},
                    "spacing": [3.0, 3.0, 5.0],
                    "orientation": "RAS",
                    "spatial_dims": 3,
                },
                "patch_size": [32, 32, 16],
            }
        ),
    )


def test_roundtrip_with_optimizer_and_rng(tmp_path):
    model = torch.nn.Conv3d(3, 2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 4, 4, 4)).sum().backward()
    opt.step()
    rng = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt = Checkpoint(
        model.state_dict(), _spec(), epoch=7, metrics={"val_dice": 0.93}, optimizer=opt.state_dict(), rng=rng
    )
    path = save_checkpoint(tmp_path / "ck" / "last.pt", ckpt)
    back = load_checkpoint(path)
    assert back.epoch == 7 and back.metrics == {"val_dice": pytest.approx(0.93)}
    assert back.spec == _spec() and back.spec.labels == {0: "background", 1: "lesion"}
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict[k], v)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back.optimizer)
    restore_rng(back.rng)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".medseg-tmp")]


def test_foreign_and_missing_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not a medseg checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "medseg-checkpoint", "obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_spec_json_roundtrip():
    spec = _spec()
    d = spec.to_dict()
    assert d["contract"]["data"]["labels"] == {"0": "background", "1": "lesion"}
    assert ModelSpec.from_dict(json.loads(json.dumps(d))) == spec
    with pytest.raises(CheckpointError, match="unknown keys"):
        ModelSpec.from_dict({**d, "surprise": 1})
    bad = json.loads(json.dumps(d))
    bad["contract"]["data"]["spacing"] = [3.0, 3.0]
    with pytest.raises(CheckpointError, match=r"model spec contract: data.spacing: expected 3 positive values"):
        ModelSpec.from_dict(bad)
