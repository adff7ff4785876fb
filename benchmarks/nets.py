"""Benchmark medseg's UNet / UNet++ against MONAI's BasicUNet / BasicUNetPlusPlus of comparable widths.

For each pair, on one patch (default 96^3, 1 input channel, 2 outputs, batch 1): parameters, forward GFLOP
(``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls, multiply-add = 2 FLOP), forward time
(eval, ``torch.inference_mode``) and training step time (train mode, forward + cross-entropy + backward + AdamW
step), median of ``--repeats`` runs after ``--warmup`` runs. The two networks of a pair are timed alternately so a
change in machine load hits both alike. Ratios are medseg / MONAI (below 1: medseg is cheaper or faster).

Width mapping: medseg ``features=(f0, f1, f2, f3, f4)`` (encoder widths; the decoder ends at f0) is compared with
MONAI ``features=(f0, f1, f2, f3, f4, f0)``, MONAI's sixth entry being the width after its last upsampling.
Both sides use instance norm with affine parameters, LeakyReLU(0.01), transposed-convolution upsampling.
Remaining differences (by design): MONAI's last upsampling keeps f1 channels (ours halves to f0), MONAI's
convolutions keep a bias before the norm, and MONAI's UNet++ nodes X(0, j) upsample to f1 channels (ours to f0).

Usage: ``python benchmarks/nets.py [--quick] [--size 96] [--repeats 5] [--warmup 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch
from _timing import add_timing_arguments, parse_timing_arguments, time_pair
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medseg.nets import UNet, UNetPlusPlus

QUICK_REPEATS = 3


def _first(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def count_gflop(model: nn.Module, x: torch.Tensor) -> float:
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def forward_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.inference_mode():
            _first(model(x))

    return run


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(_first(model(x)), target)
        loss.backward()
        optimizer.step()

    return run


def build_pairs(features: tuple[int, ...]) -> list[tuple[str, nn.Module, str, nn.Module]]:
    from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

    act = ("LeakyReLU", {"negative_slope": 0.01, "inplace": True})
    norm = ("instance", {"affine": True})
    monai_features = (*features, features[0])
    common = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    torch.manual_seed(0)
    return [
        (
            "medseg UNet",
            UNet(features=features, norm="instance", activation="leakyrelu", **common),
            "MONAI BasicUNet",
            BasicUNet(features=monai_features, act=act, norm=norm, **common),
        ),
        (
            "medseg UNet++",
            UNetPlusPlus(features=features, norm="instance", activation="leakyrelu", **common),
            "MONAI BasicUNetPlusPlus",
            BasicUNetPlusPlus(features=monai_features, act=act, norm=norm, **common),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, repeats=5, quick_repeats=QUICK_REPEATS)
    parser.add_argument("--features", type=int, nargs=5, default=[16, 32, 64, 128, 256], metavar="F")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last_3d memory format for all nets"
    )
    args, device = parse_timing_arguments(parser, argv, quick_repeats=QUICK_REPEATS)
    features = tuple(args.features)
    memory_format = torch.channels_last_3d if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    x = torch.randn(1, 1, *(args.size,) * 3, device=device).to(memory_format=memory_format)
    target = torch.randint(0, 2, (1, *(args.size,) * 3), device=device)

    print(
        f"patch {args.size}^3, batch 1, 1 -> 2 channels, features {features} (MONAI {(*features, features[0])}), "
        f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"warm-up {args.warmup}, median of {args.repeats}"
        + (", channels_last_3d" if args.channels_last else "")
    )
    header = (
        f"{'network':<24} {'params M':>8} {'GFLOP':>7} {'fwd s':>6} {'(min)':>6} {'train s':>7} {'(min)':>6}"
        f"   {'medseg/MONAI params GFLOP fwd train':>36}"
    )
    print(header)
    print("-" * len(header))
    for ours_name, ours, ref_name, ref in build_pairs(features):
        ours.to(device=device, memory_format=memory_format)
        ref.to(device=device, memory_format=memory_format)
        stats = []
        for model in (ours, ref):
            stats.append(
                {"params": sum(p.numel() for p in model.parameters()) / 1e6, "gflop": count_gflop(model, x)}
            )
        fwd = time_pair((forward_step(ours, x), forward_step(ref, x)), args.warmup, args.repeats, device)
        train = time_pair(
            (train_step(ours, x, target), train_step(ref, x, target)), args.warmup, args.repeats, device
        )
        for row, f, t in zip(stats, fwd, train, strict=True):
            row.update(fwd=statistics.median(f), fwd_min=min(f), train=statistics.median(t), train_min=min(t))
        ratios = " ".join(f"{stats[0][k] / stats[1][k]:.2f}" for k in ("params", "gflop", "fwd", "train"))
        for name, row, ratio in ((ours_name, stats[0], ratios), (ref_name, stats[1], "")):
            print(
                f"{name:<24} {row['params']:>8.3f} {row['gflop']:>7.1f} {row['fwd']:>6.2f} {row['fwd_min']:>6.2f} "
                f"{row['train']:>7.2f} {row['train_min']:>6.2f}   {ratio:>36}"
            )
    print("fwd, train: median seconds of the timed runs; (min): fastest run; ratios use the medians")
    return 0


if __name__ == "__main__":
    sys.exit(main())
