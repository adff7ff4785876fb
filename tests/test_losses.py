"""Tests of medseg.losses: Dice, Dice+CE, boundary loss, compound schedule, name table, deep supervision."""

from __future__ import annotations

import inspect
import math

import monai.losses
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.data.distance import SignedDistanceMap
from medseg.errors import ConfigError
from medseg.losses import (
    BoundaryLoss,
    ConstantSchedule,
    DeepSupervisionLoss,
    DiceBoundaryLoss,
    DiceCELoss,
    DiceLoss,
    LinearRampSchedule,
    build_loss,
)
from medseg.losses.deep_supervision import downsample_nearest, sample_indices

# ------------------------------------------------------------------------------------------ Dice vs MONAI


def _random_case(spatial: tuple[int, ...], channels: int, onehot_y: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, channels, *spatial), generator=gen)
    index = torch.randint(0, channels, (2, 1, *spatial), generator=gen)
    if onehot_y:
        return logits, index
    if channels == 1:
        return logits, index.float()  # binary mask
    return logits, F.one_hot(index[:, 0], channels).movedim(-1, 1).float()


DICE_CASES = [
    # activation, include_background, batch, to_onehot_y, spatial, channels
    ("softmax", True, False, True, (5, 6), 3),
    ("softmax", False, False, True, (4, 5, 3), 3),
    ("softmax", False, True, False, (5, 6), 4),
    ("softmax", True, True, False, (3, 4, 5), 2),
    ("sigmoid", True, False, False, (5, 6), 1),
    ("sigmoid", True, True, False, (4, 3, 5), 3),
    ("sigmoid", False, False, False, (6, 5), 3),
    ("none", True, False, False, (4, 4, 4), 3),
]


@pytest.mark.parametrize("activation,include_background,batch,to_onehot_y,spatial,channels", DICE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dice_matches_monai(activation, include_background, batch, to_onehot_y, spatial, channels, reduction):
    logits, target = _random_case(spatial, channels, to_onehot_y, seed=len(spatial) * 10 + channels)
    if activation == "none":
        logits = torch.softmax(logits, dim=1)
    ours = DiceLoss(
        include_background=include_background,
        to_onehot_y=to_onehot_y,
        activation=activation,
        batch=batch,
        reduction=reduction,
    )
    ref = monai.losses.DiceLoss(
        include_background=include_background,
        to_onehot_y=to_onehot_y,
        softmax=activation == "softmax",
        sigmoid=activation == "sigmoid",
        batch=batch,
        reduction=reduction,
    )
    expected = ref(logits, target)
    got = ours(logits, target)
    assert got.shape == expected.shape == ()
    assert abs(got.item() - expected.item()) < 1e-6
    assert 0.0 < got.item()  # random logits: not a perfect prediction


def test_dice_reduction_none_matches_monai_per_class():
    logits, target = _random_case((4, 5), 3, onehot_y=True, seed=7)
    ours = DiceLoss(to_onehot_y=True, reduction="none")(logits, target)
    ref = monai.losses.DiceLoss(to_onehot_y=True, softmax=True, reduction="none")(logits, target)
    assert ours.shape == (2, 3)
    torch.testing.assert_close(ours, ref.reshape(2, 3), atol=1e-6, rtol=0)
    batch_none = DiceLoss(to_onehot_y=True, reduction="none", batch=True)(logits, target)
    assert batch_none.shape == (3,)


def test_dice_hand_computed_probabilities():
    # one item, one channel, 2x2, probabilities given directly (activation="none")
    p = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]]])
    g = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # intersection = 0.9 + 0.6 = 1.5 ; sum(p) = 1.8 ; sum(g) = 2
    # loss = 1 - (2 * 1.5 + 1e-5) / (1.8 + 2 + 1e-5)
    expected = 1 - (3.0 + 1e-5) / (3.8 + 1e-5)
    got = DiceLoss(activation="none")(p, g)
    assert got.item() == pytest.approx(expected, abs=1e-7)
    # without smoothing in the numerator and a tiny one in the denominator: 1 - 3 / 3.8
    got = DiceLoss(activation="none", smooth_nr=0.0, smooth_dr=1e-12)(p, g)
    assert got.item() == pytest.approx(1 - 3.0 / 3.8, abs=1e-6)


