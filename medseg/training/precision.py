"""Training precision: ``train.precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) resolved for one device.

``auto`` picks, in order:

* ``fp32`` when ``train.amp`` is false (mixed precision switched off);
* ``fp16`` on CUDA (autocast with a gradient scaler: what ``train.amp`` has always meant there);
* ``bf16`` on a CPU whose flags show native bfloat16 arithmetic -- ``avx512_bf16`` (AVX-512 BF16 dot products) or
  ``amx_bf16`` (AMX tiles) in ``/proc/cpuinfo`` -- with oneDNN (``torch.backends.mkldnn``) available: there the
  convolutions run in bfloat16 on the hardware's own instructions. Without those flags oneDNN would emulate bfloat16
  with float32 arithmetic plus conversions, slower than plain float32, so
* ``fp32`` on every other CPU (and on devices without mixed precision, e.g. ``mps``).

The flags are read from the CPU, never assumed: ``torch.backends.cpu.get_cpu_capability()`` names the vector ISA
torch's own kernels use (``AVX512`` also on CPUs without BF16), so it does not answer the question by itself.

bfloat16 keeps float32's exponent range, so it needs no loss scaling; ``fp16`` does, and runs on CUDA only. The
autocast covers the forward pass and the loss (as MONAI's and nnU-Net's trainers do); weights, gradients and the
optimizer stay float32. ``benchmarks/train.py`` measures the step time of bf16 against fp32 in one run;
``tests/test_training_precision.py`` checks that a few bf16 steps track the fp32 loss.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: CPU flags (as ``/proc/cpuinfo`` spells them) of native bfloat16 arithmetic
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """A resolved training precision: ``fp32``, ``bf16`` or ``fp16``, and why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> Any:
        """The autocast dtype (None for fp32)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has float32's exponent range."""
        return self.name == "fp16"

    def autocast(self, device: Any) -> contextlib.AbstractContextManager:
        """The autocast context of this precision on ``device`` (a no-op for fp32)."""
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags from ``cpuinfo`` (Linux ``/proc/cpuinfo``); None when it cannot be read."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_bf16_support(cpuinfo: str | Path = CPUINFO) -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (and oneDNN is there to use it), with the evidence."""
    import torch

    flags = cpu_flags(cpuinfo)
    isa = torch.backends.cpu.get_cpu_capability()
    if flags is None:
        return False, f"the CPU flags cannot be read ({cpuinfo}); torch's CPU capability is {isa}"
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if not found:
        return False, f"the CPU has none of {', '.join(CPU_BF16_FLAGS)} (torch's CPU capability: {isa})"
    if not torch.backends.mkldnn.is_available():
        return False, f"the CPU has {', '.join(found)} but this torch has no oneDNN (mkldnn)"
    return True, f"the CPU has {', '.join(found)} (native bfloat16) and oneDNN"


def resolve_precision(setting: str, device: Any, *, amp: bool = True) -> Precision:
    """``train.precision`` for ``device`` (see the module docstring); ``amp`` is ``train.amp``.

    Raises:
        ConfigError: an unknown setting, or ``fp16`` on a device other than CUDA.
    """
    import torch

    if setting not in PRECISIONS:
        raise ConfigError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {setting!r}")
    kind = torch.device(device).type
    if setting == "fp16" and kind != "cuda":
        raise ConfigError(f"train.precision: fp16 needs CUDA (gradient scaling), not {kind}; use bf16 or fp32")
    if setting == "bf16" and kind == "cpu":
        native, why = cpu_bf16_support()
        if not native:
            logger.warning("train.precision bf16 on a CPU without native bfloat16 (%s): expect slower steps", why)
        return Precision("bf16", f"train.precision: bf16 ({why})")
    if setting != "auto":
        return Precision(setting, f"train.precision: {setting}")
    if not amp:
        return Precision("fp32", "train.amp is false: no mixed precision")
    if kind == "cuda":
        return Precision("fp16", "CUDA: float16 autocast with gradient scaling (train.amp)")
    if kind == "cpu":
        native, why = cpu_bf16_support()
        return Precision("bf16" if native else "fp32", why)
    return Precision("fp32", f"no mixed precision on {kind}")
