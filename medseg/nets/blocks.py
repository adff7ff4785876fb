"""Building blocks shared by medseg's networks: a layer factory for 2D/3D and the UNet encoder/decoder blocks.

One :class:`LayerFactory` turns ``spatial_dims`` plus the options (normalisation, activation, dropout) into layers,
so every network serves 2D and 3D from one argument. UNet and UNet++ are both built from :class:`EncoderStage`
and :class:`UpConcat`; UNet++ only adds its nested wiring.

Normalisation (``norm``):

- ``"batch"``: ``BatchNorm{2,3}d``.
- ``"instance"``: :class:`InstanceNorm`, a ``GroupNorm`` with one group per channel. It computes exactly what
  ``InstanceNorm{2,3}d(affine=True)`` computes (per sample and channel statistics, in training and in eval), and is
  faster on CPU (1.3-3x forward, 1.2-2x forward+backward at 96^3 / 48^3 / 12^3 in our measurements with torch 2.13).
  On channels-last inputs it uses its own two-pass statistics (:func:`instance_norm`), since torch's channels-last
  group norm on CPU loses ~1e-2 on features with a large mean.

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
- ``"none"``: no normalisation; convolutions then get a bias (they have none when a normalisation follows,
  since the normalisation removes a per-channel constant anyway).

Shape helpers: networks pad the high end of every spatial axis with zeros up to a multiple of ``2**depth`` and crop
their outputs back (:func:`pad_to_multiple`, :func:`crop_padding`), so any input size works. When padding is not
needed (eager mode, sizes already multiples) nothing is copied.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

SPATIAL_DIMS = (2, 3)
UPSAMPLE_MODES = ("deconv", "linear")
DOWNSAMPLE_MODES = ("maxpool", "strided")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


def _affine_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.ndim - 2)


def _instance_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel mean and 1/std over the spatial axes (two-pass variance, any memory layout)."""
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.ndim)), keepdim=True, correction=0)
    return mean, torch.rsqrt(var + eps)


def _instance_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised ``x`` with the affine applied, mean, 1/std): ``(x - mean) * rstd * w + b`` in one fused pass."""
    mean, rstd = _instance_stats(x, eps)
    scale = rstd * weight.view(_affine_shape(x))
    return torch.addcmul(bias.view(_affine_shape(x)) - mean * scale, x, scale), mean, rstd


class _InstanceNormFunction(torch.autograd.Function):
    """Instance norm with a hand-written backward: two reductions and two fused passes, in the input's layout."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        out, mean, rstd = _instance_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return out

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        dims = tuple(range(2, x.ndim))
        count = x[0, 0].numel()
        sum_dy = dy.sum(dim=dims, keepdim=True)
        sum_dy_xhat = rstd * ((dy * x).sum(dim=dims, keepdim=True) - mean * sum_dy)
        a = rstd * weight.view(_affine_shape(x))
        b = -a * rstd * sum_dy_xhat / count
        c = -b * mean - a * sum_dy / count
        # dx = w rstd (dy - mean(dy) - xhat mean(dy xhat)) = a dy + b x + c
        dx = torch.addcmul(torch.addcmul(c, b, x), a, dy)
        return dx, sum_dy_xhat.sum(0).flatten(), sum_dy.sum(0).flatten(), None


