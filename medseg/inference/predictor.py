"""A predictor: a trained network plus the preprocessing its ModelSpec describes, run by sliding window.

``Predictor.predict(image)`` takes a channel-first MetaTensor in the study's own geometry and returns an integer
label map on exactly that grid (same shape and affine). The network is loaded once and reused for every study.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medseg.checkpoint import Checkpoint, ModelSpec, load_checkpoint
from medseg.inference.sliding import make_inferer

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda:N`` is checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def native_spacing(affine: torch.Tensor, axcodes: str) -> list[float]:
    """The voxel spacing of a grid, listed in the axis order it has once reoriented to ``axcodes``."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    aff = np.asarray(affine, dtype=np.float64)
    norms = np.linalg.norm(aff[:-1, :-1], axis=0)
    labels = (("L", "R"), ("P", "A"), ("I", "S"))[: len(axcodes)]
    move = ornt_transform(io_orientation(aff), axcodes2ornt(tuple(axcodes), labels=labels))
    out = [0.0] * len(norms)
    for axis, (new_axis, _flip) in enumerate(move):
        out[int(new_axis)] = float(norms[axis])
    return out


class Predictor:
    """Runs a network on whole studies with the preprocessing of its :class:`ModelSpec`.

    Args:
        network: the network (moved to ``device`` and put in eval mode here).
        spec: the model's data contract.
        device: ``"auto"``, ``"cpu"`` or ``"cuda:N"``.
        tta: average the softmax over mirrored inputs (all flips of the spatial axes).
        overlap, sw_batch_size: override the spec's sliding-window settings.
        amp: mixed precision on CUDA (default: on when the device is CUDA).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        spec: ModelSpec,
        device: str | torch.device = "auto",
        *,
        tta: bool = False,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        amp: bool | None = None,
    ) -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.tta = tta
        inf = dict(spec.inference)
        self.inferer = make_inferer(
            spec.patch_size,
            overlap=overlap if overlap is not None else inf.get("overlap", 0.5),
            sw_batch_size=sw_batch_size if sw_batch_size is not None else inf.get("sw_batch_size", 4),
            mode=inf.get("mode", "gaussian"),
        )
        self.amp = (self.device.type == "cuda") if amp is None else (amp and self.device.type == "cuda")
        self._preprocess = None

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint | str | os.PathLike, device: str | torch.device = "auto", **kw: Any) -> Predictor:
        """Rebuild the network from the checkpoint's spec and load its weights."""
        from medseg.nets import build_network

        if not isinstance(ckpt, Checkpoint):
            ckpt = load_checkpoint(ckpt)
        net_cfg = dict(ckpt.spec.network)
        network = build_network(net_cfg.pop("name"), **net_cfg)
        network.load_state_dict(ckpt.state_dict)
        return cls(network, ckpt.spec, device, **kw)

    # ------------------------------------------------------------------------------------------ preprocessing
    def preprocess_transform(self, image: MetaTensor):
        from medseg.data.normalization import build_normalizer
        from medseg.data.preprocess import build_preprocess

        if self._preprocess is None or self.spec.spacing is None:
            normalizers = []
            for ch in self.spec.channels:
                params = dict(ch.get("normalization") or {"name": "none"})
                normalizers.append(build_normalizer(params.pop("name"), **params))
            spacing = self.spec.spacing
            if spacing is None:  # the model works on each study's native spacing
                spacing = native_spacing(image.affine, self.spec.orientation[: image.ndim - 1])
            self._preprocess = build_preprocess(
                "image", None, spacing, orientation=self.spec.orientation[: image.ndim - 1],
                normalizers=normalizers, channel_names=self.spec.channel_names,
            )
        return self._preprocess

    def check_channels(self, image: MetaTensor) -> None:
        n = len(self.spec.channels)
        if image.shape[0] != n:
            raise ValueError(
                f"the model expects {n} channel(s) {self.spec.channel_names}, the image has {image.shape[0]}"
            )

    # ------------------------------------------------------------------------------------------ inference
    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over a (B, C, *spatial) preprocessed batch, by sliding window (and mirroring when tta).

        A 2D network on 3D volumes (``inference.slice_axis`` in the spec) runs on every slice across that axis.
        """
        x = x.to(self.device)
        slice_axis = self.spec.inference.get("slice_axis")
        if self.spec.spatial_dims == 2 and x.ndim == 5:
            if slice_axis is None:
                raise ValueError("a 2D model on a 3D volume needs inference.slice_axis in its spec")
            axis = 2 + int(slice_axis)
            slices = x.movedim(axis, 1)  # (B, S, C, h, w)
            b, n = slices.shape[:2]
            prob = self._mirrored(slices.reshape(b * n, *slices.shape[2:]))
            return prob.reshape(b, n, *prob.shape[1:]).movedim(1, axis)
        return self._mirrored(x)

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(2, x.ndim))
        flips: list[list[int]] = [[]]
        if self.tta:
            flips = [[d for i, d in enumerate(dims) if mask >> i & 1] for mask in range(2 ** len(dims))]
        total = None
        with torch.autocast(self.device.type, enabled=self.amp):
            for f in flips:
                xi = torch.flip(x, f) if f else x
                logits = self.inferer(xi, self.network)
                prob = torch.softmax(logits.float(), dim=1)
                prob = torch.flip(prob, f) if f else prob
                total = prob if total is None else total + prob
        return total / len(flips)

    def predict(self, image: MetaTensor) -> MetaTensor:
        """Label map (1, *spatial), int64 values of ``spec.labels``, on exactly ``image``'s grid."""
        from medseg.data.preprocess import invert_to_original

        self.check_channels(image)
        transform = self.preprocess_transform(image)
        pre = transform({"image": image})["image"]
        prob = self.probabilities(pre.as_tensor().unsqueeze(0))
        label = prob.argmax(dim=1).to(torch.uint8).cpu()  # (1, *spatial) on the preprocessed grid
        out = invert_to_original(label, pre, transform, key="image", nearest=True)
        out = MetaTensor(out.as_tensor().to(torch.int64), meta={**image.meta, "affine": image.affine.clone()})
        return out

    def predict_case(self, sources: Mapping[str, str | os.PathLike]) -> tuple[MetaTensor, MetaTensor]:
        """Assemble the spec's channels from files / DICOM folders, then :meth:`predict`."""
        from medseg.config.schema import ChannelConfig
        from medseg.data.channels import assemble_channels

        channels = [ChannelConfig(**c) for c in self.spec.channels]
        image = assemble_channels(
            {k: Path(v) for k, v in sources.items()}, channels,
            resample=bool(self.spec.config.get("data", {}).get("resample_channels", False)),
            spatial_dims=self.file_dims,
        )
        return image, self.predict(image)

    @property
    def file_dims(self) -> int:
        """Spatial dims of the input files: 3 for 3D models and for 2D models applied slice-wise to volumes."""
        return 3 if self.spec.spatial_dims == 3 or self.spec.inference.get("slice_axis") is not None else 2
