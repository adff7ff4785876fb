"""UNet++ (Zhou et al. 2018): nested dense skip connections, deep supervision and inference-time pruning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.nets.blocks import UpConcat
from medseg.nets.family import UNetFamily
from medseg.nets.layers import LayerFactory
from medseg.nets.shapes import crop_padding

logger = logging.getLogger(__name__)


class UNetPlusPlus(UNetFamily):
    """UNet++ for ``spatial_dims`` = 2 or 3, built from the same blocks as :class:`medseg.nets.UNet`.

    Nodes: ``X(i, 0)`` is encoder level ``i`` (same encoder as the UNet). For ``j >= 1``,
    ``X(i, j) = H([X(i, 0), ..., X(i, j-1), Up(X(i+1, j-1))])``: the node upsamples the node below-left, concatenates
    it after all earlier nodes of its row and applies the two-convolution block; it has ``features[i]`` channels.
    ``X(0, depth)`` is the full network's output node (``depth = len(features) - 1``).

    Outputs: 1x1 heads on ``X(0, 1..depth)`` when ``deep_supervision`` is on, else only on ``X(0, depth)``.

    - training with ``deep_supervision=True``: a list of full-resolution logits, **deepest node first**:
      ``[head(X(0, depth)), head(X(0, depth-1)), ..., head(X(0, 1))]`` (index 0 is the main output, as for the
      UNet, so a deep-supervision loss weights it most).
    - otherwise (training without deep supervision, or eval): one tensor, ``head(X(0, depth))``; in eval with
      ``prune_depth = L`` it is ``head(X(0, L))`` and only the sub-network up to ``X(0, L)`` is computed (encoder
      levels ``0..L`` and nodes with ``i + j <= L``), as in the UNet++ paper's pruning. The head is never averaged.

    Any input size works: zero padding at the high end of each axis to a multiple of ``2**depth`` (also when pruned,
    so a pruned net gives exactly the head ``L`` output of the full net) and cropping back.

    Args:
        spatial_dims, in_channels, out_channels, features, norm, activation, dropout, upsample, downsample, residual:
            as for :class:`medseg.nets.UNet`.
        deep_supervision: heads on every ``X(0, j)``; needed for pruning.
        prune_depth: ``None`` (full network) or ``L`` in ``1..depth``; used in eval mode only. Also settable later
            as the attribute ``net.prune_depth``. ``L < depth`` needs ``deep_supervision=True`` (the shallower heads
            exist and were trained only then).

    Raises:
        medseg.errors.ConfigError: (a ``ValueError``) for an invalid option, naming it.
    """

    registry_name = "unetpp"

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
        prune_depth: int | None = None,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            features,
            norm=norm,
            activation=activation,
            dropout=dropout,
            upsample=upsample,
            downsample=downsample,
            residual=residual,
            deep_supervision=deep_supervision,
        )
        self.prune_depth = prune_depth  # validated by the property setter

    def _build_decoder(
        self, factory: LayerFactory, features: tuple[int, ...], upsample: str, residual: bool
    ) -> None:
        # nodes[i][j - 1] computes X(i, j): j skips of features[i] channels plus the upsampled X(i+1, j-1)
        self.nodes = nn.ModuleList(
            nn.ModuleList(
                UpConcat(factory, features[i + 1], j * features[i], features[i], upsample, residual)
                for j in range(1, self.depth - i + 1)
            )
            for i in range(self.depth)
        )
        # heads[j - 1] reads X(0, j) with deep supervision; without it heads[0] reads X(0, depth)
        n_heads = self.depth if self.deep_supervision else 1
        self.heads = nn.ModuleList(factory.head(features[0], self.out_channels) for _ in range(n_heads))

    @property
    def prune_depth(self) -> int | None:
        """Depth ``L`` of the sub-network used in eval mode (``None``: the full network)."""
        return self._prune_depth

    @prune_depth.setter
    def prune_depth(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.depth:
                raise ConfigError(f"prune_depth must be None or an integer in 1..{self.depth}, got {value!r}")
            if value < self.depth and not self.deep_supervision:
                raise ConfigError(
                    f"prune_depth={value} needs deep_supervision=True: without it only X(0, {self.depth}) has a head"
                )
        self._prune_depth = value

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (with the current ``prune_depth``) plus ``name``, for ``build_network(**cfg)``."""
        return {**super().config, "prune_depth": self.prune_depth}

    def _head(self, j: int) -> nn.Module:
        return self.heads[j - 1] if self.deep_supervision else self.heads[0]

    def _top_row(self, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """Compute X(0, 1..depth) (only nodes with i + j <= depth), one anti-diagonal at a time."""
        rows: list[list[torch.Tensor]] = [[self.encoder[0](x)]]
        for k in range(1, depth + 1):
            rows.append([self.encoder[k](rows[k - 1][0])])
            for i in range(k - 1, -1, -1):  # X(k-1, 1), X(k-2, 2), ..., X(0, k)
                j = k - i
                rows[i].append(self.nodes[i][j - 1](rows[i + 1][j - 1], rows[i]))
        return rows[0][1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, out_channels, *spatial) for ``x`` (B, in_channels, *spatial); a list with deep supervision
        in training mode (see the class docstring)."""
        x, pads = self._check_and_pad(x)
        depth = self.depth if self.training or self.prune_depth is None else self.prune_depth
        top = self._top_row(x, depth)
        if self.training and self.deep_supervision:
            return self._contiguous(
                [crop_padding(self._head(j)(top[j - 1]), pads) for j in range(depth, 0, -1)]
            )
        return self._contiguous(crop_padding(self._head(depth)(top[depth - 1]), pads))