def test_dice_hand_computed_softmax_label_indices():
    # logits (0, ln 3) -> softmax (1/4, 3/4); logits (ln 3, 0) -> (3/4, 1/4)
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[0.0, ln3]], [[ln3, 0.0]]]])  # (B=1, C=2, 1, 2)
    target = torch.tensor([[[[1, 0]]]])  # pixel 0 -> class 1, pixel 1 -> class 0
    # class 0: p = (1/4, 3/4), g = (0, 1): inter = 3/4, sum p = 1, sum g = 1 -> dice = 1.5 / 2 = 0.75
    # class 1: p = (3/4, 1/4), g = (1, 0): inter = 3/4, sums 1 and 1 -> dice = 0.75
    loss = DiceLoss(to_onehot_y=True, smooth_nr=0.0, smooth_dr=1e-12)(logits, target)
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    # foreground only: the same 0.25
    loss = DiceLoss(to_onehot_y=True, include_background=False, smooth_nr=0.0, smooth_dr=1e-12)(
        logits, target
    )
    assert loss.item() == pytest.approx(0.25, abs=1e-6)


def test_dice_empty_class_and_empty_prediction_is_zero_loss():
    # class absent and predicted absent: (0 + 1e-5) / (0 + 1e-5) = 1 -> loss 0 (no NaN)
    p = torch.zeros(1, 1, 3, 3)
    g = torch.zeros(1, 1, 3, 3)
    assert DiceLoss(activation="none")(p, g).item() == pytest.approx(0.0, abs=1e-7)


def test_dice_has_gradient_and_perfect_prediction_near_zero():
    target = torch.tensor([[[[0, 1, 2], [2, 1, 0]]]])
    logits = 30.0 * F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    logits.requires_grad_(True)
    loss = DiceLoss(to_onehot_y=True)(logits, target)
    loss.backward()
    assert loss.item() < 1e-6
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "spatial,channels,include_background,batch,smooth",
    [
        ((6, 5), 3, True, False, (1e-5, 1e-5)),
        ((6, 5), 3, False, True, (0.0, 1.0)),
        ((4, 3, 5), 2, False, False, (1.0, 1.0)),
        ((4, 3, 5), 4, True, True, (0.5, 2.0)),
    ],
)
@pytest.mark.parametrize("labels", ["random", "background_only"])
def test_dice_edge_cases_match_monai_values_and_gradients(
    spatial, channels, include_background, batch, smooth, labels
):
    """Batch of 3, 2D and 3D, empty foreground classes, smoothing terms: loss per (item, class) and gradients."""
    gen = torch.Generator().manual_seed(channels)
    logits = torch.randn((3, channels, *spatial), generator=gen)
    target = torch.randint(0, channels, (3, 1, *spatial), generator=gen)
    if labels == "background_only":
        target.zero_()
    options = {"include_background": include_background, "to_onehot_y": True, "batch": batch}
    smoothing = {"smooth_nr": smooth[0], "smooth_dr": smooth[1]}
    ours_in, ref_in = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = DiceLoss(**options, **smoothing, reduction="none")(ours_in, target)
    ref = monai.losses.DiceLoss(**options, **smoothing, softmax=True, reduction="none")(ref_in, target)
    kept = channels - (0 if include_background else 1)
    assert ours.shape == ((kept,) if batch else (3, kept))
    torch.testing.assert_close(ours, ref.reshape(ours.shape), atol=1e-6, rtol=0)
    assert torch.isfinite(ours).all()
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-7, rtol=0)


