"""The layer factory of medseg's networks: one :class:`LayerFactory` makes conv, norm, activation, dropout,
pooling and up-convolution layers for ``spatial_dims`` 2 or 3.

The factory turns ``spatial_dims`` plus the options (normalisation, activation, dropout) into layers, so every
network serves 2D and 3D from one argument.

Normalisation (``norm``):

- ``"batch"``: ``BatchNorm{2,3}d``.
- ``"instance"``: :class:`~medseg.nets.instance_norm.InstanceNorm` (a ``GroupNorm`` with one group per channel,
  faster on CPU than ``InstanceNorm{2,3}d`` and exact in any memory layout; see :mod:`medseg.nets.instance_norm`).
- ``"none"``: no normalisation; convolutions then get a bias (they have none when a normalisation follows,
  since the normalisation removes a per-channel constant anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from medseg.errors import ConfigError
from medseg.nets.instance_norm import InstanceNorm
from medseg.nets.options import SPATIAL_DIMS, check_choice

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


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
