"""A predictor: a trained network plus the preprocessing its ModelSpec describes, run by sliding window.

``Predictor.predict(image)`` takes a channel-first MetaTensor in the study's own geometry and returns an integer
label map on exactly that grid (same shape and affine). The network is loaded once and reused for every study.

How a study is segmented (memory stays about one window-deep slab, never a full ``(K, *spatial)`` buffer):

Everything it knows about the model's inputs comes from the model's :class:`~medseg.contract.DataContract`; how to
run it (device, TTA, window settings, crop, postprocessing) from one :class:`~medseg.inference.InferenceOptions`.
Validation during training runs this same engine on the validation cases (:mod:`medseg.training.validation`), so
the Dice logged while training is the Dice of what ``medseg segment`` writes.

1. :mod:`medseg.inference.prepare`: the model grid of the study (as the training preprocessing makes it) and, when
   the model was trained with a foreground crop (the contract's ``crop``), the crop box by the same rule (any raw channel above the
   threshold, plus the margin). Everything outside the box is background.
2. :class:`medseg.inference.sliding.SlidingWindow`: MONAI's window layout over the whole model grid, of which only
   the windows touching the box run (windows over air are skipped, and every voxel of the box gets exactly the
   values of an uncropped run). The training preprocessing (normalization on the native grid, orientation,
   spacing) is computed for those windows only. Gaussian blending of the logits, optional mirroring test-time
   augmentation inside each window (the mean of the logits over all flips, as nnU-Net does), AMP on CUDA,
   channels-last 3D convolutions on CPU. Final slabs are streamed.
3. :class:`medseg.inference.invert.LabelInverter`: each study voxel gets the argmax of the blended logits linearly
   interpolated at its position (what ``Invertd(nearest_interp=False)`` + ``AsDiscrete(argmax=True)`` gives),
   slab by slab, stored as ``uint8``.
4. :class:`medseg.inference.postprocess.Postprocess`: the model's clean-up (small objects below a volume in mm^3
   removed, largest connected component per label), on the study grid with the study's voxel size.
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

from medseg.checkpoint import Checkpoint, CheckpointError, ModelSpec, load_checkpoint, nonfinite_weights
from medseg.config import to_dict
from medseg.contract import CropRule, DataContract
from medseg.errors import ConfigError
from medseg.inference.invert import LabelInverter, label_dtype_for
from medseg.inference.options import InferenceOptions
from medseg.inference.postprocess import Postprocess
from medseg.inference.prepare import foreground_box, model_grid, resample_box
from medseg.inference.resample import axis_maps
from medseg.inference.sliding import SlidingWindow, SlidingWindowConfig

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


def channels_last_exact(network: torch.nn.Module) -> bool:
    """Whether channels-last 3D kernels compute what the default layout computes (to float rounding).

    PyTorch's channels-last group normalization (medseg's instance norm is one) is far less accurate on CPU (errors
    of ~1e-3 instead of ~1e-6 on features with a large mean), enough to move label boundaries; such networks keep
    the default layout.
    """
    inexact = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.modules.instancenorm._InstanceNorm)
    return not any(isinstance(m, inexact) for m in network.modules())


def check_weights(network: torch.nn.Module, ckpt: Checkpoint, where: str) -> None:
    """Refuse a checkpoint whose contract, weights and network disagree, before any voxel is segmented.

    Checked: the spec's channel and label counts against the network's input and output channels, the
    ``state_dict`` keys and shapes against the network built from the spec, and every weight finite.

    Raises:
        CheckpointError: naming ``where`` and the first disagreements.
    """
    net = ckpt.spec.network
    problems: list[str] = []
    n_channels = len(ckpt.spec.channel_names)
    if "in_channels" in net and int(net["in_channels"]) != n_channels:
        problems.append(f"{n_channels} channel(s) in the spec, network in_channels={net['in_channels']}")
    if "out_channels" in net and int(net["out_channels"]) != ckpt.spec.num_classes:
        problems.append(
            f"labels {sorted(ckpt.spec.labels)} need {ckpt.spec.num_classes} outputs, network out_channels="
            f"{net['out_channels']}"
        )
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {what} weight(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    for k in shapes[:3]:
        problems.append(f"{k} has shape {list(given[k])}, the network needs {list(expected[k])}")
    bad = nonfinite_weights(ckpt.state_dict)
    if bad:
        problems.append(f"{len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])})")
    if problems:
        raise CheckpointError(f"{where}: not a usable model: " + "; ".join(problems))


def resolve_postprocess(contract: DataContract, postprocess: bool | Mapping[str, Any] | None = None) -> Postprocess:
    """The postprocessing a predictor applies (see :attr:`InferenceOptions.postprocess`)."""
    model_settings = to_dict(contract.inference.postprocess)
    if postprocess is False:
        result = Postprocess()
    elif postprocess is None or postprocess is True:
        result = Postprocess.from_config(model_settings, "model contract inference.postprocess")
    elif isinstance(postprocess, Mapping):
        result = Postprocess.from_config({**model_settings, **postprocess}, "postprocess")
    else:
        raise ConfigError(
            f"postprocess must be None, True, False or a mapping, got {type(postprocess).__name__}"
        )
    unknown = sorted(result.label_values - set(contract.labels))
    if unknown:
        raise ConfigError(
            f"postprocess: label value(s) {unknown} are not labels of the model; its labels: {contract.labels}"
        )
    return result


class Predictor:
    """Runs a network on whole studies with the preprocessing of its data contract.

    Args:
        network: the network (moved to the device and put in eval mode here).
        spec: the model's spec; only its :class:`~medseg.contract.DataContract` is read.
        options: how to run it (:class:`~medseg.inference.InferenceOptions`; default: the model's own settings).
    """

    def __init__(self, network: torch.nn.Module, spec: ModelSpec, options: InferenceOptions | None = None) -> None:
        opts = options if options is not None else InferenceOptions()
        if not isinstance(opts, InferenceOptions):
            raise TypeError(f"options must be InferenceOptions, got {type(opts).__name__}")
        self.spec, self.contract, self.options = spec, spec.contract, opts
        contract = self.contract
        self.device = resolve_device(opts.device)
        self.network = network.to(self.device).eval()
        self.tta = opts.tta
        self.slice_axis = contract.data.slice_axis if contract.spatial_dims == 2 else None
        roi = [int(p) for p in contract.patch_size]
        if self.slice_axis is not None:
            roi.insert(int(self.slice_axis), 1)  # a 2D network slides over single slices of the volume
        window = contract.inference
        self.window_config = SlidingWindowConfig(
            tuple(roi),
            overlap=float(opts.overlap if opts.overlap is not None else window.overlap),
            sw_batch_size=int(opts.sw_batch_size if opts.sw_batch_size is not None else window.sw_batch_size),
            mode=window.mode,
        )
        self.inferer = SlidingWindow(self.window_config, slab_axis=self.slice_axis, device=self.device)
        self.amp = (self.device.type == "cuda") if opts.amp is None else (opts.amp and self.device.type == "cuda")
        if opts.crop_foreground and contract.crop is None:
            raise ConfigError("crop_foreground=True but the model was not trained with a foreground crop")
        self.crop: CropRule | None = contract.crop if opts.crop_foreground is None or opts.crop_foreground else None
        channels_last = opts.channels_last
        if channels_last is None:
            channels_last = self.device.type == "cpu" and channels_last_exact(self.network)
        self.channels_last = bool(channels_last) and contract.spatial_dims == 3
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)
        self.postprocess = resolve_postprocess(contract, opts.postprocess)
        self._normalizers: list[Any] | None = None

    @classmethod
    def from_checkpoint(
        cls, ckpt: Checkpoint | str | os.PathLike, options: InferenceOptions | None = None
    ) -> Predictor:
        """Rebuild the network from the checkpoint's spec and load its weights."""
        from medseg.nets import build_network

        where = "checkpoint" if isinstance(ckpt, Checkpoint) else str(ckpt)
        if not isinstance(ckpt, Checkpoint):
            ckpt = load_checkpoint(ckpt)
        net_cfg = dict(ckpt.spec.network)
        network = build_network(net_cfg.pop("name"), **net_cfg)
        check_weights(network, ckpt, where)
        network.load_state_dict(ckpt.state_dict)
        return cls(network, ckpt.spec, options)

    # ------------------------------------------------------------------------------------------ preprocessing
    @property
    def normalizers(self) -> list[Any]:
        """One normalizer per channel of the data contract."""
        from medseg.data.normalization import ChannelNormalize

        if self._normalizers is None:
            self._normalizers = ChannelNormalize(self.contract.normalizers()).normalizers
        return self._normalizers

    def target_spacing(self, image: MetaTensor) -> list[float]:
        """The model spacing, or the study's own spacing for models that work on the native grid."""
        data = self.contract.data
        if data.spacing is not None:
            return [float(s) for s in data.spacing]
        return native_spacing(image.affine, data.orientation[: image.ndim - 1])

    def check_channels(self, image: MetaTensor) -> None:
        n = len(self.contract.channel_names)
        if image.shape[0] != n:
            raise ValueError(
                f"the model expects {n} channel(s) {self.contract.channel_names}, the image has {image.shape[0]}"
            )

    def _check_input(self, image: MetaTensor) -> None:
        from medseg.data.preprocess import CheckGeometryd

        CheckGeometryd(["image"], [], spatial_dims=self.file_dims)({"image": image})
        self.check_channels(image)

    # ------------------------------------------------------------------------------------------ inference
    def window_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *roi)`` of a batch of windows (mean over mirrorings when ``tta``)."""
        squeeze = None if self.slice_axis is None or x.ndim != 5 else 2 + int(self.slice_axis)
        if squeeze is not None:
            x = x.squeeze(squeeze)
        if self.channels_last and x.ndim == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        dims = list(range(2, x.ndim))
        flips: list[list[int]] = [[]]
        if self.tta:
            flips = [[d for i, d in enumerate(dims) if mask >> i & 1] for mask in range(2 ** len(dims))]
        outs = []
        with torch.autocast(self.device.type, enabled=self.amp):
            for f in flips:
                out = self.network(torch.flip(x, f) if f else x)
                if isinstance(out, (list, tuple)):  # deep supervision heads: the full-resolution output
                    out = out[0]
                out = out.float()
                outs.append(torch.flip(out, f) if f else out)
                if len(outs) == 2:
                    outs = [outs[0].add_(outs[1])]
        total = outs[0]
        if len(flips) > 1:
            total = total.div_(len(flips))
        return total if squeeze is None else total.unsqueeze(squeeze)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over a (B, C, *spatial) preprocessed batch, by sliding window (and mirroring when tta).

        A 2D network on 3D volumes (``inference.slice_axis`` in the spec) runs on every slice across that axis.
        """
        if self.contract.spatial_dims == 2 and x.ndim == 5 and self.slice_axis is None:
            raise ValueError("a 2D model on a 3D volume needs inference.slice_axis in its spec")
        logits = self.inferer(x.to(self.device), self.window_scores)
        return torch.softmax(logits, dim=1)

    @torch.inference_mode()
    def predict(self, image: MetaTensor) -> MetaTensor:
        """Label map ``(1, *spatial)`` (uint8 for up to 256 classes) on exactly ``image``'s grid and affine."""
        self._check_input(image)
        grid = model_grid(image, self.contract.data.orientation[: image.ndim - 1], self.target_spacing(image))
        box = grid.whole if self.crop is None else foreground_box(image.as_tensor(), grid, self.crop)
        # the whole-grid windows that touch the box, widened by the one voxel its interpolation may read
        wide = tuple((max(b0 - 1, 0), min(b1 + 1, n)) for (b0, b1), n in zip(box, grid.shape, strict=True))
        layout = self.inferer.layout(grid.shape, wide)
        pre = resample_box(image, self.normalizers, grid, layout.hull)
        maps = axis_maps(grid.affine, np.asarray(image.affine, dtype=np.float64))  # study axis -> model axis
        inverter = LabelInverter(
            image.shape[1:], maps, grid.shape, layout.hull, box, label_dtype_for(self.contract.num_classes)
        )
        logger.debug(
            "segmenting %s on the model grid %s: box %s, %d of %d windows",
            tuple(image.shape[1:]),
            grid.shape,
            box,
            len(layout.starts),
            layout.total,
        )
        for slab in self.inferer.slabs(pre.to(self.device), self.window_scores, layout):
            inverter.add(slab)
        label = MetaTensor(inverter.result().unsqueeze(0), meta={**image.meta, "affine": image.affine.clone()})
        return self.postprocess(label)

    def predict_case(self, sources: Mapping[str, str | os.PathLike]) -> tuple[MetaTensor, MetaTensor]:
        """Assemble the contract's channels from files / DICOM folders, then :meth:`predict`."""
        from medseg.data.channels import assemble_channels

        data = self.contract.data
        image = assemble_channels(
            {k: Path(v) for k, v in sources.items()},
            data.channels,
            resample=data.resample_channels,
            tol_mm=data.geometry_tolerance_mm,
            spatial_dims=data.file_dims,
        )
        return image, self.predict(image)

    @property
    def file_dims(self) -> int:
        """Spatial dims of the input files: 3 for 3D models and for 2D models applied slice-wise to volumes."""
        return self.contract.file_dims
