"""What one training step costs: memory (estimated from the real network's autograd graph) and compute.

:func:`estimate_step` builds medseg's own network (:func:`medseg.nets.build_network`, the config's name, options and
deep supervision) on PyTorch's ``meta`` device, where tensors have shapes but no data, and runs one training-mode
forward pass of a ``(1, C, *patch)`` input. Every tensor autograd saves for the backward pass is counted (views of
one tensor once): that is the activation memory of one sample, exact for this network and patch, in float32. The
conv work (multiply-adds x 2) is counted from the convolutions' output shapes. For a batch ``B``::

    memory = B * (activations + loss) + 2 * B * largest activation   # gradients in flight during backward
           + parameters * (weights + gradients + optimizer states)    # AdamW: 2 states, SGD: 1
    total  = 1.15 * memory                                            # allocator / library workspaces

    step FLOPs = 3 * B * forward conv FLOPs                          # backward ~ 2x forward

Nothing is computed, so the estimate takes milliseconds, also for patches that would not fit. (Check on CPU, a
UNet 16..128 at 2 x 64^3 with AdamW: 618 MiB before the workspace factor, 670 MiB measured peak RSS growth.)

:func:`device_budget` gives the memory a plan may use: on CUDA 90 % of ``torch.cuda.mem_get_info``'s free memory;
on CPU half of the available RAM (``MemAvailable``), less what the in-memory dataset cache will hold. On CPU it also
measures the device's convolution throughput (a 3x3x3 convolution, forward and backward, for about half a second)
so that a plan can keep the step time within a limit (compute, not memory, bounds training on a CPU).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

GIB = 1024**3
FLOAT_BYTES = 4
#: optimizer states per parameter
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1}
CUDA_MEMORY_FRACTION = 0.9
CPU_MEMORY_FRACTION = 0.5
#: allocator fragmentation and library workspaces (oneDNN, cuDNN) on top of the counted tensors
WORKSPACE_FACTOR = 1.15


@dataclass(frozen=True)
class StepCost:
    """Memory (bytes) and compute (FLOPs) of one training step of one network at one patch and batch size."""

    patch: tuple[int, ...]
    batch: int
    activation_bytes: int
    parameter_bytes: int
    total_bytes: int
    flops: float

    def describe(self) -> str:
        return (
            f"{self.total_bytes / GIB:.2f} GiB (activations {self.activation_bytes / GIB:.2f} GiB, "
            f"parameters+optimizer {self.parameter_bytes / GIB:.3f} GiB), {self.flops / 1e9:.1f} GFLOP per step"
        )


@functools.lru_cache(maxsize=256)
def _graph_cost(
    name: str, in_channels: int, out_channels: int, features: tuple[int, ...], patch: tuple[int, ...],
    deep_supervision: bool, options: tuple[tuple[str, Any], ...],
) -> tuple[int, int, int, float, int]:
    """(saved activation bytes, largest saved tensor bytes, parameter count, forward conv FLOPs, output bytes)
    of one sample, measured on the meta device."""
    import torch

    from medseg.nets import build_network

    with torch.device("meta"):
        net = build_network(
            name, spatial_dims=len(patch), in_channels=in_channels, out_channels=out_channels,
            features=list(features), deep_supervision=deep_supervision, **dict(options),
        )
    net.train()
    flops = [0.0]

    def count(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            k = math.prod(module.kernel_size)
            if isinstance(module, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
                # each input voxel scatters a k-voxel kernel: work = input voxels * k * Cin * Cout
                k_work = output.numel() * module.in_channels // module.groups
            else:
                k_work = output.numel() * k * module.in_channels // module.groups
            flops[0] += 2.0 * k_work

    handles = [m.register_forward_hook(count) for m in net.modules()]
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        saved[id(base)] = base.numel() * base.element_size()
        keep.append(base)  # ids stay unique while the tensors live
        return t

    keep: list[torch.Tensor] = []
    x = torch.empty((1, in_channels, *patch), device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    for h in handles:
        h.remove()
    outs = out if isinstance(out, list) else [out]
    out_bytes = sum(o.numel() * o.element_size() for o in outs)
    params = sum(p.numel() for p in net.parameters())
    return sum(saved.values()), max(saved.values(), default=0), params, flops[0], out_bytes


def estimate_step(
    network: Any, in_channels: int, out_channels: int, patch: Sequence[int], batch: int, optimizer: str = "adamw",
    features: Sequence[int] | None = None,
) -> StepCost:
    """The :class:`StepCost` of one training step of ``network`` (a :class:`medseg.config.training.NetworkConfig`)
    with ``features`` (default: the config's) at ``patch`` and ``batch``."""
    feats = tuple(int(f) for f in (features if features is not None else network.features))
    acts, largest, params, fwd_flops, out_bytes = _graph_cost(
        network.name, int(in_channels), int(out_channels), feats, tuple(int(p) for p in patch),
        bool(network.deep_supervision), tuple(sorted(network.options.items())),
    )
    # the loss holds softmax probabilities, the one-hot target and their products: ~3 copies of the outputs
    loss_bytes = 3 * out_bytes
    per_sample = acts + loss_bytes + 2 * largest
    states = OPTIMIZER_STATES.get(optimizer, 2)
    param_bytes = params * FLOAT_BYTES * (2 + states)
    return StepCost(
        patch=tuple(int(p) for p in patch), batch=int(batch), activation_bytes=int(batch * (acts + loss_bytes)),
        parameter_bytes=int(param_bytes), total_bytes=int(WORKSPACE_FACTOR * (batch * per_sample + param_bytes)),
        flops=3.0 * batch * fwd_flops,
    )


# ------------------------------------------------------------------------------------------------ the device


@dataclass(frozen=True)
class DeviceBudget:
    """What a plan may use on its device.

    Attributes:
        device: ``"cpu"`` or ``"cuda:N"``.
        memory_bytes: memory one training step may use.
        memory_source: how ``memory_bytes`` was found (shown in the plan's reasons).
        flops_per_second: measured convolution throughput (forward + backward), None when not measured.
        max_step_seconds: the step time a plan should stay under (None: no limit, e.g. on a GPU).
    """

    device: str
    memory_bytes: int
    memory_source: str
    flops_per_second: float | None = None
    max_step_seconds: float | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def predicted_seconds(self, cost: StepCost) -> float | None:
        return None if not self.flops_per_second else cost.flops / self.flops_per_second


def available_ram_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo (Linux), else the free physical pages."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def conv_throughput(device: Any, seconds: float = 0.5) -> float:
    """FLOPs per second of a 3x3x3 convolution (32 -> 32 channels, 32^3 voxels, forward + backward) on ``device``."""
    import torch

    conv = torch.nn.Conv3d(32, 32, 3, padding=1, bias=False).to(device)
    x = torch.randn(1, 32, 32, 32, 32, device=device, requires_grad=True)
    flops = 3 * 2.0 * x.numel() // 32 * 27 * 32 * 32

    def once() -> None:
        conv(x).sum().backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    once()  # warm-up: algorithm selection, allocations
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        once()
        n += 1
    return flops * n / (time.perf_counter() - start)


def device_budget(
    device: str, *, cache_bytes: int = 0, max_step_seconds: float | None = None, measure: bool = True
) -> DeviceBudget:
    """The :class:`DeviceBudget` of ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``"auto"``: CUDA if present)."""
    import torch

    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            from medseg.errors import ConfigError

            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        dev = torch.device(device)
        free, total = torch.cuda.mem_get_info(dev)
        name = f"cuda:{dev.index or 0}"
        source = f"{CUDA_MEMORY_FRACTION:.0%} of {free / GIB:.1f} GiB free on {name} ({total / GIB:.1f} GiB total)"
        flops = conv_throughput(dev) if measure else None
        return DeviceBudget(name, int(free * CUDA_MEMORY_FRACTION), source, flops, max_step_seconds)
    if device != "cpu":
        from medseg.errors import ConfigError

        raise ConfigError(f"--device: 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    ram = available_ram_bytes()
    usable = max(0, ram - cache_bytes)
    source = f"{CPU_MEMORY_FRACTION:.0%} of {ram / GIB:.1f} GiB available RAM"
    if cache_bytes:
        source = f"{CPU_MEMORY_FRACTION:.0%} of ({ram / GIB:.1f} GiB available RAM - {cache_bytes / GIB:.2f} GiB " \
            "for the cached dataset)"
    flops = conv_throughput("cpu") if measure else None
    return DeviceBudget("cpu", int(usable * CPU_MEMORY_FRACTION), source, flops, max_step_seconds)
