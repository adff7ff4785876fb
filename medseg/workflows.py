"""End-to-end workflows composed from the library: train + track + register (what `medseg train` runs)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class TrainRegisterResult:
    """What a train-and-register run left behind."""

    train: Any  # medseg.training.TrainResult
    tracking_uri: str
    run_id: str | None
    model: Any = None  # medseg.tracking.ModelVersionInfo when registered
    tracking_report: dict[str, Any] = field(default_factory=dict)


def train_and_register(
    config: Any,
    workdir: str | os.PathLike,
    *,
    tracking_uri: str,
    resume: bool = False,
    datalist: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    register: bool = True,
    observers: Sequence[Any] = (),
    distributed: Any = None,
) -> TrainRegisterResult:
    """Train from a config while MLflow observes the run, then register the best model.

    The model is registered (new version, alias from ``tracking.alias``, ``champion`` by default) only when
    training completed; a diverged or failed run registers nothing. With the tracking server unreachable training
    still completes: what could not be logged is kept in ``workdir/mlflow-offline`` and reported (``medseg replay``
    sends it later; spools that earlier runs left there, interrupted ones too, get one warning here). ``observers``
    see the training hooks too (e.g. :class:`medseg.training.progress.ConsoleProgress`).

    In a data-parallel run (``distributed``, a :class:`medseg.training.distributed.Distributed`) every rank calls
    this; rank 0 alone opens the MLflow run, gets ``observers`` and registers; the other ranks only train.
    """
    from medseg.checkpoint import load_checkpoint
    from medseg.tracking import RunLogger, register_model
    from medseg.tracking.observer import MLflowObserver
    from medseg.tracking.spools import SPOOL_ROOT, warn_unsent_spools
    from medseg.training import train
    from medseg.training.hooks import Observers
    from medseg.training.run import resolve_config

    cfg = resolve_config(config, overrides)
    work = Path(workdir)
    if distributed is not None and not distributed.is_main:
        result = train(cfg, work, resume=resume, datalist=datalist, distributed=distributed)
        return TrainRegisterResult(train=result, tracking_uri=tracking_uri, run_id=None)
    warn_unsent_spools(work)  # a killed earlier run's calls: named, not sent on their own
    run_logger = RunLogger(cfg.tracking, tracking_uri, work / SPOOL_ROOT)
    observer = MLflowObserver(run_logger, run_name=cfg.name)
    try:
        result = train(cfg, work, resume=resume, tracker=Observers(observer, *observers), datalist=datalist,
                       distributed=distributed)
    except BaseException:
        if run_logger.active:
            run_logger.end("FAILED")
        raise
    out = TrainRegisterResult(train=result, tracking_uri=tracking_uri, run_id=run_logger.run_id)
    try:
        name = cfg.tracking.registered_model
        if register and result.succeeded and name:
            ckpt = load_checkpoint(result.best_checkpoint)
            if not cfg.tracking.enabled:
                logger.warning("tracking.enabled is false: model not registered as %s; checkpoint at %s", name,
                               result.best_checkpoint)
            elif run_logger.offline:
                logger.warning("tracking server unreachable: model not registered; checkpoint at %s",
                               result.best_checkpoint)
            else:
                out.model = register_model(run_logger, result.best_checkpoint, ckpt.spec.to_dict(), name,
                                           alias=cfg.tracking.alias, tracking_uri=tracking_uri)
                logger.info("registered models:/%s/%s (alias %s)", out.model.name, out.model.version, out.model.alias)
    finally:
        if run_logger.active:
            run_logger.end("FINISHED" if result.succeeded else "FAILED")
        out.tracking_report = run_logger.report()
    return out


def describe(result: TrainRegisterResult) -> Mapping[str, Any]:
    """A small summary for the command line."""
    t = result.train
    return {
        "status": t.status,
        "best_epoch": t.best_epoch,
        "best_metrics": t.best_metrics,
        "best_checkpoint": str(t.best_checkpoint) if t.best_checkpoint else None,
        "epochs_run": len(t.history),
        "stopped_by": t.stopped_by,
        "train_seconds": round(float(t.train_seconds), 1),
        "tracking_uri": result.tracking_uri,
        "run_id": result.run_id,
        "model_uri": (result.model.alias_uri or result.model.uri) if result.model else None,
        "offline": result.tracking_report.get("offline"),
    }
