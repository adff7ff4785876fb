"""Soft Dice loss and Dice + cross-entropy: medseg's option names and input checks around MONAI's Dice loss.

Both losses take network output ``input`` of shape (B, C, *spatial) and a target that is either one-hot / binary
masks of the same shape or, with ``to_onehot_y=True``, class indices of shape (B, 1, *spatial).

Per class ``c`` (and per batch item unless ``batch=True``) the soft Dice loss is::

    1 - (2 * sum(p * g) + smooth_nr) / (sum(p) + sum(g) + smooth_dr)

where ``p`` are the activated predictions and ``g`` the one-hot target, the sums running over the spatial axes
(and over the batch axis too when ``batch=True``).

What is MONAI's and what is ours:

- :class:`DiceLoss` computes with ``monai.losses.DiceLoss`` (default options: no squared prediction, no Jaccard, no
  class weights). medseg keeps its class for its option names (``activation``, as configs and checkpoints spell
  it), the validation of every option in ``__init__`` and the checks in ``forward`` that MONAI leaves out or only
  warns about (target shape, integer class indices in range, ``include_background=False`` or ``softmax`` on a
  single channel). benchmarks/losses.py (2 x 4 x 96^3 patch, forward + backward on the CPU) measures it against
  the bare MONAI loss: the same loss values and gradients to the last bit, 0.6-1.2x the time (noise of a shared
  machine), 1.0-1.1x the peak memory. The former own implementation gave the same values but took 1.2-1.9x
  MONAI's time and 1.3x its peak memory (measured when switching), so it was replaced.
- :class:`DiceCELoss` holds a :class:`DiceLoss` and adds torch's cross-entropy itself instead of using
  ``monai.losses.DiceCELoss``: for a multi-channel ``sigmoid`` output MONAI applies the softmax cross-entropy
  across channels, which is not the loss of independent sigmoid labels (the binary one is).
  ``tests/test_losses.py::test_monai_dice_ce_multichannel_sigmoid_differs`` shows the difference (0.1 to 1.1 on
  random logits); for softmax and single-channel sigmoid outputs the two agree to 1e-6
  (``test_dice_ce_matches_monai``).
"""

from __future__ import annotations

import logging
import math

import monai.losses
import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot
from torch import nn

logger = logging.getLogger(__name__)

