"""Shared by the benchmarks: wall time and peak resident memory of one call, measured in this process.

Linux only: the peak comes from ``VmHWM`` in ``/proc/self/status``, reset before the call by writing ``5`` to
``/proc/self/clear_refs``; the extra peak of the call is ``VmHWM`` after it minus ``VmRSS`` before it. Large numpy
arrays and torch tensors are allocated with ``mmap`` and given back to the system when freed -- importing this module
fixes glibc's mmap threshold at 1 MiB (``mallopt``), which otherwise grows to 32 MiB and keeps freed blocks below it
in the heap -- so calls measured one after the other in the same process do not see each other's memory.

Imported as a sibling module (``from _peak import measure``): running ``python benchmarks/x.py`` puts
``benchmarks/`` first on ``sys.path``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable
from typing import Any

MIB = 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
_M_TRIM_THRESHOLD = -1


def _fix_malloc() -> None:
    """Serve every allocation of 1 MiB or more by mmap (given back when freed); trim the heap eagerly."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, MIB)
        libc.mallopt(_M_TRIM_THRESHOLD, MIB)


_fix_malloc()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this measure needs Linux)")


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), seconds, extra peak resident memory in MiB)`` of one call of ``fn``."""
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return result, seconds, (peak - before) * 1024 / MIB


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """:func:`measure` ``repeats`` times: the last result, the fastest time and the largest peak."""
    times, peaks, result = [], [], None
    for _ in range(max(1, repeats)):
        result = None  # the previous result is freed before the next call is measured
        result, seconds, peak = measure(fn)
        times.append(seconds)
        peaks.append(peak)
    return result, min(times), max(peaks)
