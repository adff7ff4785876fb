"""Benchmark: medseg's training step (UNet and UNet++ at the demo width) next to MONAI's BasicUNet / BasicUNetPlusPlus.

For each network family, on one cubic patch (default 96^3, batch 1, 1 input channel, 2 classes), in one run:

* ``bare``: forward + cross-entropy + backward + AdamW step (the step of ``benchmarks/nets.py``) of
  - medseg at the demo width (``network.features`` of ``configs/demo.yaml``, e.g. 4 levels 8..64),
  - MONAI ``BasicUNet`` / ``BasicUNetPlusPlus``, whose depth is fixed at 5 levels: the demo widths continued by
    doubling (8..128, plus MONAI's final width 8; see ``benchmarks/nets.py`` for the width mapping),
  - medseg at those same 5 levels (the like-for-like comparison with MONAI);
* ``full``: medseg's real training step, :meth:`medseg.training.Trainer.train_step`, with the demo config's loss
  (Dice + CE + boundary, with distance maps), deep supervision setting and gradient clipping.

Steps are timed in alternating pairs (``benchmarks/_timing.py: time_pair``) so load changes hit both alike; the
table gives the median and the fastest of ``--repeats`` runs after ``--warmup``.

Usage: ``python benchmarks/train.py [--quick] [--size 96] [--repeats 3] [--threads N] [--config configs/demo.yaml]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_timing_arguments, parse_timing_arguments, time_pair  # noqa: E402
from nets import build_pairs  # noqa: E402  (benchmarks/nets.py)
from nets import train_step as bare_step  # noqa: E402

from medseg.config import load_config  # noqa: E402
from medseg.losses import DeepSupervisionLoss  # noqa: E402
from medseg.nets import build_network  # noqa: E402
from medseg.training import Trainer  # noqa: E402
from medseg.training.optim import build_optimizer, build_poly_schedule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK_REPEATS = 2


def five_levels(features: tuple[int, ...]) -> tuple[int, ...]:
    """MONAI's basic nets have 5 levels: keep the demo widths and continue them by doubling (or cut to 5)."""
    out = list(features[:5])
    while len(out) < 5:
        out.append(out[-1] * 2)
    return tuple(out)


def full_step(config, kind: str, size: int, device: torch.device, workdir: Path) -> Callable[[], None]:
    """medseg's Trainer.train_step with the config's loss, deep supervision and clipping on one random patch."""
    net = build_network(**{**config.network.build_kwargs(3, 1, 2), "name": kind}).to(device)
    loss = DeepSupervisionLoss(config.loss.build(), config.loss.deep_supervision_weights)
    tc = config.train
    optimizer = build_optimizer(
        net.parameters(), tc.optimizer, tc.lr, tc.weight_decay, tc.momentum, tc.nesterov
    )
    trainer = Trainer(
        net,
        loss,
        optimizer,
        build_poly_schedule(optimizer, tc.epochs, tc.poly_power),
        spec=None,
        loaders=lambda epoch: [],
        validate=lambda epoch: ({}, []),
        checkpoint_dir=workdir,
        epochs=tc.epochs,
        device=device,
        amp=tc.amp,
        grad_clip=tc.grad_clip,
    )
    label = (torch.rand(1, 1, size, size, size) > 0.8).float()
    batch = {
        "image": torch.randn(1, 1, size, size, size),
        "label": label,
        "dist": torch.randn(1, 2, size, size, size),
    }
    return lambda: trainer.train_step(batch, 0, 0) and None


def _row(name: str, times: list[float], ref: float | None = None) -> str:
    med = statistics.median(times)
    ratio = f"{med / ref:>6.2f}" if ref else ""
    return f"{name:<62} {med:>8.2f} {min(times):>8.2f} {ratio:>8}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, repeats=3, quick_repeats=QUICK_REPEATS)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    args, device = parse_timing_arguments(parser, argv, quick_repeats=QUICK_REPEATS)
    config = load_config(args.config)
    demo = tuple(config.network.features)
    deep = five_levels(demo)
    torch.manual_seed(0)
    x = torch.randn(1, 1, *(args.size,) * 3, device=device)
    target = torch.randint(0, 2, (1, *(args.size,) * 3), device=device)
    print(
        f"training step, patch {args.size}^3, batch 1, 1 -> 2 channels, device {device}, threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}; demo width {demo} ({args.config}); "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    header = f"{'step':<62} {'median s':>8} {'min s':>8} {'/MONAI':>8}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for (ours_name, ours5, ref_name, ref), kind in zip(
            build_pairs(deep), ("unet", "unetpp"), strict=True
        ):
            demo_net = build_network(
                kind,
                spatial_dims=3,
                in_channels=1,
                out_channels=2,
                features=demo,
                norm="instance",
                activation="leakyrelu",
            ).to(device)
            ours5.to(device)
            ref.to(device)
            t_demo, t_ref = time_pair(
                (bare_step(demo_net, x, target), bare_step(ref, x, target)), args.warmup, args.repeats, device
            )
            t_ours5, t_full = time_pair(
                (bare_step(ours5, x, target), full_step(config, kind, args.size, device, Path(tmp))),
                args.warmup,
                args.repeats,
                device,
            )
            ref_med = statistics.median(t_ref)
            print(_row(f"{ours_name} demo width {demo}, bare", t_demo, ref_med))
            print(_row(f"{ref_name} {(*deep, deep[0])}, bare", t_ref))
            print(_row(f"{ours_name} {deep}, bare", t_ours5, ref_med))
            print(_row(f"{ours_name} demo width, full demo step ({config.loss.name})", t_full, ref_med))
    print(
        "bare: forward + cross-entropy + backward + AdamW; full: medseg Trainer.train_step with the demo loss, "
        "deep supervision and gradient clipping; /MONAI: median over the MONAI net's median (bare)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
