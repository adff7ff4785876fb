"""The training observer that forwards the loop's hooks to a :class:`RunLogger` (tracking observes the loop)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.tracking.logger import RunLogger

logger = logging.getLogger(__name__)

_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}


class MLflowObserver:
    """Implements the hooks of :mod:`medseg.training.hooks` on top of a :class:`RunLogger`.

    The run starts in ``on_start`` and ends in ``on_end``; registration, which needs the finished run's best
    checkpoint, is done afterwards by :func:`medseg.workflows.train_and_register`. Logged per epoch (the step is the
    0-based epoch): ``train/loss``, ``train/lr``, ``train/seconds``, ``run/elapsed_seconds``, ``run/progress``,
    ``run/eta_seconds``; per validation: ``val/dice_mean``, ``val/dice/<label>``, ``best/dice_mean``,
    ``best/epoch``; at the end: ``run/train_seconds`` and the tags ``medseg.status`` and ``medseg.stopped_by``.
    """

    def __init__(self, run_logger: RunLogger, run_name: str | None = None) -> None:
        self.run_logger = run_logger
        self.run_name = run_name

    def on_start(self, params: Mapping[str, Any]) -> None:
        config = dict(params.get("config", {}))
        self.run_logger.start(self.run_name or str(config.get("name", "medseg")), params=config,
                              tags={"medseg.resumed_from_epoch": params.get("run", {}).get("resumed_from_epoch")})
        self.run_logger.log_system_info()
        self.run_logger.log_dict(dict(params.get("dataset", {})), "dataset_summary.json")
        self.run_logger.log_dict(config, "config.json")

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.run_logger.log_metrics(metrics, step=epoch)

    def on_validation(self, epoch: int, metrics: Mapping[str, float], qc_pngs: Sequence[Path]) -> None:
        self.run_logger.log_metrics(metrics, step=epoch)
        for png in qc_pngs:
            self.run_logger.log_image(png, artifact_path=f"qc/epoch_{epoch:03d}")

    def on_end(self, result: Any) -> None:
        if result.learning_curve is not None:
            self.run_logger.log_image(result.learning_curve, artifact_path="plots")
        config_yaml = Path(result.workdir) / "config.yaml"
        if config_yaml.is_file():
            self.run_logger.log_artifact(config_yaml)
        if result.best_metrics:
            best = {f"best/{k.split('/', 1)[-1]}": v for k, v in result.best_metrics.items()}
            self.run_logger.log_metrics(best, step=int(result.best_epoch or 0))  # keys sanitised by RunLogger
        if result.error:
            self.run_logger.set_tags({"medseg.error": result.error[:500]})
        if result.history:
            self.run_logger.log_metrics({"run/train_seconds": float(result.train_seconds)},
                                        step=int(result.history[-1]["epoch"]))
        self.run_logger.set_tags({"medseg.status": result.status, "medseg.stopped_by": result.stopped_by})
        # the run stays open for registration when training completed; the workflow ends it
        if not result.succeeded:
            self.run_logger.end(_STATUS.get(result.status, "FAILED"))