# ------------------------------------------------------------------------------------------ DiceCE


DICE_CE_CASES = [
    ("softmax", True, (5, 6), 3, 1.0, 1.0),
    ("softmax", False, (4, 3, 5), 3, 0.7, 0.3),
    ("softmax", False, (5, 4), 4, 1.0, 2.0),  # one-hot target
    ("sigmoid", False, (4, 5), 1, 1.0, 1.0),  # single channel binary
    ("sigmoid", False, (3, 4, 4), 1, 0.5, 1.5),
]


@pytest.mark.parametrize("activation,to_onehot_y,spatial,channels,lambda_dice,lambda_ce", DICE_CE_CASES)
def test_dice_ce_matches_monai(activation, to_onehot_y, spatial, channels, lambda_dice, lambda_ce):
    logits, target = _random_case(spatial, channels, to_onehot_y, seed=3 + channels)
    ours = DiceCELoss(
        to_onehot_y=to_onehot_y, activation=activation, lambda_dice=lambda_dice, lambda_ce=lambda_ce
    )
    ref = monai.losses.DiceCELoss(
        to_onehot_y=to_onehot_y,
        softmax=activation == "softmax",
        sigmoid=activation == "sigmoid",
        lambda_dice=lambda_dice,
        lambda_ce=lambda_ce,
    )
    assert abs(ours(logits, target).item() - ref(logits, target).item()) < 1e-6


def test_dice_ce_hand_computed():
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[0.0, ln3]], [[ln3, 0.0]]]])
    target = torch.tensor([[[[1, 0]]]])
    # true-class probability is 3/4 at both pixels: CE = -ln(3/4); Dice loss = 0.25 (see above)
    loss = DiceCELoss(to_onehot_y=True, smooth_nr=0.0, smooth_dr=1e-12, lambda_dice=2.0, lambda_ce=0.5)
    expected = 2.0 * 0.25 + 0.5 * -math.log(0.75)
    assert loss(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert loss.cross_entropy(logits, target).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_dice_ce_multichannel_sigmoid_uses_binary_cross_entropy():
    # two independent labels, logits 0 -> p = 1/2 everywhere: BCE = ln 2 per element
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]]])
    loss = DiceCELoss(activation="sigmoid", smooth_nr=0.0, smooth_dr=1e-12)
    # Dice: channel 0: inter 0.5, sum p 2, sum g 1 -> 1/3 ; channel 1: inter 1.5, sums 2 and 3 -> 3/5
    dice = ((1 - 1 / 3) + (1 - 3 / 5)) / 2
    assert loss(logits, target).item() == pytest.approx(dice + math.log(2.0), abs=1e-6)


