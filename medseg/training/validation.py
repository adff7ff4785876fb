"""Validation by sliding window over whole preprocessed cases: Dice per label, and slices for QC overlays."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SliceInferer

from medseg.inference.sliding import make_inferer
from medseg.metrics import compute_metrics

logger = logging.getLogger(__name__)


@dataclass
class QCSlice:
    """One 2D slice for a QC picture: first channel of the image, ground truth and prediction."""

    index: int
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray


def make_val_inferer(config: Any) -> Inferer:
    """Sliding window with the training patch as window; slice by slice for a slice-wise 2D model."""
    inf, roi = config.inference, [int(p) for p in config.train.patch_size]
    if config.data.slice_axis is None:
        return make_inferer(roi, overlap=inf.overlap, sw_batch_size=inf.sw_batch_size, mode=inf.mode)
    return SliceInferer(
        spatial_dim=config.data.slice_axis,
        roi_size=roi,
        overlap=inf.overlap,
        sw_batch_size=inf.sw_batch_size,
        mode=inf.mode,
        progress=False,
    )


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


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, Any]],
    inferer: Inferer,
    labels: Mapping[int, str],
    device: torch.device,
    *,
    amp: bool = False,
    qc_cases: int = 0,
    qc_axis: int = 2,
) -> tuple[dict[str, float], list[QCSlice]]:
    """Dice per foreground label, averaged over cases, of the argmax of ``inferer(image, model)``.

    Returns ``({"val/dice/<name>": ..., "val/dice_mean": ...}, qc slices of the first ``qc_cases`` cases)``.
    A label absent from both prediction and ground truth of a case counts as Dice 1 for that case.
    """
    model.eval()
    foreground = [k for k in sorted(labels) if k != 0]
    scores: dict[int, list[float]] = {k: [] for k in foreground}
    qc: list[QCSlice] = []
    n = 0
    for batch in batches:
        image = batch["image"].to(device)
        with autocast(device, amp):
            logits = inferer(image, model)
        pred = torch.as_tensor(logits).float().argmax(dim=1).cpu().numpy()
        truth = torch.as_tensor(batch["label"])[:, 0].cpu().numpy().round().astype(np.int64)
        for b in range(pred.shape[0]):
            result = compute_metrics(pred[b], truth[b], foreground, spacing=1.0, metrics=["dice"])
            for k in foreground:
                scores[k].append(result[k]["dice"])
            if len(qc) < qc_cases:
                img = torch.as_tensor(batch["image"])[b, 0].cpu().numpy()
                qc.append(QCSlice(n, *_qc_slice(img, truth[b], pred[b], qc_axis)))
            n += 1
    if n == 0:
        raise ValueError("validation got no cases")
    metrics = {f"val/dice/{labels[k]}": float(np.mean(v)) for k, v in scores.items()}
    metrics["val/dice_mean"] = float(np.mean([np.mean(v) for v in scores.values()]))
    return metrics, qc
