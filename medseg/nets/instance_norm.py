"""Instance normalisation for the networks: a ``GroupNorm`` with one group per channel, plus a fused
two-pass version for channels-last inputs.

:class:`InstanceNorm` computes exactly what ``InstanceNorm{2,3}d(affine=True)`` computes (per sample and channel
statistics, in training and in eval), and is faster on CPU (1.3-3x forward, 1.2-2x forward+backward at 96^3 / 48^3 /
12^3 in our measurements with torch 2.13; ``benchmarks/nets.py``). On channels-last inputs it uses its own two-pass
statistics (:func:`instance_norm`, with a hand-written backward), since torch's channels-last group norm on CPU
loses ~1e-2 on features with a large mean (``tests/test_nets_speed.py`` checks values and gradients against
``F.group_norm``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medseg.nets.shapes import is_tracing


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
        if x.is_contiguous() or is_tracing():
            return super().forward(x)
        return instance_norm(x, self.weight, self.bias, self.eps)