def instance_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Affine instance normalisation of ``x`` (B, C, *spatial) in any memory layout, accurate to float rounding.

    Equal (to rounding) to ``F.group_norm(x, C, weight, bias, eps)``; the output keeps ``x``'s layout.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _InstanceNormFunction.apply(x, weight, bias, eps)
    return _instance_norm_forward(x, weight, bias, eps)[0]


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation with a learnt per-channel scale and shift, for any number of spatial dims.

    Implemented as ``GroupNorm(num_groups=channels)``: statistics per sample and channel over all spatial positions,
    identical to ``nn.InstanceNorm3d(channels, affine=True)`` (no running statistics, same in train and eval).
    Inputs in another layout than contiguous (channels-last) go through :func:`instance_norm`, which computes the
    same values to float rounding (torch's channels-last group norm does not, on CPU).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_groups=channels, num_channels=channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous() or _tracing():
            return super().forward(x)
        return instance_norm(x, self.weight, self.bias, self.eps)


#: Normalisation name -> {spatial_dims: class}, each called as ``cls(channels)``; ``"none"`` means no layer.
NORMS: dict[str, dict[int, type[nn.Module]] | None] = {
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {2: InstanceNorm, 3: InstanceNorm},
    "none": None,
}

#: Activation name -> (class, keyword arguments). In-place where autograd allows it (saves one activation map);
#: PReLU also gets ``num_parameters=channels`` (one learnt slope per channel).
ACTIVATIONS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "relu": (nn.ReLU, {"inplace": True}),
    "leakyrelu": (nn.LeakyReLU, {"negative_slope": 0.01, "inplace": True}),
    "prelu": (nn.PReLU, {}),
    "gelu": (nn.GELU, {}),
    "elu": (nn.ELU, {"inplace": True}),
    "silu": (nn.SiLU, {"inplace": True}),
}


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


def check_choice(option: str, value: object, valid: Sequence[object]) -> None:
    """Raise :class:`~medseg.errors.ConfigError` (a ``ValueError``) naming ``option`` unless ``value`` is valid."""
    if isinstance(value, bool) or value not in valid:
        choices = ", ".join(repr(v) for v in valid)
        raise ConfigError(f"{option}={value!r} is not valid; choose one of: {choices}")


