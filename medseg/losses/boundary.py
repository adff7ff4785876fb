"""Boundary loss (Kervadec et al. 2019, "Boundary loss for highly unbalanced segmentation", MIDL / MedIA 2021).

The loss is the mean of the predicted probability times the signed distance map of the ground truth::

    loss = mean over (batch, kept classes, voxels) of  p_c(x) * phi_c(x)

``phi_c`` is precomputed once per sample in the data pipeline by :class:`medseg.data.distance.SignedDistanceMap`
(negative inside class ``c``, positive outside, in millimetres, all zeros for a class absent from the image).
The loss is therefore in millimetres, can be negative, and for a fixed ``phi`` it is smallest when the
probabilities are 1 exactly on the voxels with ``phi < 0`` (the ground truth) and 0 elsewhere.
Kervadec et al. use it together with a region loss (Dice); see :mod:`medseg.losses.compound`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from medseg.losses.dice import ACTIVATIONS, _check_bool, _check_choice, activate, check_input

logger = logging.getLogger(__name__)


class BoundaryLoss(nn.Module):
    """Mean over foreground classes of ``probability * signed distance map``.

    Call as ``loss(input, target, dist)``: ``input`` are logits (B, C, *spatial), ``dist`` the signed distance maps
    (B, C, *spatial) -- one channel per input channel, as produced by ``SignedDistanceMapd`` and collated.
    ``target`` is not used by the formula; it is accepted so that every loss in medseg is called the same way
    (``loss(pred, target, dist=dist)``) and only its batch and spatial sizes are checked against ``input``.

    Args:
        include_background: also use channel 0. The default ``False`` follows Kervadec et al. (foreground classes
            only); ``False`` needs at least two channels, a single-channel sigmoid output needs ``True``.
        activation: ``"softmax"`` (default), ``"sigmoid"`` or ``"none"`` (input already holds probabilities).
    """

    requires_dist = True

    def __init__(self, include_background: bool = False, activation: str = "softmax") -> None:
        super().__init__()
        self.include_background = _check_bool("include_background", include_background)
        self.activation = _check_choice("activation", activation, ACTIVATIONS)

    def forward(self, input: torch.Tensor, target: torch.Tensor | None, dist: torch.Tensor) -> torch.Tensor:
        """Boundary loss of ``input`` given the ground-truth signed distance maps ``dist``."""
        check_input(input)
        if not isinstance(dist, torch.Tensor):
            raise ValueError(
                "BoundaryLoss needs the signed distance maps: call loss(input, target, dist) with dist of shape "
                f"{tuple(input.shape)}, got {type(dist).__name__}"
            )
        if dist.shape != input.shape:
            raise ValueError(
                f"dist must have the input's shape (B, C, *spatial), got input {tuple(input.shape)} and "
                f"dist {tuple(dist.shape)}"
            )
        if target is not None and (target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]):
            raise ValueError(
                f"target batch and spatial sizes must match the input's, got input {tuple(input.shape)} and "
                f"target {tuple(target.shape)}"
            )
        probs = activate(input.float(), self.activation)
        dist = dist.to(device=probs.device, dtype=torch.float32)
        if not self.include_background:
            if input.shape[1] < 2:
                raise ValueError(
                    f"include_background=False needs at least 2 channels, got input {tuple(input.shape)}; "
                    "a single-channel output has no background channel, use include_background=True"
                )
            probs, dist = probs[:, 1:], dist[:, 1:]
        return torch.mean(probs * dist)
