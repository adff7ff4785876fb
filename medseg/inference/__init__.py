"""Inference: predictors built from self-describing checkpoints or registered models."""

from __future__ import annotations

from medseg.inference.loading import ModelNotFoundError, load_model
from medseg.inference.options import InferenceOptions
from medseg.inference.postprocess import Postprocess, Postprocessd
from medseg.inference.predictor import Predictor, resolve_device
from medseg.inference.segment import Segmentation, segment_file
from medseg.inference.sliding import SlidingWindow, SlidingWindowConfig, make_inferer

__all__ = [
    "InferenceOptions",
    "ModelNotFoundError",
    "Postprocess",
    "Postprocessd",
    "Predictor",
    "Segmentation",
    "SlidingWindow",
    "SlidingWindowConfig",
    "load_model",
    "make_inferer",
    "resolve_device",
    "segment_file",
]