def test_monai_dice_ce_multichannel_sigmoid_differs():
    """Why DiceCELoss adds its own cross-entropy: MONAI's applies the softmax one to independent sigmoid labels."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, 6, generator=gen)
    target = (torch.rand(2, 3, 5, 6, generator=gen) > 0.5).float()  # three independent binary labels
    ours = DiceCELoss(activation="sigmoid")(logits, target)
    ref = monai.losses.DiceCELoss(sigmoid=True)(logits, target)
    dice = DiceLoss(activation="sigmoid")(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert ours.item() == pytest.approx((dice + bce).item(), abs=1e-6)
    assert abs(ref.item() - ours.item()) > 0.1


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"activation": "relu"}, "activation"),
        ({"activation": True}, "activation"),
        ({"smooth_nr": -1.0}, "smooth_nr"),
        ({"smooth_dr": 0.0}, "smooth_dr"),
        ({"smooth_dr": float("nan")}, "smooth_dr"),
        ({"reduction": "max"}, "reduction"),
        ({"batch": "yes"}, "batch"),
        ({"include_background": 1}, "include_background"),
        ({"to_onehot_y": None}, "to_onehot_y"),
    ],
)
def test_dice_init_validation_names_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        DiceLoss(**kwargs)


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"activation": "none"}, "activation"),
        ({"lambda_dice": -0.1}, "lambda_dice"),
        ({"lambda_ce": float("inf")}, "lambda_ce"),
        ({"reduction": "none"}, "reduction"),
    ],
)
def test_dice_ce_init_validation_names_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        DiceCELoss(**kwargs)


def test_dice_ce_takes_the_dice_options_and_its_two_weights():
    """DiceCELoss spells out the options of DiceLoss (explicit, type-checked signatures): they must stay DiceLoss's,
    in its order and with its defaults, plus the two weights."""
    dice = dict(inspect.signature(DiceLoss).parameters)
    params = dict(inspect.signature(DiceCELoss).parameters)
    assert list(params) == [*dice, "lambda_dice", "lambda_ce"]
    assert all(params[name].default == dice[name].default for name in dice)
    loss = DiceCELoss(False, True, "sigmoid", lambda_ce=0.5)  # the Dice options by position, as for DiceLoss
    assert (loss.dice.include_background, loss.to_onehot_y, loss.activation, loss.lambda_ce) == (
        False, True, "sigmoid", 0.5,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['weight'\] for loss 'dice_ce'; valid options: "
                       r"\['activation', 'batch', 'include_background', 'lambda_ce', 'lambda_dice', 'reduction'"):
        build_loss("dice_ce", weight=1.0)


def test_dice_forward_shape_errors_show_both_shapes():
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 2, 4, 4\)"):
        DiceLoss()(logits, torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        DiceLoss(to_onehot_y=True)(logits, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="same number of dimensions"):
        DiceLoss(to_onehot_y=True)(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="at least one spatial axis"):
        DiceLoss()(torch.zeros(2, 3), torch.zeros(2, 3))


def test_dice_forward_value_and_channel_errors():
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"in \[0, 2\].*\[0, 3\]"):
        DiceLoss(to_onehot_y=True)(logits, torch.tensor([[[[0, 1], [2, 3]]]]))
    with pytest.raises(ValueError, match="integer class indices"):
        DiceLoss(to_onehot_y=True)(logits, torch.full((1, 1, 2, 2), 0.5))
    single = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="softmax"):
        DiceLoss(activation="softmax")(single, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="include_background=False"):
        DiceLoss(activation="sigmoid", include_background=False)(single, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="to_onehot_y=True"):
        DiceLoss(activation="sigmoid", to_onehot_y=True)(single, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="exactly one 1 per voxel"):
        DiceCELoss().cross_entropy(logits, torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------------------ boundary loss


def _expected_boundary(logits: np.ndarray, labels: np.ndarray, spacing, num_classes: int) -> float:
    """Independent computation: softmax in numpy, signed distances straight from distance_transform_edt."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    terms = []
    for b in range(labels.shape[0]):
        for c in range(1, num_classes):
            mask = labels[b, 0] == c
            if mask.any() and not mask.all():
                phi = ndimage.distance_transform_edt(
                    ~mask, sampling=spacing
                ) - ndimage.distance_transform_edt(mask, sampling=spacing)
            else:
                phi = np.zeros(mask.shape)
            terms.append(probs[b, c] * phi)
    return float(np.mean(terms))


