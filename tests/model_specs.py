"""Model specs for tests and benchmarks: a 3D data contract on the input grid, and a small UNet checkpoint.

No tests here. Test modules import it directly (pytest puts ``tests/`` on ``sys.path``); benchmarks put ``tests/`` on
``sys.path`` first (``benchmarks/scale.py``), as they do for ``test_batch_support``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medseg.checkpoint import Checkpoint, ModelSpec, save_checkpoint
from medseg.contract import DataContract
from medseg.nets import build_network, network_config

NO_NORMALIZATION = {"name": "none"}
CT_WINDOW = {"name": "ct_window", "center": 40, "width": 400}
BODY_LABELS = {0: "background", 1: "body"}


def channel(name: str, normalization: Mapping[str, Any] = NO_NORMALIZATION, modality: str | None = None) -> dict:
    """One channel of a contract; ``modality`` adds the DICOM series rule ``{"modality": modality}``."""
    out: dict[str, Any] = {"name": name, "normalization": dict(normalization)}
    if modality is not None:
        out["series"] = {"modality": modality}
    return out


def contract(
    channels: Sequence[Mapping[str, Any]],
    labels: Mapping[int, str],
    *,
    patch: int = 16,
    inference: Mapping[str, Any] | None = None,
) -> DataContract:
    """A 3D contract on the input grid (no resampling), RAS, with a cubic ``patch`` (``inference``: None for the
    defaults)."""
    data: dict[str, Any] = {
        "data": {
            "channels": [dict(c) for c in channels],
            "labels": dict(labels),
            "spacing": None,
            "orientation": "RAS",
            "spatial_dims": 3,
        },
        "patch_size": [patch] * 3,
    }
    if inference is not None:
        data["inference"] = dict(inference)
    return DataContract.from_dict(data)


def save_unet_checkpoint(path: Path, features: Sequence[int], patch: int) -> Path:
    """A randomly initialised (seed 0) 3D UNet on one CT channel, labels background/body, windows overlapping by a
    quarter, two per batch: for throughput and pipeline runs, not for its labels."""
    torch.manual_seed(0)
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, features=tuple(features))
    spec = ModelSpec(
        network=network_config(net),
        contract=contract(
            [channel("CT", modality="CT")], BODY_LABELS, patch=patch, inference={"overlap": 0.25, "sw_batch_size": 2}
        ),
    )
    return save_checkpoint(path, Checkpoint(state_dict=net.state_dict(), spec=spec))
