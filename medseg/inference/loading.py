"""``load_model(URI)``: a checkpoint path or an MLflow model URI -> a ready :class:`Predictor`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medseg.errors import MedsegError
from medseg.inference.options import InferenceOptions
from medseg.inference.predictor import Predictor

logger = logging.getLogger(__name__)

URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, or a checkpoint file path"


class ModelNotFoundError(MedsegError):
    """A model URI does not name a model that exists."""


def load_model(
    uri: str | os.PathLike,
    options: InferenceOptions | None = None,
    *,
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Predictor:
    """Load a trained model for segmentation.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model`` or a checkpoint path.
        options: how to run it (device, TTA, window, crop, postprocessing); default: the model's own settings on
            CUDA when present, else the CPU.
        tracking_uri: the MLflow tracking URI for ``models:/`` and ``runs:/`` URIs (default: MLflow's own).
        cache_dir: where MLflow artifacts are downloaded (a temp folder when None).

    Raises:
        ModelNotFoundError: the URI is of no known form or names nothing.
        medseg.checkpoint.CheckpointError: the file is not a readable medseg checkpoint.
    """
    text = str(uri)
    if text.startswith(("models:/", "runs:/")):
        from medseg.tracking import resolve_model_uri

        resolved = resolve_model_uri(text, tracking_uri=tracking_uri, cache_dir=cache_dir)
        path = Path(resolved.checkpoint_path)
        name, version = resolved.name, resolved.version
        logger.info("model %s resolved to version %s (%s)", text, version, path.name)
    else:
        path = Path(text)
        name = version = None
        if not path.is_file():
            raise ModelNotFoundError(f"{text}: no such checkpoint file; a model URI is one of {URI_FORMS}")
    predictor = Predictor.from_checkpoint(path, options)
    predictor.source_uri = text
    predictor.checkpoint_path = path
    predictor.model_name = name  # registered name and the version an alias pointed to (None for files)
    predictor.model_version = version
    return predictor
