"""The MLflow ``pyfunc`` face of a medseg checkpoint (secondary path: medseg itself loads the checkpoint file).

A registered medseg model is an MLflow model whose only real content is the checkpoint artifact plus the medseg
metadata (channel spec, labels, ...). ``mlflow.pyfunc.load_model(uri).predict(array)`` works when the installed
medseg provides ``medseg.inference.load_checkpoint_predictor(path) -> callable(np.ndarray) -> np.ndarray``; the
import happens lazily so that logging a model never needs the inference code.

This module imports MLflow at import time; only :mod:`medseg.tracking.registry` imports it, lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import mlflow.pyfunc
import numpy as np

from medseg.tracking.errors import TrackingError

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"


def _load_predictor(path: str) -> Callable[[np.ndarray], Any]:
    try:
        from medseg.inference import load_checkpoint_predictor
    except ImportError as exc:
        raise TrackingError(
            "this medseg installation has no medseg.inference.load_checkpoint_predictor, so the MLflow pyfunc "
            "cannot predict; resolve the model with medseg.tracking.resolve_model_uri and run medseg inference "
            f"on the checkpoint instead ({exc})"
        ) from exc
    return load_checkpoint_predictor(path)


class MedsegPyfuncModel(mlflow.pyfunc.PythonModel):
    """Predicts with the checkpoint stored as the ``checkpoint`` artifact of the MLflow model."""

    def __init__(self) -> None:
        self._checkpoint: str | None = None
        self._predictor: Callable[[np.ndarray], Any] | None = None

    def load_context(self, context: Any) -> None:
        self._checkpoint = context.artifacts[CHECKPOINT_ARTIFACT]
        self._predictor = None  # loaded on first predict: the pyfunc path is optional

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        if self._checkpoint is None:
            raise TrackingError("MedsegPyfuncModel.predict called before load_context")
        if self._predictor is None:
            self._predictor = _load_predictor(self._checkpoint)
        return np.asarray(self._predictor(np.asarray(model_input)))
