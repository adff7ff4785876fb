"""One device per batch worker: ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a list) -> a device string
for each of N workers.

``cuda`` (and ``auto`` on a machine with GPUs) spreads the workers over the visible GPUs: worker ``i`` gets
``cuda:{i % n}``. A comma-separated list (``cuda:0,cuda:2``) pins the workers to those devices in turn; a list longer
than the number of workers is fine (the rest stay unused). The functions are pure: the caller passes the number of
visible CUDA devices (``torch.cuda.device_count()``), so they are tested without a GPU.
"""

from __future__ import annotations

import re

from medseg.errors import ConfigError

__all__ = ["parse_devices", "worker_devices"]

_ONE = re.compile(r"^(cpu|cuda(?::(\d+))?)$")
_FORMS = "auto, cpu, cuda, cuda:N or a comma-separated list such as cuda:0,cuda:2"


def parse_devices(text: str) -> list[str]:
    """The device names in ``text`` (``auto``, or one or more of ``cpu``, ``cuda``, ``cuda:N``), checked.

    Raises:
        ConfigError: naming the first entry that is not a device.
    """
    if not isinstance(text, str):
        raise ConfigError(f"device must be a string ({_FORMS}), got {text!r}")
    names = [n.strip().lower() for n in text.split(",")]
    if names == ["auto"]:
        return names
    for name in names:
        if not _ONE.match(name):
            raise ConfigError(f"device {name!r} is not a device; expected {_FORMS}")
    return names


def worker_devices(device: str, workers: int, cuda_count: int) -> list[str]:
    """The device of each of ``workers`` workers for the ``--device`` value ``device``.

    Args:
        device: ``auto`` (the GPUs when there are any, else ``cpu``), ``cpu``, ``cuda`` (spread over the visible
            GPUs), ``cuda:N``, or a comma-separated list pinning the workers in turn.
        workers: the number of workers (>= 1).
        cuda_count: the number of visible CUDA devices.

    Raises:
        ConfigError: a device that is not one, or a CUDA device that is not visible (the message names it).
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    names = parse_devices(device)
    if names == ["auto"]:
        names = ["cuda"] if cuda_count > 0 else ["cpu"]
    if names == ["cuda"]:
        if cuda_count < 1:
            raise ConfigError("device 'cuda': no CUDA device is visible on this machine; use --device cpu")
        return [f"cuda:{i % cuda_count}" for i in range(workers)]
    for name in names:
        if name == "cuda":
            raise ConfigError(f"device list {device!r}: name each GPU (cuda:N) in a list")
        if name.startswith("cuda:") and int(name[5:]) >= cuda_count:
            raise ConfigError(
                f"device {name!r} is not visible on this machine ({cuda_count} CUDA device(s))"
            )
    return [names[i % len(names)] for i in range(workers)]
