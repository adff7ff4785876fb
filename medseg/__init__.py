"""medseg: 3D/2D medical image segmentation pipelines built on MONAI."""

from __future__ import annotations

from typing import Any

from medseg._version import __version__

__all__ = ["InferenceOptions", "__version__", "load_model"]


def load_model(uri: Any, options: Any = None, **kwargs: Any) -> Any:
    """Load a trained model as a :class:`medseg.inference.Predictor` (see :func:`medseg.inference.load_model`)."""
    from medseg.inference import load_model as _load_model

    return _load_model(uri, options, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "InferenceOptions":  # imported on first use: ``import medseg`` stays light
        from medseg.inference.options import InferenceOptions

        return InferenceOptions
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