@pytest.mark.parametrize(
    "spatial,spacing",
    [((9, 12), (0.7, 2.0)), ((6, 7, 8), (2.5, 0.8, 1.2))],
)
def test_boundary_loss_matches_independent_computation(spatial, spacing):
    gen = torch.Generator().manual_seed(11)
    num_classes = 3
    labels = np.zeros((2, 1, *spatial), dtype=np.int64)
    labels[0, 0][tuple(slice(1, n - 2) for n in spatial)] = 1
    labels[0, 0][tuple(slice(2, 4) for _ in spatial)] = 2
    labels[1, 0][tuple(slice(n // 2, n) for n in spatial)] = 2  # class 1 absent from item 1: zero map
    logits = torch.randn((2, num_classes, *spatial), generator=gen, dtype=torch.float64)
    transform = SignedDistanceMap(num_classes, spacing=spacing)
    dist = torch.from_numpy(np.stack([transform(lab) for lab in labels]))
    got = BoundaryLoss()(logits, torch.from_numpy(labels), dist)
    expected = _expected_boundary(logits.numpy(), labels, spacing, num_classes)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    assert abs(expected) > 1e-3  # not a trivially zero case


def test_boundary_loss_lowest_for_ground_truth():
    spacing = (1.0, 0.6, 2.0)
    gt = np.zeros((1, 1, 12, 14, 8), dtype=np.int64)
    gt[0, 0, 3:9, 4:11, 2:6] = 1
    dist = torch.from_numpy(SignedDistanceMap(2, spacing=spacing)(gt[0]))[None]

    def probs(mask: np.ndarray) -> torch.Tensor:
        fg = torch.from_numpy(mask.astype(np.float32))
        return torch.stack([1 - fg, fg])[None]

    loss = BoundaryLoss(activation="none")
    truth = gt[0, 0] == 1
    at_truth = loss(probs(truth), None, dist).item()
    others = {
        "shifted": np.roll(truth, 1, axis=0),
        "shifted_z": np.roll(truth, -1, axis=2),
        "dilated": ndimage.binary_dilation(truth),
        "eroded": ndimage.binary_erosion(truth),
        "empty": np.zeros_like(truth),
    }
    for name, mask in others.items():
        value = loss(probs(mask), None, dist).item()
        assert value > at_truth + 1e-3, name
    # the minimum is the (negative) mean of the inside distances
    phi = dist[0, 1].numpy()
    assert at_truth == pytest.approx(phi[truth].sum() / phi.size, rel=1e-5)
    assert at_truth < 0


def test_boundary_loss_errors():
    logits = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\).*\(1, 3, 4, 4\)"):
        BoundaryLoss()(logits, None, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="signed distance maps"):
        BoundaryLoss()(logits, None, None)
    with pytest.raises(ValueError, match="target"):
        BoundaryLoss()(logits, torch.zeros(1, 1, 4, 5), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="activation"):
        BoundaryLoss(activation="tanh")
    with pytest.raises(ValueError, match="include_background"):
        BoundaryLoss(activation="sigmoid")(torch.zeros(1, 1, 4, 4), None, torch.zeros(1, 1, 4, 4))


# ------------------------------------------------------------------------------------------ compound


def test_linear_ramp_schedule_values():
    s = LinearRampSchedule(start_epoch=10, end_epoch=20, max_boundary_weight=0.5)
    assert s.weights(0) == (1.0, 0.0)
    assert s.weights(10) == (1.0, 0.0)
    assert s.weights(15) == pytest.approx((0.75, 0.25))  # half-way: 0.5 * 0.5
    assert s.weights(20) == pytest.approx((0.5, 0.5))
    assert s.weights(500) == pytest.approx((0.5, 0.5))
    add = LinearRampSchedule(0, 4, 2.0, rebalance=False)
    assert add.weights(1) == pytest.approx((1.0, 0.5))
    # Kervadec et al.: alpha = max(0.1, 1 - 0.01 * epoch)
    kervadec = LinearRampSchedule(0, 90, 0.9)
    for epoch in (0, 1, 37, 89, 90, 91, 300):
        assert kervadec.weights(epoch)[0] == pytest.approx(max(0.1, 1 - 0.01 * epoch))


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"start_epoch": -1}, "start_epoch"),
        ({"start_epoch": 5, "end_epoch": 5}, "end_epoch"),
        ({"max_boundary_weight": 1.5}, "max_boundary_weight"),
        ({"max_boundary_weight": -0.1, "rebalance": False}, "max_boundary_weight"),
        ({"end_epoch": 2.5}, "end_epoch"),
    ],
)
def test_linear_ramp_schedule_validation(kwargs, option):
    with pytest.raises(ValueError, match=option):
        LinearRampSchedule(**kwargs)


