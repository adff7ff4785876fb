"""What an observer of training (e.g. the MLflow run logger, the console progress) sees: six hooks and the final
:class:`TrainResult`.

An observer is any object with some of these methods; missing ones are skipped. Hooks observe, they do not steer:
an exception raised by a hook is logged and training goes on. :class:`Observers` fans the hooks out to several.

* ``on_start(params)``: ``params = {"config": <config as plain data, without the datalist path>,
  "dataset": <dataset summary: counts, spacing/shape statistics, channel and label names; no case ids>,
  "run": {"device", "medseg_version", "resumed_from_epoch", "validation" (bool), "world_size" (processes)}}``;
* ``on_epoch_start(epoch, info)``: ``{"steps": <steps in this epoch, or None>, "epochs": <epochs planned>}``;
* ``on_step_end(epoch, step, info)``: ``{"loss", "lr", "progress" (fraction of the run done), "eta_seconds"
  (None while unknown)}`` after every optimisation step;
* ``on_epoch_end(epoch, metrics)``: ``{"train/loss", "train/lr" (of the epoch's last step), "train/seconds",
  "train/steps", "run/elapsed_seconds", "run/progress", "run/eta_seconds", ...}`` for every epoch, as soon as its
  steps are done (before its validation);
* ``on_validation(epoch, metrics, qc_pngs)``: ``{"val/dice_mean", "val/dice/<label name>", ...}`` plus the best
  so far, ``"best/dice_mean"`` and ``"best/epoch"``, and the QC overlay PNGs written for this validation;
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
        seconds: wall-clock time of :func:`train` (this call).
        train_seconds: time of the training loop (epochs, validations, checkpoints), across resumes: what
            ``train.budget_minutes`` limits.
        stopped_by: ``"epochs"`` (all of ``train.epochs`` ran) or ``"budget"`` (the time budget was used up);
            None for a run that did not finish.
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
    train_seconds: float = 0.0
    stopped_by: str | None = None
    model: Any = None

    @property
    def succeeded(self) -> bool:
        """True only for a completed run with a best checkpoint: the only kind that may be registered."""
        return self.status == "completed" and self.best_checkpoint is not None


@runtime_checkable
class TrainingObserver(Protocol):
    """The hook protocol (every method optional in practice, see :func:`notify`)."""

    def on_start(self, params: Mapping[str, Any]) -> None: ...

    def on_epoch_start(self, epoch: int, info: Mapping[str, Any]) -> None: ...

    def on_step_end(self, epoch: int, step: int, info: Mapping[str, Any]) -> None: ...

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


class Observers:
    """Several observers as one: each hook goes to every observer in order (each one's errors logged apart)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = [o for o in observers if o is not None]

    def __getattr__(self, hook: str) -> Any:
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def fan_out(*args: Any) -> None:
            for observer in self.observers:
                notify(observer, hook, *args)

        return fan_out