def check_positive_int(option: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ConfigError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    return value


def check_features(features: Sequence[int]) -> tuple[int, ...]:
    """Validate encoder widths (one per level, at least two levels) and return them as a tuple."""
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise ConfigError(f"features must be a sequence of positive integers, got {features!r}")
    if len(features) < 2:
        raise ConfigError(f"features needs at least 2 levels (one downsampling), got {list(features)!r}")
    for i, width in enumerate(features):
        check_positive_int(f"features[{i}]", width)
    return tuple(features)


@dataclass(frozen=True)
class LayerFactory:
    """Makes the layers of one network: conv, norm, activation, pooling, up-convolutions for ``spatial_dims``.

    Args:
        spatial_dims: 2 or 3.
        norm: a key of :data:`NORMS`.
        activation: a key of :data:`ACTIVATIONS`.
        dropout: probability of the (element-wise) dropout after each activation, in [0, 1); 0 adds no layer.
    """

    spatial_dims: int
    norm: str = "instance"
    activation: str = "leakyrelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_choice("spatial_dims", self.spatial_dims, SPATIAL_DIMS)
        check_choice("norm", self.norm, list(NORMS))
        check_choice("activation", self.activation, list(ACTIVATIONS))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def has_norm(self) -> bool:
        return NORMS[self.norm] is not None

    def conv(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
        """A 'same' convolution (odd kernel); bias only when no normalisation follows."""
        return _CONV[self.spatial_dims](
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=not self.has_norm,
        )

    def head(self, in_channels: int, out_channels: int) -> nn.Module:
        """A 1x1 output convolution with bias (produces logits)."""
        return _CONV[self.spatial_dims](in_channels, out_channels, kernel_size=1)

    def norm_layer(self, channels: int) -> nn.Module | None:
        classes = NORMS[self.norm]
        return None if classes is None else classes[self.spatial_dims](channels)

    def act_layer(self, channels: int) -> nn.Module:
        cls, kwargs = ACTIVATIONS[self.activation]
        if cls is nn.PReLU:
            kwargs = {**kwargs, "num_parameters": channels}
        return cls(**kwargs)

    def dropout_layer(self) -> nn.Module | None:
        return nn.Dropout(p=self.dropout) if self.dropout > 0 else None

    def max_pool(self) -> nn.Module:
        return _MAX_POOL[self.spatial_dims](kernel_size=2, stride=2)

    def conv_transpose(self, in_channels: int, out_channels: int) -> nn.Module:
        """A 2x2 transposed convolution with stride 2: doubles every spatial size."""
        return _CONV_T[self.spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)

    @property
    def linear_mode(self) -> str:
        return _LINEAR_MODE[self.spatial_dims]


def _sequential(*layers: nn.Module | None) -> list[nn.Module]:
    return [layer for layer in layers if layer is not None]


class ConvNormAct(nn.Sequential):
    """Convolution (3x3 by default) -> normalisation -> activation -> dropout."""

    def __init__(
        self,
        factory: LayerFactory,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__(
            *_sequential(
                factory.conv(in_channels, out_channels, kernel_size, stride),
                factory.norm_layer(out_channels),
                factory.act_layer(out_channels),
                factory.dropout_layer(),
            )
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct`; the first one may be strided (``stride=2`` halves every spatial size)."""

    def __init__(self, factory: LayerFactory, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            ConvNormAct(factory, in_channels, out_channels, stride=stride),
            ConvNormAct(factory, out_channels, out_channels),
        )


class ResidualBlock(nn.Module):
    """ResUNet block: conv-norm-act(-dropout), conv-norm, plus a shortcut, then the activation.

    The shortcut is the identity when shapes match, else a 1x1 convolution (strided like the block) and a norm.
    """

    def __init__(self, factory: LayerFactory, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(factory, in_channels, out_channels, stride=stride)
        self.conv2 = nn.Sequential(
            *_sequential(factory.conv(out_channels, out_channels), factory.norm_layer(out_channels))
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                *_sequential(
                    factory.conv(in_channels, out_channels, kernel_size=1, stride=stride),
                    factory.norm_layer(out_channels),
                )
            )
        self.act = factory.act_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def conv_block(
    factory: LayerFactory, in_channels: int, out_channels: int, residual: bool, stride: int = 1
) -> nn.Module:
    """The two-convolution unit of every level: :class:`DoubleConv` or, with ``residual``, :class:`ResidualBlock`."""
    if residual:
        return ResidualBlock(factory, in_channels, out_channels, stride=stride)
    return DoubleConv(factory, in_channels, out_channels, stride=stride)


class EncoderStage(nn.Sequential):
    """One encoder level: optional 2x downsampling, then the conv block.

    ``downsample``: ``None`` (first level), ``"maxpool"`` (2x2 max pooling before the block) or ``"strided"``
    (the block's first 3x3 convolution has stride 2).
    """

    def __init__(
        self,
        factory: LayerFactory,
        in_channels: int,
        out_channels: int,
        downsample: str | None,
        residual: bool,
    ) -> None:
        if downsample is not None:
            check_choice("downsample", downsample, DOWNSAMPLE_MODES)
        layers: list[nn.Module] = []
        if downsample == "maxpool":
            layers.append(factory.max_pool())
        stride = 2 if downsample == "strided" else 1
        layers.append(conv_block(factory, in_channels, out_channels, residual, stride=stride))
        super().__init__(*layers)


class Upsample(nn.Module):
    """2x upsampling from ``in_channels`` to ``out_channels``.

    ``"deconv"``: a 2x2 transposed convolution with stride 2. ``"linear"``: a 1x1 convolution followed by
    (bi/tri)linear interpolation (``align_corners=False``). Interpolation weights sum to one, so the 1x1 convolution
    commutes with it exactly; applying it at the low resolution costs 2**spatial_dims times fewer operations.
    """

    def __init__(self, factory: LayerFactory, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        check_choice("upsample", mode, UPSAMPLE_MODES)
        self.mode = mode
        self.interp_mode = factory.linear_mode
        if mode == "deconv":
            self.conv = factory.conv_transpose(in_channels, out_channels)
        else:
            self.conv = factory.head(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.mode == "linear":
            x = F.interpolate(x, scale_factor=2.0, mode=self.interp_mode, align_corners=False)
        return x


class UpConcat(nn.Module):
    """Decoder node: upsample the deeper feature map, concatenate it after the skip connections, conv block.

    Args:
        factory: the layer factory.
        in_channels: channels of the deeper map (upsampled to ``out_channels``).
        skip_channels: total channels of the skip maps concatenated before the upsampled map.
        out_channels: output channels.
        upsample: ``"deconv"`` or ``"linear"``.
        residual: use :class:`ResidualBlock` instead of :class:`DoubleConv`.
    """

    def __init__(
        self,
        factory: LayerFactory,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        upsample: str,
        residual: bool,
    ) -> None:
        super().__init__()
        self.up = Upsample(factory, in_channels, out_channels, upsample)
        self.block = conv_block(factory, skip_channels + out_channels, out_channels, residual)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        # one concatenation of all skips and the upsampled map (UNet++ nodes have several skips)
        return self.block(torch.cat([*skips, self.up(x)], dim=1))


def _tracing() -> bool:
    """True while torch.export / torch.compile / TorchScript tracing: shapes may be symbolic there."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad the high end of each spatial axis of ``x`` (B, C, *spatial) up to a multiple of ``multiple``.

    Returns the padded tensor and the ``F.pad`` list used (last axis first, ``[0, pad]`` per axis), to be passed to
    :func:`crop_padding`. The low end is never padded, so voxel ``k`` of a level downsampled by ``2**i`` covers
    input voxels ``[k * 2**i, (k + 1) * 2**i)``. Eager calls with nothing to pad return ``x`` itself (no copy).
    While tracing the pad is always recorded (possibly of zero), so exported graphs work for every size.
    """
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % multiple]
    if _tracing() or any(pad != 0 for pad in pads):
        x = F.pad(x, pads)
    return x, pads


def crop_padding(y: torch.Tensor, pads: list[int], scale: int = 1) -> torch.Tensor:
    """Remove the padding added by :func:`pad_to_multiple` from ``y``, a map downsampled by ``scale``.

    At full resolution (``scale=1``) the output gets the input's size; at ``scale = 2**i`` it gets
    ``ceil(size / 2**i)`` per axis (the voxels that still see some input). Cropping is a negative ``F.pad`` because
    it traces into shape-generic graphs for torch.export and ONNX (slicing specialises on whether it crops).
    """
    crop = [-(pad // scale) for pad in pads]
    if not _tracing() and not any(crop):
        return y
    return F.pad(y, crop)


def encoder_stages(
    factory: LayerFactory, in_channels: int, features: Sequence[int], downsample: str, residual: bool
) -> nn.ModuleList:
    """The encoder levels X(0,0)..X(depth,0): level ``i`` outputs ``features[i]`` channels at 1/2**i resolution."""
    return nn.ModuleList(
        EncoderStage(
            factory,
            in_channels if i == 0 else features[i - 1],
            width,
            downsample=None if i == 0 else downsample,
            residual=residual,
        )
        for i, width in enumerate(features)
    )


def check_input(x: torch.Tensor, spatial_dims: int, in_channels: int) -> None:
    """Raise ValueError unless ``x`` is (B, in_channels, *spatial) with ``spatial_dims`` spatial axes."""
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"expected input of shape (B, {in_channels}, {', '.join('N' * spatial_dims)}) for a {spatial_dims}D network, "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"expected {in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )


def check_flag(option: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise a ConfigError naming ``option``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{option} must be true or false, got {value!r}")
    return value


def check_unet_options(
    spatial_dims: object,
    in_channels: object,
    out_channels: object,
    features: Sequence[int],
    upsample: object,
    downsample: object,
    residual: object,
    deep_supervision: object,
) -> tuple[int, ...]:
    """Validate the options UNet and UNet++ share; return the checked feature widths."""
    check_positive_int("spatial_dims", spatial_dims)
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    checked = check_features(features)
    check_choice("upsample", upsample, UPSAMPLE_MODES)
    check_choice("downsample", downsample, DOWNSAMPLE_MODES)
    check_flag("residual", residual)
    check_flag("deep_supervision", deep_supervision)
    return checked


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
        ``"channels_last"`` (3D networks) or ``"contiguous"``; see :mod:`medseg.nets.blocks`. A runtime setting, not
        saved in :attr:`config`."""
        return self._memory_format

    @memory_format.setter
    def memory_format(self, value: str) -> None:
        check_choice("memory_format", value, MEMORY_FORMATS)
        self._memory_format = value

    def channels_last_for(self, x: torch.Tensor) -> bool:
        """Whether this forward pass of ``x`` runs in ``torch.channels_last_3d`` (never while tracing/exporting)."""
        if self.spatial_dims != 3 or x.ndim != 5 or _tracing() or self._memory_format == "contiguous":
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