def test_dice_boundary_loss_follows_schedule():
    gen = torch.Generator().manual_seed(5)
    labels = torch.zeros(1, 1, 8, 9, dtype=torch.long)
    labels[0, 0, 2:6, 3:7] = 1
    dist = torch.from_numpy(SignedDistanceMap(2, spacing=(1.0, 1.5))(labels[0].numpy()))[None]
    logits = torch.randn(1, 2, 8, 9, generator=gen)
    dice, boundary = DiceLoss(to_onehot_y=True), BoundaryLoss()
    loss = DiceBoundaryLoss(dice, boundary, LinearRampSchedule(0, 10, 0.8))
    d, b = dice(logits, labels).item(), boundary(logits, labels, dist).item()
    assert loss(logits, labels, dist).item() == pytest.approx(d, abs=1e-6)  # epoch 0: boundary weight 0
    loss.set_epoch(5)
    assert loss.weights == pytest.approx((0.6, 0.4))
    assert loss(logits, labels, dist).item() == pytest.approx(0.6 * d + 0.4 * b, abs=1e-6)
    assert loss.last_parts["dice"].item() == pytest.approx(d, abs=1e-6)
    assert loss.last_parts["boundary"].item() == pytest.approx(b, abs=1e-6)
    loss.set_epoch(50)
    assert loss(logits, labels, dist).item() == pytest.approx(0.2 * d + 0.8 * b, abs=1e-6)
    constant = DiceBoundaryLoss(dice, boundary, ConstantSchedule(2.0, 3.0))
    assert constant(logits, labels, dist).item() == pytest.approx(2 * d + 3 * b, abs=1e-5)
    with pytest.raises(ValueError, match="epoch"):
        loss.set_epoch(-1)
    with pytest.raises(ValueError, match="schedule"):
        DiceBoundaryLoss(dice, boundary, schedule=object())


def test_build_loss_table():
    assert isinstance(build_loss("dice", to_onehot_y=True), DiceLoss)
    assert isinstance(build_loss("dice_ce"), DiceCELoss)
    assert isinstance(build_loss("boundary", include_background=True), BoundaryLoss)
    compound = build_loss(
        "dice_ce_boundary",
        dice={"to_onehot_y": True, "lambda_ce": 0.5},
        schedule={"name": "linear_ramp", "start_epoch": 2, "end_epoch": 4, "max_boundary_weight": 0.5},
    )
    assert isinstance(compound, DiceBoundaryLoss) and isinstance(compound.dice, DiceCELoss)
    assert compound.dice.lambda_ce == 0.5
    compound.set_epoch(3)
    assert compound.weights == pytest.approx((0.75, 0.25))
    default = build_loss("dice_boundary")
    assert isinstance(default.schedule, LinearRampSchedule) and isinstance(default.dice, DiceLoss)
    assert build_loss("dice_boundary", schedule={"name": "constant", "boundary_weight": 0.1}).weights == (
        1.0,
        0.1,
    )


def test_build_loss_errors_list_valid_names():
    with pytest.raises(ConfigError, match=r"unknown loss 'focal'.*'boundary'.*'dice'.*'dice_boundary'"):
        build_loss("focal")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['softmax'\].*'activation'"):
        build_loss("dice", softmax=True)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['alpha'\].*DiceLoss"):
        build_loss("dice_boundary", dice={"alpha": 1})
    with pytest.raises(ConfigError, match=r"unknown schedule 'cosine'.*'constant'.*'linear_ramp'"):
        build_loss("dice_boundary", schedule={"name": "cosine"})
    with pytest.raises(ConfigError, match="'name' key"):
        build_loss("dice_boundary", schedule={"start_epoch": 1})
    with pytest.raises(ValueError, match="activation"):
        build_loss("dice", activation="softplus")


