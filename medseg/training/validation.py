"""Validation with the inference engine: the Dice logged while training is the Dice of what users get.

Each validation case is read from its files as ``medseg segment`` reads a study (the contract's channels, on the
case's own grid) and segmented by a :class:`~medseg.inference.Predictor` built around the network being trained,
with the model's own inference settings (window, crop, postprocessing) and the default options of ``medseg
segment``. Dice per label is then computed against the reference label map on the case's own grid, as ``medseg
evaluate`` computes it. So a checkpoint's ``val/dice_*`` equals ``medseg segment`` + ``medseg evaluate`` on the
validation cases (``tests/test_training_validation.py`` checks it).

A label absent from both the prediction and the reference of a case counts as Dice 1 for that case.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.checkpoint import ModelSpec
from medseg.inference.options import InferenceOptions
from medseg.inference.predictor import Predictor
from medseg.metrics import compute_metrics
from medseg.training.datalist import load_case

logger = logging.getLogger(__name__)

__all__ = ["QCSlice", "Validator", "autocast"]


@dataclass
class QCSlice:
    """One 2D slice for a QC picture: first channel of the image, ground truth and prediction."""

    index: int
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _qc_slice(image: np.ndarray, label: np.ndarray, pred: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """The slice across ``axis`` with the most ground-truth foreground (the middle one if there is none)."""
    if label.ndim == 2:
        return image, label, pred
    counts = (label > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    k = int(np.argmax(counts)) if counts.any() else label.shape[axis] // 2
    return tuple(np.take(a, k, axis=axis) for a in (image, label, pred))


class Validator:
    """Segments the validation cases with the inference engine and scores them.

    Args:
        spec: the model's spec as it will be stored in the checkpoint (its contract drives the engine).
        cases: the validation cases (``.channels``: channel name -> file; ``.label``: the reference file).
        device: where the network being trained lives.
        qc_cases: how many cases give a QC slice.
        qc_axis: the axis the QC slices are taken across.
    """

    def __init__(
        self,
        spec: ModelSpec,
        cases: Sequence[Any],
        device: torch.device,
        *,
        qc_cases: int = 0,
        qc_axis: int = 2,
    ) -> None:
        if not cases:
            raise ValueError("validation needs at least one case")
        self.spec, self.cases, self.device = spec, list(cases), device
        self.qc_cases, self.qc_axis = qc_cases, qc_axis
        self.options = InferenceOptions(device=str(device))

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> tuple[dict[str, float], list[QCSlice]]:
        """``({"val/dice/<name>": ..., "val/dice_mean": ...}, QC slices of the first ``qc_cases`` cases)``.

        The network is left in eval mode, with its weights in the memory layout they had.
        """
        labels = self.spec.labels
        foreground = [k for k in sorted(labels) if k != 0]
        scores: dict[int, list[float]] = {k: [] for k in foreground}
        qc: list[QCSlice] = []
        predictor = Predictor(model, self.spec, self.options)
        try:
            for n, case in enumerate(self.cases):
                image, truth_image = load_case(self.spec.contract.data, case.channels, case.label)
                pred = predictor.predict(image).as_tensor()[0].cpu().numpy()
                truth = truth_image.as_tensor()[0].cpu().numpy().round().astype(np.int64)
                result = compute_metrics(pred, truth, foreground, spacing=1.0, metrics=["dice"])
                for k in foreground:
                    scores[k].append(result[k]["dice"])
                if n < self.qc_cases:
                    first = image.as_tensor()[0].cpu().float().numpy()
                    qc.append(QCSlice(n, *_qc_slice(first, truth, pred, self.qc_axis)))
        finally:
            if predictor.channels_last:  # the engine's layout was for inference; training keeps its own
                model.to(memory_format=torch.contiguous_format)
        metrics = {f"val/dice/{labels[k]}": float(np.mean(v)) for k, v in scores.items()}
        metrics["val/dice_mean"] = float(np.mean([np.mean(v) for v in scores.values()]))
        return metrics, qc
