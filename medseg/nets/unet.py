"""UNet for 2D and 3D segmentation, optionally residual (ResUNet) and deeply supervised."""

from __future__ import annotations

import logging

import torch
from torch import nn

from medseg.nets.blocks import UpConcat
from medseg.nets.family import UNetFamily
from medseg.nets.layers import LayerFactory
from medseg.nets.shapes import crop_padding

logger = logging.getLogger(__name__)


class UNet(UNetFamily):
    """UNet (Ronneberger et al. 2015) for ``spatial_dims`` = 2 or 3.

    Encoder: ``len(features)`` levels of two 3x3 convolutions; between levels a 2x2 max pooling (or a stride-2 first
    convolution) halves every spatial size and the width goes to the next entry of ``features`` (usually double).
    Decoder: per level a 2x2 transposed convolution (or a 1x1 convolution plus linear interpolation) to the level's
    width, concatenation with the encoder map of that level, two 3x3 convolutions. A 1x1 convolution gives the
    logits.

    Any input size works: the input is zero-padded at the high end of each axis to a multiple of
    :attr:`size_multiple` (``2**depth``, ``depth = len(features) - 1``) and the outputs are cropped back. (Torch's
    own limit: in training, instance/batch norm refuse a single value per channel, i.e. batch 1 with an input of at
    most ``2**depth`` voxels along every axis.)

    The constructor (option checks, attributes, :attr:`config`, encoder) is :class:`medseg.nets.family.UNetFamily`'s,
    shared with UNet++; this class adds the decoder and the heads.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits, one per class).
        features: encoder width per level, at least two levels; the default has depth 4.
        norm: ``"instance"`` (default), ``"batch"`` or ``"none"``; see :mod:`medseg.nets.layers`.
        activation: ``"leakyrelu"`` (slope 0.01, default), ``"relu"``, ``"prelu"``, ``"gelu"``, ``"elu"``,
            ``"silu"``.
        dropout: element-wise dropout after every activation, in [0, 1).
        upsample: ``"deconv"`` (transposed convolution) or ``"linear"`` (bi/trilinear interpolation + 1x1 conv).
        downsample: ``"maxpool"`` or ``"strided"`` (stride-2 convolution).
        residual: use residual blocks (ResUNet) instead of plain double convolutions.
        deep_supervision: add 1x1 heads on the decoder levels 1..depth-1. In training mode ``forward`` then returns a
            list ``[full resolution, level 1 (1/2), level 2 (1/4), ...]``; the map of level ``i`` has
            ``ceil(size / 2**i)`` voxels per axis and its voxel ``k`` covers input voxels ``[k 2**i, (k+1) 2**i)``.
            In eval mode, or without deep supervision, ``forward`` returns the full-resolution tensor.

    Raises:
        medseg.errors.ConfigError: (a ``ValueError``) for an invalid option; the message names it and, for choices,
            lists the valid values.
    """

    registry_name = "unet"

    def _build_decoder(
        self, factory: LayerFactory, features: tuple[int, ...], upsample: str, residual: bool
    ) -> None:
        # decoder[k] brings level depth-k up to level depth-k-1
        self.decoder = nn.ModuleList(
            UpConcat(factory, features[level + 1], features[level], features[level], upsample, residual)
            for level in reversed(range(self.depth))
        )
        self.head = factory.head(features[0], self.out_channels)
        # aux_heads[level - 1] predicts from decoder level `level` (1..depth-1)
        self.aux_heads = nn.ModuleList(
            factory.head(features[level], self.out_channels)
            for level in range(1, self.depth)
            if self.deep_supervision
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, out_channels, *spatial) for ``x`` (B, in_channels, *spatial); a list with deep supervision
        in training mode (see the class docstring)."""
        x, pads = self._check_and_pad(x)
        skips: list[torch.Tensor] = []
        for stage in self.encoder[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.encoder[-1](x)

        supervise = self.deep_supervision and self.training
        aux: list[torch.Tensor] = []
        for k, up in enumerate(self.decoder):
            level = self.depth - 1 - k
            x = up(x, [skips[level]])
            if supervise and level >= 1:
                aux.append(crop_padding(self.aux_heads[level - 1](x), pads, scale=2**level))
        out = crop_padding(self.head(x), pads)
        if supervise:
            return self._contiguous([out, *reversed(aux)])
        return self._contiguous(out)
