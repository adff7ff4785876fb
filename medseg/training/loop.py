"""The training loop: steps return dicts, epochs end with validation and checkpoints, observers see it all.

Replayability: every epoch starts from a loader seeded by (seed, epoch) (:func:`medseg.training.data.epoch_loader`)
and checkpoints are written at epoch ends only, so resuming from ``last.pt`` after epoch ``e`` runs epochs ``e+1..``
exactly as an uninterrupted run would (on CPU, with deterministic algorithms).

A non-finite loss, or non-finite weights at the end of an epoch, raises :class:`TrainingDiverged` at once: no
checkpoint is written after it.

With a wall-clock budget (see :mod:`medseg.training.clock`) the epoch during which the budget runs out ends after
the step that used it up; that epoch is the last: it is validated and checkpointed like the last epoch of an
epoch-limited run. A schedule with ``set_progress`` (:class:`medseg.training.optim.ProgressPoly`) gets the
fraction of the run done before every step, and 1 when the run ends. The time used is kept in ``last.pt``, so a
resumed run continues with the budget left. Exact replay holds for epoch-limited runs only: where a budgeted run
stops, and its learning rates, depend on the machine's speed.

Without validation (``val_every: 0``) ``best.pt`` holds the weights of the final epoch.

Several processes (DDP, :mod:`medseg.training.distributed`): every rank runs this loop on its share of the
batches with the model in ``DistributedDataParallel``. The step losses are averaged over the ranks, rank 0's
clock decides the learning rate and the end of a budgeted run, rank 0 alone validates (the others wait for its
metrics) and writes the checkpoints, and the observer is given to rank 0 only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.checkpoint import Checkpoint, ModelSpec, capture_rng, restore_rng, save_checkpoint
from medseg.errors import MedsegError
from medseg.training.clock import RunClock
from medseg.training.distributed import LOCAL, Distributed, unwrap
from medseg.training.hooks import notify
from medseg.training.precision import resolve_precision

logger = logging.getLogger(__name__)


def _float32(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Network output (a tensor, or a list under deep supervision) in float32, for the loss."""
    return [o.float() for o in out] if isinstance(out, list | tuple) else out.float()


class TrainingDiverged(MedsegError):
    """The loss (or the weights) became NaN or infinite; training stopped without writing a checkpoint."""

    def __init__(self, epoch: int, step: int | None, value: float, what: str = "loss") -> None:
        self.epoch, self.step, self.value = epoch, step, value
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else " (end of epoch)")
        super().__init__(
            f"training diverged at {where}: {what} is {value}; no checkpoint was written after it "
            "(lower train.lr, enable train.grad_clip, or check the inputs for extreme values)"
        )


@dataclass
class LoopState:
    """Progress that a checkpoint carries: last finished epoch, best validation score, history."""

    epoch: int = -1
    best_metric: float = -math.inf
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str | None = None  # "epochs" or "budget" once the run has finished