ACTIVATIONS = ("softmax", "sigmoid", "none")
REDUCTIONS = ("mean", "sum", "none")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_number(name: str, value: object, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_softmax(input: torch.Tensor) -> None:
    if input.shape[1] < 2:
        raise ValueError(
            f"activation='softmax' needs at least 2 channels, got input of shape {tuple(input.shape)}; "
            "use activation='sigmoid' for a single-channel output"
        )


def activate(input: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply ``"softmax"`` (over the channel axis), ``"sigmoid"`` or ``"none"`` to network output."""
    if activation == "softmax":
        _check_softmax(input)
        return torch.softmax(input, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(input)
    return input


def check_input(input: torch.Tensor) -> None:
    """Network output must be (B, C, *spatial) with at least one spatial axis."""
    if input.ndim < 3:
        raise ValueError(
            f"input must have shape (B, C, *spatial) with at least one spatial axis, got {tuple(input.shape)}"
        )


def check_target(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool) -> None:
    """Raise ValueError unless ``target`` fits ``input`` (B, C, *spatial).

    With ``to_onehot_y`` the target must be class indices (B, 1, *spatial), integers in ``[0, C)``, and the input
    must have at least two channels; otherwise it must have the input's shape.
    """
    if target.ndim != input.ndim:
        raise ValueError(
            f"input and target must have the same number of dimensions, got input {tuple(input.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if not to_onehot_y:
        if target.shape != input.shape:
            raise ValueError(
                "target must have the same shape as input (one-hot or binary masks; use to_onehot_y=True for "
                f"class indices of shape (B, 1, *spatial)), got input {tuple(input.shape)} and "
                f"target {tuple(target.shape)}"
            )
        return
    num_classes = input.shape[1]
    if num_classes < 2:
        raise ValueError(
            f"to_onehot_y=True needs an input with at least 2 channels, got input {tuple(input.shape)}; "
            "a single-channel output takes a binary target of shape (B, 1, *spatial) with to_onehot_y=False"
        )
    expected = (input.shape[0], 1, *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"with to_onehot_y=True the target must have shape (B, 1, *spatial) = {expected}, "
            f"got target {tuple(target.shape)} for input {tuple(input.shape)}"
        )
    if target.is_floating_point() and bool((target != torch.round(target)).any()):
        raise ValueError("with to_onehot_y=True the target must hold integer class indices, found fractions")
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target class indices must be in [0, {num_classes - 1}] for an input with {num_classes} channels, "
            f"found values in [{lo}, {hi}]"
        )


def _check_background(input: torch.Tensor, include_background: bool) -> None:
    if not include_background and input.shape[1] < 2:
        raise ValueError(
            f"include_background=False needs at least 2 channels, got input {tuple(input.shape)}; "
            "a single-channel output has no background channel, use include_background=True"
        )


class DiceLoss(nn.Module):
    """Soft Dice loss (Milletari et al. 2016), the mean of ``1 - Dice`` over classes (and batch items).

    Computed by ``monai.losses.DiceLoss``; this class validates the options and the inputs (module docstring).

    Args:
        include_background: keep channel 0 in the loss. ``False`` drops it; this needs an input with at least
            two channels (a single-channel sigmoid output has no background channel and raises ValueError).
        to_onehot_y: the target holds class indices (B, 1, *spatial) and is one-hot encoded with as many classes
            as the input has channels. Otherwise the target must have the input's shape.
        activation: applied to the input first: ``"softmax"`` (over channels, for logits of exclusive classes),
            ``"sigmoid"`` (for logits of independent / binary labels) or ``"none"`` (input already holds
            probabilities).
        smooth_nr: added to the numerator ``2 * intersection``, >= 0.
        smooth_dr: added to the denominator ``sum(p) + sum(g)``, > 0 so that an empty class with an empty
            prediction gives loss ``1 - smooth_nr / smooth_dr`` (0 with the defaults) instead of NaN.
        batch: sum intersection and sizes over the batch before dividing (one Dice per class for the whole
            batch) instead of one Dice per batch item and class.
        reduction: ``"mean"`` or ``"sum"`` of the per-(item, class) losses, or ``"none"`` for a tensor of shape
            (B, C') -- (C',) when ``batch=True`` -- where C' is the number of classes kept.
    """

    requires_dist = False

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        activation: str = "softmax",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.include_background = _check_bool("include_background", include_background)
        self.to_onehot_y = _check_bool("to_onehot_y", to_onehot_y)
        self.activation = _check_choice("activation", activation, ACTIVATIONS)
        self.smooth_nr = _check_number("smooth_nr", smooth_nr, minimum=0.0)
        self.smooth_dr = _check_number("smooth_dr", smooth_dr, minimum=0.0, strict=True)
        self.batch = _check_bool("batch", batch)
        self.reduction = _check_choice("reduction", reduction, REDUCTIONS)
        self.monai_loss = monai.losses.DiceLoss(
            include_background=self.include_background,
            to_onehot_y=self.to_onehot_y,
            sigmoid=self.activation == "sigmoid",
            softmax=self.activation == "softmax",
            smooth_nr=self.smooth_nr,
            smooth_dr=self.smooth_dr,
            batch=self.batch,
            reduction=self.reduction,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` (B, C, *spatial) against ``target`` (see the class docstring for its shape)."""
        check_input(input)
        check_target(input, target, self.to_onehot_y)
        _check_background(input, self.include_background)
        if self.activation == "softmax":
            _check_softmax(input)
        if not self.to_onehot_y:
            target = target.to(dtype=torch.float32)
        loss = self.monai_loss(input.float(), target.to(input.device))
        if self.reduction == "none":  # MONAI keeps singleton spatial axes: (B, C', 1, ...) or (C', 1, ...)
            return loss.reshape(loss.shape[: 1 if self.batch else 2])
        return loss


class DiceCELoss(nn.Module):
    """``lambda_dice * DiceLoss + lambda_ce * cross-entropy``, both on logits.

    The cross-entropy part follows the activation: ``"softmax"`` uses the multi-class cross-entropy
    (``torch.nn.functional.cross_entropy`` on class indices), ``"sigmoid"`` the per-channel binary cross-entropy
    with logits (``binary_cross_entropy_with_logits``, each channel an independent label). Cross-entropy always
    uses every channel; ``include_background`` applies to the Dice part only. ``activation="none"`` is refused
    because cross-entropy needs logits. With ``softmax`` and ``to_onehot_y=False`` the target must be exactly
    one-hot (one 1 per voxel); soft labels are refused.

    Not ``monai.losses.DiceCELoss``: for a multi-channel input with ``sigmoid`` it applies the softmax
    cross-entropy; we use the binary one, which is the cross-entropy of independent sigmoid outputs. The two agree
    for softmax and for single-channel sigmoid outputs (module docstring).

    Args:
        lambda_dice: weight of the Dice part, >= 0.
        lambda_ce: weight of the cross-entropy part, >= 0.
        reduction: ``"mean"`` or ``"sum"``, applied to both parts.
        The other arguments are those of :class:`DiceLoss`.
    """

    requires_dist = False

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        activation: str = "softmax",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        reduction: str = "mean",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(
                f"activation must be one of ['softmax', 'sigmoid'] for DiceCELoss (cross-entropy needs logits), "
                f"got {activation!r}"
            )
        self.reduction = _check_choice("reduction", reduction, ("mean", "sum"))
        self.lambda_dice = _check_number("lambda_dice", lambda_dice, minimum=0.0)
        self.lambda_ce = _check_number("lambda_ce", lambda_ce, minimum=0.0)
        self.activation = activation
        self.to_onehot_y = _check_bool("to_onehot_y", to_onehot_y)
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            activation=activation,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            reduction=reduction,
        )

    def cross_entropy(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The cross-entropy part alone (shapes as in :meth:`forward`)."""
        check_input(input)
        check_target(input, target, self.to_onehot_y)
        logits = input.float()
        target = target.to(input.device)
        if self.activation == "sigmoid":
            onehot = one_hot(target, input.shape[1], dim=1) if self.to_onehot_y else target.to(torch.float32)
            return F.binary_cross_entropy_with_logits(logits, onehot, reduction=self.reduction)
        _check_softmax(input)
        if self.to_onehot_y:
            index = target[:, 0].long()
        else:
            onehot = target.to(torch.float32)
            binary = bool(torch.all((onehot == 0) | (onehot == 1)))
            if not binary or not bool(torch.all(onehot.sum(dim=1) == 1)):
                raise ValueError(
                    "with activation='softmax' a one-hot target must hold exactly one 1 per voxel"
                )
            index = onehot.argmax(dim=1)
        return F.cross_entropy(logits, index, reduction=self.reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the Dice and cross-entropy losses of ``input`` against ``target``."""
        dice = self.dice(input, target)
        ce = self.cross_entropy(input, target)
        return self.lambda_dice * dice + self.lambda_ce * ce
