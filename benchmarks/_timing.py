"""Shared by the benchmarks: paired step timing and the common command-line options.

Imported as a sibling module (``from _timing import ...``): running ``python benchmarks/x.py`` puts ``benchmarks/``
first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch

QUICK_SIZE = 64
QUICK_WARMUP = 1


def sync(device: torch.device) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(
    steps: tuple[Callable[[], None], Callable[[], None]], warmup: int, repeats: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Seconds of every timed run of the two steps, run alternately after ``warmup`` untimed rounds.

    Alternating the two steps makes a change in machine load hit both alike.
    """
    for _ in range(warmup):
        for step in steps:
            step()
    sync(device)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for step, bucket in zip(steps, times, strict=True):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            bucket.append(time.perf_counter() - start)
    return times


def add_timing_arguments(parser: argparse.ArgumentParser, *, repeats: int, quick_repeats: int) -> None:
    """Add ``--size``, ``--quick``, ``--repeats``, ``--warmup``, ``--threads`` and ``--device`` to ``parser``."""
    parser.add_argument("--size", type=int, default=96, help="edge of the cubic patch (default 96)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SIZE}^3 patch, {QUICK_WARMUP} warm-up, {quick_repeats} repeats",
    )
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def parse_timing_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, quick_repeats: int
) -> tuple[argparse.Namespace, torch.device]:
    """Parse ``argv``, apply ``--quick`` and ``--threads``; return the arguments and the ``--device``."""
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.warmup, args.repeats = QUICK_SIZE, QUICK_WARMUP, quick_repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)
