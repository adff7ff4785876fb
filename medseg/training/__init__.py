"""Config-driven training: datalists, transform chains, datasets, splits, the loop and ``train()``."""

from __future__ import annotations

from medseg.training.datalist import CaseEntry, CaseInfo, DatalistError, load_datalist, validate_datalist
from medseg.training.hooks import TrainingObserver, TrainResult
from medseg.training.loop import Trainer, TrainingDiverged
from medseg.training.run import build_model_spec, public_config, train
from medseg.training.split import choose_split, holdout_split, kfold_split, split_cases

__all__ = [
    "CaseEntry",
    "CaseInfo",
    "DatalistError",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingObserver",
    "build_model_spec",
    "choose_split",
    "holdout_split",
    "kfold_split",
    "load_datalist",
    "public_config",
    "split_cases",
    "train",
    "validate_datalist",
]
