"""Soft Dice loss and Dice + cross-entropy.

Both losses take network output ``input`` of shape (B, C, *spatial) and a target that is either one-hot / binary
masks of the same shape or, with ``to_onehot_y=True``, class indices of shape (B, 1, *spatial).

Per class ``c`` (and per batch item unless ``batch=True``) the soft Dice loss is::

    1 - (2 * sum(p * g) + smooth_nr) / (sum(p) + sum(g) + smooth_dr)

where ``p`` are the activated predictions and ``g`` the one-hot target, the sums running over the spatial axes
(and over the batch axis too when ``batch=True``). This is the formula of ``monai.losses.DiceLoss`` with its default
options (no squared prediction, no Jaccard, no class weights), and the tests check the two agree.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
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


def activate(input: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply ``"softmax"`` (over the channel axis), ``"sigmoid"`` or ``"none"`` to network output."""
    if activation == "softmax":
        if input.shape[1] < 2:
            raise ValueError(
                f"activation='softmax' needs at least 2 channels, got input of shape {tuple(input.shape)}; "
                "use activation='sigmoid' for a single-channel output"
            )
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


def labels_to_onehot(target: torch.Tensor, num_classes: int, input_shape: torch.Size) -> torch.Tensor:
    """Turn class indices (B, 1, *spatial) into a float one-hot tensor (B, num_classes, *spatial).

    Raises ValueError if the shape does not match ``input_shape`` or a value is not an integer in
    ``[0, num_classes)``.
    """
    expected = (input_shape[0], 1, *input_shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"with to_onehot_y=True the target must have shape (B, 1, *spatial) = {expected}, "
            f"got target {tuple(target.shape)} for input {tuple(input_shape)}"
        )
    if target.is_floating_point():
        if bool((target != torch.round(target)).any()):
            raise ValueError(
                "with to_onehot_y=True the target must hold integer class indices, found fractions"
            )
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target class indices must be in [0, {num_classes - 1}] for an input with {num_classes} channels, "
            f"found values in [{lo}, {hi}]"
        )
    index = target.long()[:, 0]
    onehot = F.one_hot(index, num_classes)  # (B, *spatial, C)
    return onehot.movedim(-1, 1).to(dtype=torch.float32)


def prepare_target(
    input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (one-hot float target with the input's shape, class-index target (B, *spatial) or None)."""
    if target.ndim != input.ndim:
        raise ValueError(
            f"input and target must have the same number of dimensions, got input {tuple(input.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if to_onehot_y:
        if input.shape[1] < 2:
            raise ValueError(
                f"to_onehot_y=True needs an input with at least 2 channels, got input {tuple(input.shape)}; "
                "a single-channel output takes a binary target of shape (B, 1, *spatial) with to_onehot_y=False"
            )
        onehot = labels_to_onehot(target, input.shape[1], input.shape)
        return onehot.to(input.device), target[:, 0].long()
    if target.shape != input.shape:
        raise ValueError(
            "target must have the same shape as input (one-hot or binary masks; use to_onehot_y=True for "
            f"class indices of shape (B, 1, *spatial)), got input {tuple(input.shape)} and "
            f"target {tuple(target.shape)}"
        )
    return target.to(dtype=torch.float32), None


class DiceLoss(nn.Module):
    """Soft Dice loss (Milletari et al. 2016), the mean of ``1 - Dice`` over classes (and batch items).

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

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` (B, C, *spatial) against ``target`` (see the class docstring for its shape)."""
        check_input(input)
        onehot, _ = prepare_target(input, target, self.to_onehot_y)
        probs = activate(input.float(), self.activation)
        if not self.include_background:
            if input.shape[1] < 2:
                raise ValueError(
                    f"include_background=False needs at least 2 channels, got input {tuple(input.shape)}; "
                    "a single-channel output has no background channel, use include_background=True"
                )
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = list(range(2, input.ndim))
        if self.batch:
            axes = [0, *axes]
        intersection = torch.sum(probs * onehot, dim=axes)
        sizes = torch.sum(probs, dim=axes) + torch.sum(onehot, dim=axes)
        loss = 1.0 - (2.0 * intersection + self.smooth_nr) / (sizes + self.smooth_dr)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class DiceCELoss(nn.Module):
    """``lambda_dice * DiceLoss + lambda_ce * cross-entropy``, both on logits.

    The cross-entropy part follows the activation: ``"softmax"`` uses the multi-class cross-entropy
    (``torch.nn.functional.cross_entropy`` on class indices), ``"sigmoid"`` the per-channel binary cross-entropy
    with logits (``binary_cross_entropy_with_logits``, each channel an independent label). Cross-entropy always
    uses every channel; ``include_background`` applies to the Dice part only. ``activation="none"`` is refused
    because cross-entropy needs logits. With ``softmax`` and ``to_onehot_y=False`` the target must be exactly
    one-hot (one 1 per voxel); soft labels are refused.

    Note: for a multi-channel input with ``sigmoid``, ``monai.losses.DiceCELoss`` applies the softmax
    cross-entropy; we use the binary one, which is the cross-entropy of independent sigmoid outputs. The two agree
    for softmax and for single-channel sigmoid outputs.

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
        onehot, index = prepare_target(input, target, self.to_onehot_y)
        logits = input.float()
        if self.activation == "sigmoid":
            return F.binary_cross_entropy_with_logits(logits, onehot, reduction=self.reduction)
        if input.shape[1] < 2:
            raise ValueError(
                f"activation='softmax' needs at least 2 channels, got input of shape {tuple(input.shape)}"
            )
        if index is None:
            index = onehot.argmax(dim=1)
            if not bool(torch.all(onehot.sum(dim=1) == 1)) or not bool(
                torch.all((onehot == 0) | (onehot == 1))
            ):
                raise ValueError(
                    "with activation='softmax' a one-hot target must hold exactly one 1 per voxel"
                )
        return F.cross_entropy(logits, index.to(input.device), reduction=self.reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the Dice and cross-entropy losses of ``input`` against ``target``."""
        dice = self.dice(input, target)
        ce = self.cross_entropy(input, target)
        return self.lambda_dice * dice + self.lambda_ce * ce
