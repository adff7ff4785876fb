"""What an observer of training (e.g. the MLflow run logger) sees: four hooks and the final :class:`TrainResult`.

An observer is any object with some of these methods; missing ones are skipped. Hooks observe, they do not steer:
an exception raised by a hook is logged and training goes on.

* ``on_start(params)``: ``params = {"config": <config as plain data, without the datalist path>,
  "dataset": <dataset summary: counts, spacing/shape statistics, channel and label names; no case ids>,
  "run": {"device", "medseg_version", "resumed_from_epoch"}}``;
* ``on_epoch_end(epoch, metrics)``: ``{"train/loss", "train/lr", "train/seconds", ...}`` for every epoch;
* ``on_validation(epoch, metrics, qc_pngs)``: ``{"val/dice_mean", "val/dice/<label name>", ...}`` and the QC
  overlay PNGs written for this validation;
* ``on_end(result)``: called exactly once after ``on_start``, also when training then fails; ``result.status`` is
  ``"completed"`` only for a finished run (``"diverged"`` after a non-finite loss, ``"failed"`` otherwise) and
  ``result.succeeded`` says whether a model may be registered. Errors found before ``on_start`` (config,
  datalist validation, data loading for the cache) are raised without any hook being called.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Status = Literal["completed", "diverged", "failed"]


@dataclass
class TrainResult:
    """The outcome of :func:`medseg.training.train`.

    Attributes:
        status: ``completed``, ``diverged`` (non-finite loss) or ``failed``.
        workdir: the run's folder.
        best_checkpoint, last_checkpoint: checkpoint files (None if none was written).
        best_metrics: validation metrics of the best epoch (``val/dice_mean`` ...).
        best_epoch: 0-based epoch of the best checkpoint.
        history: one dict per epoch run so far (``epoch``, training and, when validated, validation metrics).
        learning_curve: the learning-curve PNG.
        qc_images: QC overlay PNGs of the last validation.
        dataset_summary: counts, spacing/shape statistics, channel and label names (no case ids).
        error: what went wrong, for a run that did not complete.
        seconds: wall-clock time of :func:`train`.
        model: for a completed run, the trained network in eval mode holding the weights of ``best_checkpoint``
            (of ``last_checkpoint`` if no epoch was validated) -- the model a tracker registers.
    """

    status: Status
    workdir: Path
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    learning_curve: Path | None = None
    qc_images: list[Path] = field(default_factory=list)
    dataset_summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    model: Any = None

    @property
    def succeeded(self) -> bool:
        """True only for a completed run with a best checkpoint: the only kind that may be registered."""
        return self.status == "completed" and self.best_checkpoint is not None


@runtime_checkable
class TrainingObserver(Protocol):
    """The hook protocol (every method optional in practice, see :func:`notify`)."""

    def on_start(self, params: Mapping[str, Any]) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None: ...

    def on_validation(self, epoch: int, metrics: Mapping[str, float], qc_pngs: Sequence[Path]) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


def notify(observer: Any, hook: str, *args: Any) -> None:
    """Call ``observer.<hook>(*args)`` if the observer has it; log (and swallow) its exceptions."""
    if observer is None:
        return
    method = getattr(observer, hook, None)
    if method is None:
        return
    try:
        method(*args)
    except Exception:  # an observer must never stop training
        logger.exception("training observer %s.%s failed; training continues", type(observer).__name__, hook)
