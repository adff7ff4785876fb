"""Training progress for a person watching: a tqdm bar per epoch and one log line per epoch and per validation.

:class:`ConsoleProgress` is an observer of the loop's hooks (:mod:`medseg.training.hooks`). The bar (steps,
steps/s, loss, learning rate and the ETA of the whole run) is drawn on stderr, by default only when stderr is a
terminal; the lines go through :mod:`logging` at INFO (``medseg train`` shows them unless ``--quiet``)::

    epoch 3/24  loss 0.4121  lr 2.61e-03  4.2 s  elapsed 0:13  ETA 1:28
    validation after epoch 4: Dice infarct_core 0.8123 (mean 0.8123)  best 0.8123 at epoch 4

Epochs are counted from 1 in these lines (the history and checkpoints count from 0).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)


def format_seconds(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ConsoleProgress:
    """The console observer: a progress bar per epoch and a line per epoch and per validation.

    Args:
        bar: draw the tqdm bar (None: only when ``file`` is a terminal).
        file: the bar's stream (default: stderr at the time of each epoch).
        mininterval: least seconds between two redraws of the bar.
    """

    def __init__(self, bar: bool | None = None, file: IO[str] | None = None, mininterval: float = 0.5) -> None:
        self.bar_enabled, self.file, self.mininterval = bar, file, mininterval
        self.epochs = 0
        self.budget_minutes: float | None = None
        self._bar: Any = None

    def _stream(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------------------------------------ hooks
    def on_start(self, params: Mapping[str, Any]) -> None:
        train = dict(params.get("config", {}).get("train", {}))
        dataset = dict(params.get("dataset", {}))
        run = dict(params.get("run", {}))
        self.epochs = int(train.get("epochs", 0))
        self.budget_minutes = train.get("budget_minutes")
        limit = f"up to {self.epochs} epochs" if self.budget_minutes else f"{self.epochs} epochs"
        if self.budget_minutes:
            limit += f" within {float(self.budget_minutes):g} min"
        resumed = run.get("resumed_from_epoch")
        logger.info(
            "training %s on %s: %s training case(s), %s validation case(s)%s%s",
            limit,
            run.get("device", "?") + (f" x {run['world_size']} processes" if run.get("world_size", 1) > 1 else ""),
            dataset.get("n_train", "?"),
            dataset.get("n_val", "?"),
            "" if run.get("validation", True) else " (validation off)",
            f"; resuming after epoch {int(resumed) + 1}" if resumed is not None else "",
        )

    def on_epoch_start(self, epoch: int, info: Mapping[str, Any]) -> None:
        self._close_bar()
        stream = self._stream()
        enabled = self.bar_enabled if self.bar_enabled is not None else bool(getattr(stream, "isatty", bool)())
        if not enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=info.get("steps"),
            desc=f"epoch {epoch + 1}/{info.get('epochs', self.epochs)}",
            unit="step",
            file=stream,
            leave=False,
            dynamic_ncols=True,
            mininterval=self.mininterval,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
            "{rate_fmt}]{postfix}",
        )

    def on_step_end(self, epoch: int, step: int, info: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix_str(
            f"loss {info['loss']:.4f}, lr {info['lr']:.2e}, run ETA {format_seconds(info.get('eta_seconds'))}",
            refresh=False,
        )
        self._bar.update(1)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._close_bar()
        used = ""
        if self.budget_minutes:
            used = f"  budget {100 * metrics.get('run/elapsed_seconds', 0.0) / (60 * self.budget_minutes):.0f}% used"
        logger.info(
            "epoch %d/%d  loss %.4f  lr %.2e  %.1f s  elapsed %s  ETA %s%s",
            epoch + 1,
            self.epochs,
            metrics["train/loss"],
            metrics["train/lr"],
            metrics.get("train/seconds", 0.0),
            format_seconds(metrics.get("run/elapsed_seconds")),
            format_seconds(metrics.get("run/eta_seconds")),
            used,
        )

    def on_validation(self, epoch: int, metrics: Mapping[str, float], qc_pngs: Sequence[Path]) -> None:
        per_label = ", ".join(
            f"{k.split('/', 2)[2]} {v:.4f}" for k, v in metrics.items() if k.startswith("val/dice/")
        )
        best = ""
        if "best/dice_mean" in metrics:
            best = f"  best {metrics['best/dice_mean']:.4f} at epoch {int(metrics.get('best/epoch', epoch)) + 1}"
        logger.info(
            "validation after epoch %d: Dice %s (mean %.4f)%s", epoch + 1, per_label, metrics["val/dice_mean"], best
        )

    def on_end(self, result: Any) -> None:
        self._close_bar()
        if result.status != "completed":
            return
        epochs = len(result.history)
        best = ""
        if result.best_epoch is not None and result.best_metrics:
            best = f"; best Dice {result.best_metrics.get('val/dice_mean', float('nan')):.4f} at epoch " \
                f"{result.best_epoch + 1}"
        elif result.best_checkpoint is not None:
            best = "; no validation: best.pt holds the final weights"
        logger.info(
            "training finished after %d epoch(s), %s of training (stopped by %s)%s",
            epochs,
            format_seconds(result.train_seconds),
            result.stopped_by,
            best,
        )
