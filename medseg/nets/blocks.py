"""The building blocks of medseg's UNet-shaped networks: convolution units, encoder stages and decoder nodes.

UNet and UNet++ are both built from :class:`EncoderStage` (via :func:`encoder_stages`) and :class:`UpConcat`;
UNet++ only adds its nested wiring. Every block takes its layers from a
:class:`~medseg.nets.layers.LayerFactory`, so one block serves 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.nets.layers import LayerFactory
from medseg.nets.options import DOWNSAMPLE_MODES, UPSAMPLE_MODES, check_choice


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