# ------------------------------------------------------------------------------------------ deep supervision


class _Recorder(torch.nn.Module):
    """Inner loss returning mean(pred) + mean(target) and remembering what it received."""

    def __init__(self, requires_dist: bool = False) -> None:
        super().__init__()
        self.requires_dist = requires_dist
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, pred, target, dist=None):
        self.calls.append((pred, target, dist))
        return pred.float().mean() + target.float().mean()


def test_deep_supervision_weights_halve_and_normalise():
    ds = DeepSupervisionLoss(_Recorder())
    assert ds.level_weights(1) == [1.0]
    assert ds.level_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert DeepSupervisionLoss(_Recorder(), weights=[2, 1, 1]).level_weights(3) == pytest.approx(
        [0.5, 0.25, 0.25]
    )
    with pytest.raises(ValueError, match="3 outputs but 2 weights"):
        DeepSupervisionLoss(_Recorder(), weights=[1, 1]).level_weights(3)
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(_Recorder(), weights=[1, -1])
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(_Recorder(), weights=[0, 0])


def test_deep_supervision_downsamples_targets_nearest_exact():
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (2, 1, 8, 12), generator=gen)
    outputs = [torch.randn(2, 3, 8, 12, generator=gen), torch.randn(2, 3, 4, 6, generator=gen)]
    outputs.append(torch.randn(2, 3, 2, 3, generator=gen))
    inner = DiceLoss(to_onehot_y=True)
    got = DeepSupervisionLoss(inner)(outputs, target)
    # nearest-exact halving picks the odd indices 1, 3, 5, ...; quartering picks 2, 6, 10 (floor(4 i + 2))
    expected = (
        4 / 7 * inner(outputs[0], target)
        + 2 / 7 * inner(outputs[1], target[:, :, 1::2, 1::2])
        + 1 / 7 * inner(outputs[2], target[:, :, 2::4, 2::4])
    )
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_downsampling_follows_unet_blocks():
    # power-of-two ratios: identical to interpolate(mode="nearest-exact")
    x = torch.arange(2 * 16 * 8, dtype=torch.float32).reshape(1, 2, 16, 8)
    for size in ((8, 4), (4, 2), (2, 1), (16, 2)):
        expected = F.interpolate(x, size=size, mode="nearest-exact")
        torch.testing.assert_close(downsample_nearest(x, size), expected, rtol=0, atol=0)
    # medseg's UNet on 9 voxels: level 1 has ceil(9/2) = 5 voxels covering [0,2) [2,4) [4,6) [6,8) [8,9),
    # level 2 has ceil(9/4) = 3 covering [0,4) [4,8) [8,9): block centres (right of centre), last block clipped
    assert sample_indices(9, 5) == [1, 3, 5, 7, 8]
    assert sample_indices(9, 3) == [2, 6, 8]
    assert sample_indices(9, 1) == [8]  # one block [0, 16) clipped to the last voxel
    assert sample_indices(10, 3) == [2, 6, 9]  # blocks [0,4) [4,8) [8,10)
    assert sample_indices(10, 4) == [1, 3, 6, 8]  # no power of two gives 4 blocks: floor((k + 0.5) * 2.5)
    labels = torch.arange(9, dtype=torch.int16).reshape(1, 1, 9)
    small = downsample_nearest(labels, (5,))
    assert small.dtype == torch.int16 and small.flatten().tolist() == [1, 3, 5, 7, 8]
    assert downsample_nearest(labels, (9,)) is labels


