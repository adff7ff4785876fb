"""PNG pictures for humans and trackers: the learning curve and QC overlays of validation slices.

Matplotlib is used through its object API (no pyplot, no global backend change); without matplotlib the QC
overlay falls back to PIL and the learning curve is skipped. Files are written atomically. Titles never hold case
identifiers, only the validation case's position.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

_COLORS = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
    ],
    dtype=np.float64,
)


def _figure(width: float, height: float):  # noqa: ANN202 - matplotlib is optional
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def learning_curve(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path | None:
    """Training loss and validation Dice per epoch (None without matplotlib or history)."""
    fig = _figure(7, 4)
    if fig is None or not history:
        return None
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h.get("train/loss", np.nan) for h in history], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    val = [(h["epoch"], h["val/dice_mean"]) for h in history if "val/dice_mean" in h]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val, strict=True), "o-", color="tab:red", label="val Dice (mean)")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0.0, 1.0)
        fig.legend(loc="lower center", ncol=2, fontsize="small")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, Path(path))


def _overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    lo, hi = np.percentile(gray, [1, 99]) if gray.size else (0.0, 1.0)
    g = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None] * 255.0, 3, axis=-1)
    colors = _COLORS[np.clip(mask, 0, len(_COLORS) - 1).astype(int)]
    on = mask[..., None] > 0
    return np.where(on, (1 - alpha) * rgb + alpha * colors, rgb).astype(np.uint8)


def qc_overlay(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, path: str | os.PathLike, title: str = ""
) -> Path:
    """Image | ground truth overlay | prediction overlay, side by side, for one 2D slice (axes shown i down, j across)."""
    panels = [_overlay(image, np.zeros_like(label)), _overlay(image, label), _overlay(image, pred)]
    fig = _figure(9, 3.4)
    if fig is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.concatenate(panels, axis=1)).save(buf, format="PNG")
        return atomic_write_bytes(Path(path), buf.getvalue())
    for i, (panel, name) in enumerate(zip(panels, ("image", "ground truth", "prediction"), strict=True)):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(name, fontsize="small")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    return _save(fig, Path(path))
