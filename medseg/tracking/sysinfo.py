"""Versions and hardware of the machine a run trains on (logged as run tags)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def system_info() -> dict[str, Any]:
    """Python / torch / MONAI / MLflow / medseg versions, CPU count and CUDA devices (names, if any)."""
    from medseg._version import __version__

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "medseg": __version__,
        "torch": _version("torch"),
        "monai": _version("monai"),
        "mlflow": _version("mlflow"),
        "numpy": _version("numpy"),
        "cpu_count": os.cpu_count() or 0,
        "cuda_devices": "none",
    }
    try:
        import torch
    except ImportError:
        return info
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_devices"] = ", ".join(names)
        info["cuda_version"] = str(torch.version.cuda)
    return info
