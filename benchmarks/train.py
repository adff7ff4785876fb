"""Benchmark: one training step of medseg's UNet / UNet++ next to MONAI's nets at equal width: time and peak RSS.

Models (``--models``, all by default), each built with the widths ``--features`` (default 16 32 64 128 256),
instance norm with affine parameters, LeakyReLU(0.01), 1 input channel, 2 classes:

* ``medseg_unet``, ``medseg_unetpp``: medseg's nets as training runs them (``memory_format="auto"``: channels-last
  3D on the CPU where a one-off measurement finds it faster, see ``medseg/nets/family.py``);
* ``medseg_unet_contiguous``, ``medseg_unetpp_contiguous``: the same nets forced to the default layout (how medseg
  ran before channels-last; the "before" of the change);
* ``monai_basicunet``, ``monai_basicunetpp``: MONAI ``BasicUNet`` / ``BasicUNetPlusPlus`` with
  ``features=(*features, features[0])`` (MONAI's sixth entry is the width after the last upsampling);
* ``monai_unet``: MONAI ``UNet`` with ``channels=features`` and stride-2 convolutions (``strides=(2,) * depth``);
* ``medseg_unet_bf16``, ``medseg_unetpp_bf16``: medseg's nets with the forward pass under bfloat16 autocast, as
  ``train.precision: bf16`` runs the training step (:mod:`medseg.training.precision`; ``auto`` picks it where the CPU
  has native bfloat16). The header says whether this CPU has it; without it the bf16 rows show emulation.

A step is forward + cross-entropy + backward + AdamW on a random ``--batch`` x 1 x ``--size``^3 patch. Each model
runs in its own subprocess (so its peak RSS is its own: ``ru_maxrss`` of the child; "train MB" is the peak minus
the RSS once the model and data exist, i.e. what the steps add), ``--warmup`` untimed steps then ``--steps`` timed
ones. The children are run in alternation for ``--rounds`` rounds (so load changes on a shared machine hit all
models alike) and the table gives the median wall time and CPU time of all timed steps. Ratios: medseg UNet over
MONAI BasicUNet and over MONAI UNet, medseg UNet++ over MONAI BasicUNetPlusPlus (below 1: medseg is faster).
The CPU-time ratio is the steadier one on a loaded machine. MONAI's ``UNet`` is not the same amount of work at
equal width: one convolution per level, the first one already strided, so no 3x3 convolution runs at full
resolution (``--flops`` prints each model's forward GFLOP to show it).

The contiguous variants run only with ``--before`` (or when named in ``--models``), ``medseg_unetpp_bf16`` only
when named. About 5-6 min on 2 shared cores with the defaults.

Usage: ``python benchmarks/train.py [--size 48] [--batch 2] [--steps 3] [--warmup 2] [--rounds 2] [--threads N]
[--flops] [--before] [--models medseg_unet monai_basicunet ...]``; ``--quick``: 48^3, 1 warm-up, 2 steps, 1 round.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = (
    "medseg_unet",
    "monai_basicunet",
    "monai_unet",
    "medseg_unetpp",
    "monai_basicunetpp",
    "medseg_unet_bf16",
    "medseg_unet_contiguous",
    "medseg_unetpp_contiguous",
    "medseg_unetpp_bf16",
)
#: (ours, reference) pairs printed as ratios of median step times.
RATIOS = (
    ("medseg_unet", "monai_basicunet"),
    ("medseg_unet", "monai_unet"),
    ("medseg_unetpp", "monai_basicunetpp"),
    ("medseg_unet", "medseg_unet_contiguous"),
    ("medseg_unetpp", "medseg_unetpp_contiguous"),
    ("medseg_unet_bf16", "medseg_unet"),
    ("medseg_unetpp_bf16", "medseg_unetpp"),
)


def build_model(name: str, features: tuple[int, ...]):
    """The network ``name`` (one of :data:`MODELS`) at widths ``features``."""
    import torch

    torch.manual_seed(0)
    common = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    if name.startswith("medseg_"):
        from medseg.nets import build_network

        kind = "unetpp" if name.startswith("medseg_unetpp") else "unet"
        net = build_network(kind, features=list(features), norm="instance", activation="leakyrelu", **common)
        if name.endswith("_contiguous"):
            net.memory_format = "contiguous"
        return net
    act = ("LeakyReLU", {"negative_slope": 0.01, "inplace": True})
    norm = ("instance", {"affine": True})
    if name == "monai_unet":
        from monai.networks.nets import UNet

        return UNet(channels=features, strides=(2,) * (len(features) - 1), act=act, norm=norm, **common)
    from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

    if len(features) != 5:
        raise SystemExit(f"MONAI's basic nets have 5 levels; --features has {len(features)}")
    cls = BasicUNetPlusPlus if name == "monai_basicunetpp" else BasicUNet
    return cls(features=(*features, features[0]), act=act, norm=norm, **common)


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports ``ru_maxrss`` in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> int:
    """Time ``args.child`` in this process and print one JSON line: step times, CPU times, peak RSS."""
    import torch
    from torch import nn

    if args.threads:
        torch.set_num_threads(args.threads)
    net = build_model(args.child, tuple(args.features))
    x = torch.randn(args.batch, 1, *(args.size,) * 3)
    target = torch.randint(0, 2, (args.batch, *(args.size,) * 3))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    base_rss = _rss_mb()
    gflop = 0.0
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(x)
        gflop = counter.get_total_flops() / 1e9

    from medseg.training.precision import resolve_precision

    precision = resolve_precision("bf16" if args.child.endswith("_bf16") else "fp32", "cpu")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast("cpu"):
            out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss_fn(out.float(), target).backward()  # the loss in float32, as medseg's Trainer computes it
        optimizer.step()

    net.train()
    for _ in range(args.warmup):
        step()
    wall, cpu = [], []
    for _ in range(args.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    peak = _rss_mb()
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": cpu,
                "peak_mb": peak,
                "train_mb": peak - base_rss,
                "gflop": gflop,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )
    return 0


def run_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--features",
        *map(str, args.features),
    ]
    if args.flops:
        cmd.append("--flops")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=48, help="edge of the cubic patch (default 48)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256], metavar="F")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over all models")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS[:6]))
    parser.add_argument(
        "--before",
        action="store_true",
        help="add the medseg nets in the contiguous layout (before channels-last)",
    )
    parser.add_argument("--quick", action="store_true", help="48^3, 1 warm-up, 2 steps, 1 round")
    parser.add_argument("--flops", action="store_true", help="also count forward GFLOP (one more forward)")
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.warmup, args.steps, args.rounds = 48, 1, 2, 1
    if args.child:
        return child(args)
    if args.before:
        args.models += [m for m in MODELS if m.endswith("_contiguous") and m not in args.models]

    results: dict[str, dict[str, list[float]]] = {
        m: {"wall": [], "cpu": [], "peak": [], "train": []} for m in args.models
    }
    info: dict = {}
    start = time.perf_counter()
    for _ in range(args.rounds):
        for name in args.models:
            out = run_child(name, args)
            info = out
            for key, src in (("wall", "wall"), ("cpu", "cpu")):
                results[name][key] += out[src]
            results[name]["peak"].append(out["peak_mb"])
            results[name]["train"].append(out["train_mb"])
            results[name]["gflop"] = [out["gflop"]]
    print(
        f"training step (forward + CE + backward + AdamW), batch {args.batch} x 1 x {args.size}^3 -> 2 classes, "
        f"features {tuple(args.features)}, threads {info.get('threads')}, torch {info.get('torch')}; "
        f"{args.rounds} alternating round(s) of {args.warmup} warm-up + {args.steps} timed step(s), one subprocess "
        f"per model and round"
    )
    header = f"{'model':<26} {'wall s':>7} {'(min)':>6} {'cpu s':>7} {'peak RSS MB':>12} {'train MB':>9} {'fwd GFLOP':>9}"
    print(header)
    print("-" * len(header))
    medians: dict[str, float] = {}
    for name, r in results.items():
        medians[name] = statistics.median(r["wall"])
        print(
            f"{name:<26} {medians[name]:>7.2f} {min(r['wall']):>6.2f} {statistics.median(r['cpu']):>7.2f} "
            f"{max(r['peak']):>12.0f} {max(r['train']):>9.0f} {r['gflop'][0] if args.flops else float('nan'):>9.1f}"
        )
    print()
    for ours, ref in RATIOS:
        if ours in results and ref in results:
            time_ratio = medians[ours] / medians[ref]
            cpu_ratio = statistics.median(results[ours]["cpu"]) / statistics.median(results[ref]["cpu"])
            rss_ratio = max(results[ours]["train"]) / max(max(results[ref]["train"]), 1.0)
            print(
                f"{ours} / {ref}: step time {time_ratio:.2f}x (CPU time {cpu_ratio:.2f}x), "
                f"train memory {rss_ratio:.2f}x"
            )
    if any(m.endswith("_bf16") for m in results):
        from medseg.training.precision import cpu_bf16_support, resolve_precision

        native, why = cpu_bf16_support()
        print(f"bf16: {'native' if native else 'emulated'} on this CPU ({why}); train.precision auto picks "
              f"{resolve_precision('auto', 'cpu').name} here")
    print(f"(total {time.perf_counter() - start:.0f} s; wall/cpu: medians over all timed steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
