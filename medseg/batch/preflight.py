"""Checks of a batch run's arguments before anything is loaded or written: output formats, input and output paths
(the output folder writable, not inside-out with the input), and a model given as an object or a URI."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.atomic import TEMP_PREFIX
from medseg.errors import ConfigError
from medseg.inference.options import InferenceOptions

__all__ = ["check_formats", "check_model", "check_paths", "check_writable"]


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    from medseg.outputs import FORMATS

    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    if not formats:
        raise ConfigError("formats: at least one output format is needed")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"formats: unknown output format(s) {unknown}; valid: {list(FORMATS)}")
    return tuple(f for f in FORMATS if f in formats)


def check_paths(input_path: Path, output: Path) -> None:
    if output == input_path or input_path.is_relative_to(output):
        raise ConfigError(
            "the output folder must not be the input or contain it; choose a separate output folder"
        )
    if output.exists() and not output.is_dir():
        raise ConfigError("the output path exists and is not a folder")
    check_writable(output)


def check_writable(output: Path) -> None:
    """Preflight: a file can be created in ``output`` (or, before it exists, in its nearest existing parent).

    Probed by creating and removing a temp file, which also catches what permission bits do not show (read-only
    file systems, immutable folders, root squash); so a run never loads a model and fails at its first write.
    """
    existing = output
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{output}: cannot create the output folder: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".probe", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{output}: the output folder is not writable ({exc.strerror or exc})") from None


def check_model(model: Any, options: InferenceOptions | None, *, workers: int, ray: bool = False) -> None:
    if isinstance(model, str | os.PathLike):
        return  # settings are checked when the model is loaded (resolve_postprocess), before anything is written
    if not hasattr(model, "predict") or not hasattr(model, "spec"):
        raise ConfigError(
            f"model must be a model URI / checkpoint path or a Predictor, got {type(model).__name__}"
        )
    if workers > 1 or ray:
        raise ConfigError(
            f"{'ray' if ray else 'workers > 1'} needs a model URI or checkpoint path (each worker loads its own model)"
        )
    if options is not None and options.replace(device="auto") != InferenceOptions():
        raise ConfigError("inference options apply when loading a model; a ready Predictor has its own")