def test_deep_supervision_passes_full_resolution_and_single_tensor_untouched():
    recorder = _Recorder(requires_dist=True)
    ds = DeepSupervisionLoss(recorder)
    target = torch.arange(16, dtype=torch.int32).reshape(1, 1, 4, 4)
    dist = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    full, half = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)
    ds([full, half], target, dist=dist)
    assert recorder.calls[0][1] is target and recorder.calls[0][2] is dist
    small_target, small_dist = recorder.calls[1][1], recorder.calls[1][2]
    assert small_target.dtype == torch.int32
    assert small_target.flatten().tolist() == [5, 7, 13, 15]  # rows/cols 1 and 3
    assert small_dist[0, 1].flatten().tolist() == [21.0, 23.0, 29.0, 31.0]
    recorder.calls.clear()
    single = torch.ones(1, 2, 4, 4)
    ds(single, target, dist=dist)
    assert len(recorder.calls) == 1 and recorder.calls[0][0] is single and recorder.calls[0][1] is target


def test_deep_supervision_with_boundary_loss_and_errors():
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    labels[0, 0, 2:6, 2:6] = 1
    dist = torch.from_numpy(SignedDistanceMap(2, spacing=1.0)(labels[0].numpy()))[None]
    compound = DiceBoundaryLoss(DiceLoss(to_onehot_y=True), BoundaryLoss(), ConstantSchedule(1.0, 1.0))
    ds = DeepSupervisionLoss(compound)
    outputs = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)]
    value = ds(outputs, labels, dist=dist)
    half_dist = dist[:, :, 1::2, 1::2]
    expected = 2 / 3 * compound(outputs[0], labels, dist) + 1 / 3 * compound(
        outputs[1], labels[:, :, 1::2, 1::2], half_dist
    )
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="needs distance maps"):
        ds(outputs, labels)
    with pytest.raises(ValueError, match="no larger than the target"):
        ds([torch.zeros(1, 2, 16, 16)], labels, dist=dist)
    with pytest.raises(ValueError, match="non-empty list"):
        ds([], labels, dist=dist)


def test_monai_deep_supervision_differs_where_medseg_keeps_its_own():
    """Why DeepSupervisionLoss is medseg's: what monai.losses.DeepSupervisionLoss does differently.

    With normalised weights, power-of-two level sizes and a float target the two agree; MONAI's default weights are
    not normalised and stop halving at 1/16, it cannot downsample integer label maps, it has no way to hand distance
    maps to the inner loss, and on odd sizes its nearest-exact sampling is not the UNet's block geometry.
    """
    gen = torch.Generator().manual_seed(8)
    inner = DiceLoss(to_onehot_y=True)
    ours = DeepSupervisionLoss(inner)
    weights = ours.level_weights(3)
    ref = monai.losses.DeepSupervisionLoss(inner, weights=weights)

    def case(full):
        target = torch.randint(0, 3, (2, 1, *full), generator=gen)
        outputs = [torch.randn(2, 3, *(-(-n // 2**i) for n in full), generator=gen) for i in range(3)]
        return outputs, target

    outputs, target = case((16, 8, 12))
    assert ours(outputs, target).item() == pytest.approx(ref(outputs, target.float()).item(), abs=1e-6)
    assert monai.losses.DeepSupervisionLoss(inner).get_weights(6) == [1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625]
    assert sum(ours.level_weights(6)) == pytest.approx(1.0)
    with pytest.raises(NotImplementedError):
        ref(outputs, target)  # an int64 label map: interpolate has no integer nearest mode
    outputs, target = case((9, 12, 10))  # 9 -> 5 -> 3 voxels along the first axis
    assert abs(ours(outputs, target).item() - ref(outputs, target.float()).item()) > 1e-3
    # MONAI samples voxels 0, 2, 4, 6, 8 of a 9-voxel axis; the UNet's level-1 voxels cover [2k, 2k + 2)
    axis = torch.arange(9, dtype=torch.float32).reshape(1, 1, 9)
    assert F.interpolate(axis, size=(5,), mode="nearest-exact").flatten().tolist() == [0, 2, 4, 6, 8]
    assert downsample_nearest(axis, (5,)).flatten().tolist() == [1, 3, 5, 7, 8]
