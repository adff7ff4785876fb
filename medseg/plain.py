"""Plain values: NumPy arrays from tensors or array-likes, and YAML/JSON-ready builtins from nested data.

Written once here for the outputs (label maps and affines arrive as tensors, MetaTensors or arrays), the
postprocessing and the files medseg writes (plans, reports). No torch import: a tensor is recognised by its
``detach`` method, so modules that only write files do not pull torch in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["as_numpy", "to_plain"]


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: a tensor (or MetaTensor) detached and copied to the CPU, anything else through
    ``np.asarray`` (no copy when it already is an array)."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def to_plain(value: Any, *, text_keys: bool = False) -> Any:
    """``value`` with tuples as lists, NumPy scalars as Python numbers, arrays as nested lists and paths as text,
    through mappings and sequences; other values as they are.

    Args:
        text_keys: mapping keys become ``str`` (JSON with sorted keys needs keys of one type); otherwise they are
            kept (YAML keeps integer label values as integers).
    """
    if isinstance(value, Mapping):
        return {(str(k) if text_keys else k): to_plain(v, text_keys=text_keys) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, text_keys=text_keys) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
