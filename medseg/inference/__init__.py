"""Inference: predictors built from self-describing checkpoints or registered models."""

from __future__ import annotations

from medseg.inference.loading import ModelNotFoundError, load_model
from medseg.inference.predictor import Predictor, resolve_device
from medseg.inference.sliding import SlidingWindowConfig, make_inferer

__all__ = ["ModelNotFoundError", "Predictor", "SlidingWindowConfig", "load_model", "make_inferer", "resolve_device"]


def load_checkpoint_predictor(path, device="auto", **kwargs) -> Predictor:
    """A :class:`Predictor` from a checkpoint file (used by the MLflow pyfunc wrapper)."""
    return Predictor.from_checkpoint(path, device=device, **kwargs)
