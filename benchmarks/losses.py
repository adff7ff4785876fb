"""Benchmark: medseg's Dice and Dice + cross-entropy losses against MONAI's bare losses on one training patch.

medseg's :class:`~medseg.losses.DiceLoss` computes with ``monai.losses.DiceLoss`` and adds input checks (target shape,
integer class indices in range); :class:`~medseg.losses.DiceCELoss` adds torch's cross-entropy itself (binary for
sigmoid outputs). This script times forward + backward of each against MONAI's loss with the same options on a
``(batch, classes, size, size, size)`` patch with class-index targets, in the same process one after the other, and
prints the time, the extra peak resident memory (``_peak.py``), the ratios medseg/MONAI and the largest difference of
the loss values and of the gradients.

Usage: ``.venv/bin/python benchmarks/losses.py [--size 96] [--batch 2] [--classes 4] [--repeats 5]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import monai.losses
import torch
from _peak import best_of

from medseg.losses import DiceCELoss, DiceLoss


def step(
    loss: Callable[..., torch.Tensor], logits: torch.Tensor, target: torch.Tensor
) -> Callable[[], tuple]:
    """One forward + backward of ``loss``; returns (loss value, gradient of the logits)."""

    def run() -> tuple[float, torch.Tensor]:
        x = logits.clone().requires_grad_(True)
        value = loss(x, target)
        value.backward()
        return float(value.detach()), x.grad

    return run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, *(args.size,) * 3)
    logits = torch.randn(shape, generator=gen)
    target = torch.randint(0, args.classes, (args.batch, 1, *shape[2:]), generator=gen)
    print(
        f"patch {shape}, class-index targets, forward + backward, best of {args.repeats}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    pairs = [
        ("dice", DiceLoss(to_onehot_y=True), monai.losses.DiceLoss(to_onehot_y=True, softmax=True)),
        (
            "dice_ce",
            DiceCELoss(to_onehot_y=True),
            monai.losses.DiceCELoss(to_onehot_y=True, softmax=True),
        ),
        (
            "dice (no background)",
            DiceLoss(to_onehot_y=True, include_background=False, batch=True),
            monai.losses.DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True),
        ),
    ]
    for name, ours, theirs in pairs:
        (v_ours, g_ours), t_ours, m_ours = best_of(step(ours, logits, target), args.repeats)
        (v_theirs, g_theirs), t_theirs, m_theirs = best_of(step(theirs, logits, target), args.repeats)
        print(
            f"{name:<22} medseg {t_ours:6.3f} s {m_ours:6.0f} MiB   MONAI {t_theirs:6.3f} s {m_theirs:6.0f} MiB   "
            f"ratio medseg/MONAI time {t_ours / t_theirs:5.2f}x peak {m_ours / max(m_theirs, 1.0):5.2f}x   "
            f"|loss diff| {abs(v_ours - v_theirs):.1e} max |grad diff| {float((g_ours - g_theirs).abs().max()):.1e}"
        )


if __name__ == "__main__":
    main()