class Trainer:
    """Runs epochs ``start..epochs-1`` of one model.

    Args:
        model, loss, optimizer, scheduler: the pieces; ``loss(pred, target, dist)`` (a
            :class:`medseg.losses.DeepSupervisionLoss`), the scheduler is stepped once per epoch, or, when it has
            ``set_progress``, given the fraction of the run done before every step.
        spec: written into every checkpoint.
        loaders: ``epoch -> iterable of batches`` (``image``, ``label`` and, when ``needs_dist``, ``dist``).
        needs_dist: whether batches carry distance maps for the loss (default: the loss's ``requires_dist``).
        validate: ``epoch -> (metrics, qc_pngs)``; ``val/dice_mean`` selects the best checkpoint.
        checkpoint_dir: where ``last.pt`` and ``best.pt`` go.
        epochs, val_every: epoch count (an upper bound with a budget) and validation period (the last epoch is
            always validated; 0: no validation at all).
        budget_seconds: wall-clock budget of the loop (None: run all epochs).
        device: where the model trains.
        amp, precision: ``train.amp`` and ``train.precision``, resolved for ``device`` by
            :func:`medseg.training.precision.resolve_precision` (``auto`` with ``amp``: fp16 on CUDA, bf16 on a
            CPU with native bfloat16, else fp32; ``amp`` false: fp32). The loss is computed in float32.
        grad_clip: max gradient norm (None: no clipping).
        observer: optional hook object (see :mod:`medseg.training.hooks`).
        dist: this process's place in a data-parallel run (default: a single process); ``model`` is then the
            ``DistributedDataParallel`` wrapper.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        spec: ModelSpec,
        loaders: Callable[[int], Iterable[Mapping[str, Any]]],
        validate: Callable[[int], tuple[dict[str, float], list[Path]]],
        checkpoint_dir: Path,
        epochs: int,
        val_every: int = 1,
        device: torch.device | str = "cpu",
        amp: bool = False,
        precision: str = "auto",
        needs_dist: bool | None = None,
        grad_clip: float | None = None,
        observer: Any = None,
        budget_seconds: float | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.model, self.loss, self.optimizer, self.scheduler = model, loss, optimizer, scheduler
        self.net = unwrap(model)  # what checkpoints hold
        self.dist = dist if dist is not None else LOCAL
        self.spec, self.loaders, self.validate_fn = spec, loaders, validate
        self.checkpoint_dir = Path(checkpoint_dir)
        if val_every < 0:
            raise ValueError(f"val_every must be >= 0, got {val_every}")
        self.epochs, self.val_every = epochs, val_every
        self.per_step = callable(getattr(scheduler, "set_progress", None))
        if budget_seconds is not None and not self.per_step:
            raise ValueError("a time budget needs a schedule driven by progress (set_progress), e.g. ProgressPoly")
        self.clock = RunClock(epochs, val_every, budget_seconds)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device, amp=bool(amp))
        logger.info("training precision %s: %s", self.precision.name, self.precision.reason)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None
        if needs_dist is None:  # the loss says whether it takes distance maps
            needs_dist = bool(getattr(loss, "requires_dist", False))
        self.needs_dist, self.grad_clip, self.observer = needs_dist, grad_clip, observer
        self.state = LoopState()

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def previous_path(self) -> Path:
        """The ``last.pt`` of the epoch before: what ``--resume`` falls back to when ``last.pt`` is unusable."""
        return self.checkpoint_dir / "last-previous.pt"

    def _save_last(self, ckpt: Checkpoint) -> None:
        """Keep the current ``last.pt`` as :attr:`previous_path` (a rename), then write the new one atomically."""
        if self.last_path.is_file():
            os.replace(self.last_path, self.previous_path)
        save_checkpoint(self.last_path, ckpt)

    # ------------------------------------------------------------------------------------------------ steps
    def train_step(self, batch: Mapping[str, Any], epoch: int, step: int) -> dict[str, float]:
        """One optimisation step; returns ``{"loss": ...}``."""
        self.model.train()
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        dist = batch["dist"].to(self.device, non_blocking=True) if self.needs_dist else None
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast(self.device):
            out = self.model(image)
        loss = self.loss(_float32(out), label, dist)
        value = self.dist.mean(float(loss.detach()))  # every rank sees (and checks) the same value
        if not math.isfinite(value):
            raise TrainingDiverged(epoch, step, value)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return {"loss": value}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """The steps of one epoch (all, or up to the one that uses up the time budget); returns ``train/*``
        metrics (mean loss, learning rate of the last step, steps, seconds)."""
        start = time.perf_counter()
        inner = getattr(self.loss, "loss", self.loss)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)
        loader = self.loaders(epoch)
        n_steps = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        if n_steps:
            self.clock.steps_per_epoch = n_steps
        notify(self.observer, "on_epoch_start", epoch, {"steps": n_steps, "epochs": self.epochs})
        losses = []
        lr = float(self.optimizer.param_groups[0]["lr"])
        before = time.perf_counter()
        for step, batch in enumerate(loader):
            if self.per_step:
                lr = self.scheduler.set_progress(self._agreed(self.clock.fraction()))
            losses.append(self.train_step(batch, epoch, step)["loss"])
            now = time.perf_counter()
            self.clock.note_step(now - before)
            before = now
            progress = self.clock.fraction()
            info = {"loss": losses[-1], "lr": lr, "progress": progress, "eta_seconds": self.clock.eta(epoch)}
            notify(self.observer, "on_step_end", epoch, step, info)
            if self._agreed(self.clock.exhausted()):
                break
        if not losses:
            raise ValueError(f"epoch {epoch} had no training batches")
        for name, p in self.net.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingDiverged(epoch, None, float("nan"), what=f"parameter {name}")
        self.scheduler.step()
        metrics = {
            "train/loss": sum(losses) / len(losses),
            "train/lr": lr,
            "train/steps": float(len(losses)),
            "train/seconds": time.perf_counter() - start,
        }
        weights = getattr(inner, "weights", None)
        if isinstance(weights, tuple) and len(weights) == 2:
            metrics["train/region_weight"], metrics["train/boundary_weight"] = map(float, weights)
        return metrics

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int, metrics: Mapping[str, float], full: bool) -> Checkpoint:
        st = self.state
        extra: dict[str, Any] = {
            "history": st.history,
            "best_metric": st.best_metric,
            "best_epoch": st.best_epoch,
            "stopped_by": st.stopped_by,
            "clock": self.clock.state_dict(),
        }
        if self.scaler is not None:
            extra["grad_scaler"] = self.scaler.state_dict()
        return Checkpoint(
            state_dict=self.net.state_dict(),
            spec=self.spec,
            epoch=epoch,
            metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
            optimizer=self.optimizer.state_dict() if full else None,
            scheduler=self.scheduler.state_dict() if full else None,
            rng=capture_rng() if full else None,
            extra=extra,
        )

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a ``last.pt`` checkpoint: weights, optimizer, scheduler, RNG and loop state."""
        if ckpt.optimizer is None or ckpt.scheduler is None:
            raise ValueError(
                "this checkpoint has no optimizer/scheduler state (a best.pt?); resume needs last.pt"
            )
        self.net.load_state_dict(ckpt.state_dict)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        if self.scaler is not None and "grad_scaler" in ckpt.extra:
            self.scaler.load_state_dict(ckpt.extra["grad_scaler"])
        if ckpt.rng is not None and self.dist.is_main:  # rank 0's generators (each epoch reseeds them anyway)
            restore_rng(ckpt.rng)
        best = ckpt.extra.get("best_metric", -math.inf)
        self.state = LoopState(
            ckpt.epoch,
            float(best),
            ckpt.extra.get("best_epoch"),
            [dict(h) for h in ckpt.extra.get("history", [])],
            ckpt.extra.get("stopped_by"),
        )
        steps = int(sum(h.get("train/steps", 0.0) for h in self.state.history))
        self.clock.load_state_dict(dict(ckpt.extra.get("clock") or {}), steps)

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> LoopState:
        """Train from the epoch after ``state.epoch`` to the end (the last epoch, or the budget used up).

        A run that has finished (``state.stopped_by`` set) trains no further.
        """
        st = self.state
        if st.stopped_by is not None:
            logger.info("the run already finished (stopped by %s after epoch %d): nothing to train", st.stopped_by,
                        st.epoch)
            return st
        self.clock.start()
        try:
            self._run_epochs()
        finally:
            self.clock.stop()
        self.dist.barrier()  # rank 0's last checkpoints are on disk for every rank
        return st

    def _agreed(self, value: Any) -> Any:
        """Rank 0's clock decision on every rank (under a time budget; without one the ranks agree anyway)."""
        return value if self.clock.budget is None else self.dist.from_main(value)

    def _run_epochs(self) -> None:
        st, validating = self.state, self.val_every > 0
        for epoch in range(st.epoch + 1, self.epochs):
            train = self.train_epoch(epoch)
            due = validating and (epoch + 1) % self.val_every == 0
            last = epoch == self.epochs - 1 or self._agreed(self.clock.last_epoch(due))
            if last:
                st.stopped_by = "epochs" if epoch == self.epochs - 1 else "budget"
                if self.per_step:
                    self.scheduler.set_progress(1.0)  # the final learning rate, as after the last poly epoch
            run = {"run/elapsed_seconds": self.clock.elapsed(), "run/progress": 1.0 if last else self.clock.fraction()}
            eta = self.clock.eta(epoch)
            if eta is not None:
                run["run/eta_seconds"] = eta
            record: dict[str, float] = {"epoch": float(epoch), **train, **run}
            logger.debug("epoch %d: loss %.4f (%.1f s)", epoch, record["train/loss"], record["train/seconds"])
            notify(self.observer, "on_epoch_end", epoch, {k: v for k, v in record.items() if k != "epoch"})
            qc: list[Path] = []
            val: dict[str, float] = {}
            if validating and (due or last):
                t = time.perf_counter()
                if self.dist.is_main:
                    val, qc = self.validate_fn(epoch)
                val = self.dist.from_main(val)  # the other ranks wait here for rank 0's validation
                self.clock.note_validation(time.perf_counter() - t)
                record.update(val)
                logger.debug("epoch %d: validation Dice %.4f", epoch, val["val/dice_mean"])
            st.history.append(record)
            st.epoch = epoch
            t = time.perf_counter()
            writes = self.dist.is_main
            if val and val["val/dice_mean"] > st.best_metric:
                st.best_metric, st.best_epoch = val["val/dice_mean"], epoch
                if writes:
                    save_checkpoint(self.best_path, self._checkpoint(epoch, val, full=False))
            if writes and not validating and last:  # nothing to choose by: the final weights are the model
                save_checkpoint(self.best_path, self._checkpoint(epoch, record, full=False))
            if writes:
                self._save_last(self._checkpoint(epoch, record, full=True))
            self.clock.note_checkpoint(time.perf_counter() - t)
            if val:
                best = {"best/dice_mean": st.best_metric, "best/epoch": float(st.best_epoch or 0)}
                notify(self.observer, "on_validation", epoch, {**val, **best}, qc)
            if last:
                break
