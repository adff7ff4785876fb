"""Self-describing checkpoints.

A checkpoint holds the weights *and* the :class:`ModelSpec` (network config, the :class:`medseg.contract.DataContract`
with channels, normalization, labels, target grid, window, crop and postprocessing, the training config for
provenance, and the medseg version), so inference can rebuild preprocessing and network from the file alone. It is read with
``torch.load(weights_only=True)``: only tensors and plain containers are stored, never pickled objects.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.atomic import atomic_path
from medseg.contract import DataContract, upgrade_spec
from medseg.errors import ConfigError, MedsegError

logger = logging.getLogger(__name__)

FORMAT = "medseg-checkpoint"
FORMAT_VERSION = 2  # 2: the spec holds a DataContract; format 1 is read through medseg.contract.upgrade_spec


class CheckpointError(MedsegError):
    """A checkpoint file is missing, unreadable or not a medseg checkpoint."""


@dataclass
class ModelSpec:
    """A trained model's description: how to build its network, its data contract, and where it came from.

    Attributes:
        network: ``{"name": ..., **kwargs}`` for :func:`medseg.nets.build_network`.
        contract: the :class:`~medseg.contract.DataContract` (channels, labels, grid, window, crop,
            postprocessing): the only thing inference reads.
        config: the full training configuration (plain data), kept for provenance (its hash is recorded with every
            output); inference never reads it.
        medseg_version: the version that trained it.
        format1: the format-1 spec data (before the contract) this spec was converted from, as stored; None for
            current data. Not saved again (a re-saved checkpoint is format 2); kept so that a batch output folder
            started by a medseg of that time, whose fingerprint hashes this data, is recognised as made by the
            same model (:func:`medseg.batch.provenance.earlier_fingerprints`).
    """

    network: dict[str, Any]
    contract: DataContract
    config: dict[str, Any] = field(default_factory=dict)
    medseg_version: str = ""
    format1: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.medseg_version:
            from medseg._version import __version__

            self.medseg_version = __version__

    @property
    def labels(self) -> dict[int, str]:
        return self.contract.labels

    @property
    def channel_names(self) -> list[str]:
        return self.contract.channel_names

    @property
    def num_classes(self) -> int:
        return self.contract.num_classes

    @property
    def spatial_dims(self) -> int:
        return self.contract.spatial_dims

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (label keys become strings)."""
        return {
            "network": dict(self.network),
            "contract": self.contract.to_dict(),
            "config": self.config,
            "medseg_version": self.medseg_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Current spec data, or a format-1 spec converted by :func:`medseg.contract.upgrade_spec`.

        Raises:
            CheckpointError: unknown or missing keys, or an invalid contract.
        """
        try:
            current = upgrade_spec(data)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        unknown = sorted(set(current) - {"network", "contract", "config", "medseg_version"})
        if unknown:
            raise CheckpointError(f"model spec has unknown keys {unknown} (written by a newer medseg?)")
        if not isinstance(current.get("network"), dict) or "name" not in current["network"]:
            raise CheckpointError("model spec has no network description")
        try:
            contract = DataContract.from_dict(current["contract"], "model spec contract")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        return cls(
            network=dict(current["network"]),
            contract=contract,
            config=dict(current.get("config") or {}),
            medseg_version=str(current.get("medseg_version") or ""),
            format1=None if "contract" in data else dict(data),
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def nonfinite_weights(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or infinite values."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def capture_rng() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators as weights_only-safe data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).copy()), *[
            int(x) if isinstance(x, int | np.integer) else float(x) for x in np_state[2:]
        ]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), int(npst[2]), int(npst[3]), float(npst[4])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (temp file + fsync + rename): a kill never leaves a half-written checkpoint."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": ckpt.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "epoch": int(ckpt.epoch),
        "metrics": {k: float(v) for k, v in ckpt.metrics.items()},
        "optimizer": ckpt.optimizer,
        "scheduler": ckpt.scheduler,
        "rng": ckpt.rng,
        "extra": ckpt.extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with ``weights_only=True`` and check that it is a medseg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text suggests weights_only=False: never for a checkpoint
        raise CheckpointError(
            f"{path}: not a readable checkpoint (it holds Python objects other than tensors and plain data, which "
            "medseg never unpickles: a damaged file, or code hidden in it)"
        ) from exc
    except Exception as exc:  # torch raises several types for corrupt files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medseg checkpoint (no '{FORMAT}' marker)")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this medseg reads ({FORMAT_VERSION})"
        )
    return Checkpoint(
        state_dict=payload["state_dict"],
        spec=ModelSpec.from_dict(payload["spec"]),
        epoch=int(payload.get("epoch", 0)),
        metrics=dict(payload.get("metrics") or {}),
        optimizer=payload.get("optimizer"),
        scheduler=payload.get("scheduler"),
        rng=payload.get("rng"),
        extra=dict(payload.get("extra") or {}),
    )
