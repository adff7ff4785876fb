"""The common set-up of the UNet-shaped networks (:class:`UNetFamily`) and the memory layout of their activations.

:class:`UNetFamily` checks the shared options, records them for :attr:`~UNetFamily.config`, builds the encoder and
leaves the decoder to its subclasses (:class:`medseg.nets.UNet`, :class:`medseg.nets.UNetPlusPlus`).

Memory format (``memory_format``, a runtime setting of :class:`UNetFamily`, not part of the architecture or the
checkpoints): ``"channels_last"`` runs 3D networks in ``torch.channels_last_3d``, ``"contiguous"`` never, and
``"auto"`` (default) does so when training on the CPU: always in deterministic mode (``train.deterministic``, so
that a run replays bit for bit whatever the machine's load), else when a one-off measurement on this machine finds
it faster (:func:`channels_last_faster`); in eval mode ``"auto"`` keeps the default layout (the
:class:`~medseg.inference.Predictor` chooses its own, so a study's labels never depend on a timing). Why: on CPUs without AVX-512, oneDNN has no JIT kernel for the weight gradient of
a 3D convolution in its blocked (default-layout) format and falls back to im2col + GEMM, which makes the backward
pass 5-10x the forward (a 16-channel 64^3 convolution: 3.7 s forward + backward on 2 threads in the default layout,
0.7 s channels-last); with AVX-512 both layouts have JIT kernels and are within ~15% of each other, either way
depending on sizes and threads, hence a measurement rather than a CPU-feature rule. Only the activations are converted
(the input, and the first convolution's output since a 1-channel input gives oneDNN no layout to follow): the
outputs are returned contiguous and the weights keep their layout (oneDNN reorders them per call, which costs
no more than converting them), so checkpoints and optimizers see no difference.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medseg.nets.blocks import encoder_stages
from medseg.nets.layers import LayerFactory
from medseg.nets.options import check_choice, check_unet_options
from medseg.nets.shapes import check_input, is_tracing, pad_to_multiple

logger = logging.getLogger(__name__)

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@functools.cache
def channels_last_faster(channels: int, threads: int) -> bool:
    """Whether a 3x3x3 convolution's forward + backward is faster channels-last than in the default layout here.

    Measured once per process (and per ``channels`` / ``threads``, which callers pass as
    ``torch.get_num_threads()``) on the CPU: a ``channels`` -> ``channels`` convolution of a 2 x ``channels`` x 24^3
    tensor, the fastest of 3 alternating runs of each layout after one warm-up; channels-last must win by 10%.
    Takes 0.1-1 s.
    """
    width = max(1, min(int(channels), 64))
    best = {False: float("inf"), True: float("inf")}
    # leaves the caller's RNG state untouched; works when called under no_grad or inference_mode
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(0)
        conv = nn.Conv3d(width, width, 3, padding=1, bias=False)
        x = torch.randn(2, width, 24, 24, 24)
        for rep in range(4):
            for channels_last in (False, True):
                inp = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
                inp = inp.detach().requires_grad_()
                start = time.perf_counter()
                conv(inp).sum().backward()
                if rep:
                    best[channels_last] = min(best[channels_last], time.perf_counter() - start)
    faster = best[True] < 0.9 * best[False]
    logger.info(
        "conv3d forward+backward, %d channels, %d threads: %.1f ms channels-last, %.1f ms default layout -> %s",
        width,
        threads,
        1e3 * best[True],
        1e3 * best[False],
        "channels-last" if faster else "default layout",
    )
    return faster


class UNetFamily(nn.Module):
    """Common set-up of the UNet-shaped networks (:class:`medseg.nets.UNet`, :class:`medseg.nets.UNetPlusPlus`).

    The constructor checks the shared options (:func:`check_unet_options`, then :class:`LayerFactory`), sets the
    attributes ``spatial_dims``, ``in_channels``, ``out_channels``, ``depth`` (``len(features) - 1``),
    ``size_multiple`` (``2**depth``) and ``deep_supervision``, records the options for :attr:`config`, builds the
    encoder (:func:`encoder_stages`) and finally calls :meth:`_build_decoder`, where a subclass adds its decoder and
    output heads. Subclasses set ``registry_name``. The arguments are documented on :class:`medseg.nets.UNet`.
    """

    registry_name: str = ""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        *,
        norm: str = "instance",
        activation: str = "leakyrelu",
        dropout: float = 0.0,
        upsample: str = "deconv",
        downsample: str = "maxpool",
        residual: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        features = check_unet_options(
            spatial_dims,
            in_channels,
            out_channels,
            features,
            upsample,
            downsample,
            residual,
            deep_supervision,
        )
        factory = LayerFactory(spatial_dims, norm=norm, activation=activation, dropout=dropout)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = len(features) - 1
        self.size_multiple = 2**self.depth
        self.deep_supervision = deep_supervision
        self._config: dict[str, Any] = {
            "name": self.registry_name,
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": list(features),
            "norm": norm,
            "activation": activation,
            "dropout": float(dropout),
            "upsample": upsample,
            "downsample": downsample,
            "residual": residual,
            "deep_supervision": deep_supervision,
        }

        self.encoder = encoder_stages(factory, in_channels, features, downsample, residual)
        self._build_decoder(factory, features, upsample, residual)
        self.memory_format = "auto"
        first_conv = next(m for m in self.encoder[0].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
        first_conv.register_forward_hook(self._relayout)

    @property
    def memory_format(self) -> str:
        """Layout of the activations: ``"auto"`` (channels-last for 3D on the CPU where measured faster),
        ``"channels_last"`` (3D networks) or ``"contiguous"``; see :mod:`medseg.nets.family`. A runtime setting, not
        saved in :attr:`config`."""
        return self._memory_format

    @memory_format.setter
    def memory_format(self, value: str) -> None:
        check_choice("memory_format", value, MEMORY_FORMATS)
        self._memory_format = value

    def channels_last_for(self, x: torch.Tensor) -> bool:
        """Whether this forward pass of ``x`` runs in ``torch.channels_last_3d`` (never while tracing/exporting)."""
        if self.spatial_dims != 3 or x.ndim != 5 or is_tracing() or self._memory_format == "contiguous":
            return False
        if self._memory_format == "channels_last":
            return True
        if x.device.type != "cpu" or not self.training:
            return False  # inference: the Predictor chooses, so that a study's labels never depend on timing
        if torch.are_deterministic_algorithms_enabled():
            return True  # a replayable run must not depend on a timing measurement: the layout never much slower
        return channels_last_faster(self._config["features"][0], torch.get_num_threads())

    def _build_decoder(
        self, factory: LayerFactory, features: tuple[int, ...], upsample: str, residual: bool
    ) -> None:
        """Add the decoder and output heads (called once, at the end of ``__init__``, after the encoder)."""
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments plus ``name``: ``medseg.nets.build_network(**net.config)`` rebuilds the net."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._config.items()}

    def _check_and_pad(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Check the input's shape (:func:`check_input`), then :func:`pad_to_multiple` of ``size_multiple``; the
        result is in the layout of :meth:`channels_last_for`."""
        check_input(x, self.spatial_dims, self.in_channels)
        x, pads = pad_to_multiple(x, self.size_multiple)
        if self.channels_last_for(x):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, pads

    def _relayout(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> torch.Tensor:
        """Forward hook of the first convolution: its output goes channels-last when this pass runs so.

        A 1-channel input is laid out the same in both formats, so the first convolution cannot tell oneDNN to
        work channels-last; from its (multi-channel) output on, the layout propagates through the network.
        """
        if self.channels_last_for(out) and not out.is_contiguous(memory_format=torch.channels_last_3d):
            return out.contiguous(memory_format=torch.channels_last_3d)
        return out

    @staticmethod
    def _contiguous(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Outputs in the default layout whatever the activations' layout (a no-op when already contiguous)."""
        if isinstance(out, list):
            return [t.contiguous() for t in out]
        return out.contiguous()
