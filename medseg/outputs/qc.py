"""QC picture: three orthogonal slices with the label overlaid, as one PNG.

Display convention (radiological, as PACS viewers show CT and MR):

* axial: the patient's right on the viewer's left, anterior at the top;
* coronal: the patient's right on the viewer's left, superior at the top;
* sagittal: anterior on the viewer's left, superior at the top.

The volume is first reoriented to the closest RAS axes (nibabel ``io_orientation``; an oblique series is shown
in its own voxel planes nearest to axial/coronal/sagittal, without resampling). The slices go through the
centroid of the label's foreground (or of a given ``focus`` mask, e.g. the largest object), moved per axis to the
nearest slice holding foreground when the centroid's slice holds none (the volume's centre when the label is
empty). Each panel is resampled by nearest neighbour
to square pixels of one common size, chosen so that the volume's largest physical extent spans ``panel_px``
pixels: anatomy keeps its proportions, every picture has about the same size, label colours stay exact.

Grey values: a given window, else the 0.5th-99.5th percentile range of the image (from at most ~1M voxels).
Overlay: label value ``v`` gets ``label_color(v)`` blended with ``alpha``; the same colours are the
recommended display colours of the DICOM SEG. A legend strip under the panels lists the labels present with
their names.

PNG encoding uses matplotlib when it is installed (text rendered with its fonts), else Pillow. Files are
written atomically.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_write_bytes
from medseg.outputs.report import label_counts
from medseg.plain import as_numpy

logger = logging.getLogger(__name__)

__all__ = ["PALETTE", "Panel", "QCImage", "label_color", "render_qc", "write_qc_png"]

# 18 well separated colours (RGB); label v uses PALETTE[(v - 1) % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (0, 0, 128),
)
_GAP_PX = 4
_LEGEND_ROW_PX = 16
_SWATCH_PX = 10
_LEGEND_COL_PX = 160
_MAX_PERCENTILE_VOXELS = 1_000_000


def label_color(value: int) -> tuple[int, int, int]:
    """The overlay (and SEG display) colour of a label value."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class Panel:
    """Where one view sits in the picture (pixels, origin top-left)."""

    name: str
    x: int
    y: int
    width: int
    height: int


@dataclass
class QCImage:
    """A rendered QC picture: RGB pixels, the panels' placement and the legend entries (value, name, x, y)."""

    rgb: np.ndarray
    panels: list[Panel]
    legend: list[tuple[int, str, int, int]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inputs


def _affine4(affine: Any) -> np.ndarray:
    a = as_numpy(affine).astype(np.float64)
    if a.shape == (4, 4):
        return a
    if a.shape == (3, 3):  # 2D -> 3D with a unit third axis
        out = np.eye(4)
        out[:2, :2], out[:2, 3] = a[:2, :2], a[:2, 2]
        return out
    raise ValueError(f"affine must be 4x4 (3D) or 3x3 (2D), got shape {a.shape}")


def _spatial(image: Any, label: Any, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """First image channel and the label without its channel axis, both 3D (a 2D pair gets a unit third axis)."""
    img, lab = as_numpy(image), as_numpy(label)
    if lab.ndim == ndim + 1 and lab.shape[0] == 1:
        lab = lab[0]
    if img.ndim == ndim + 1:  # channel-first image: show the first channel
        img = img[0]
    if lab.ndim != ndim or img.shape != lab.shape:
        raise ValueError(
            f"image spatial shape {img.shape} differs from the label's {lab.shape} (expected {ndim}D from the affine)"
        )
    if ndim == 2:
        img, lab = img[:, :, None], lab[:, :, None]
    if lab.dtype.kind == "b":
        lab = lab.view(np.uint8)
    elif lab.dtype.kind not in "iu":
        if not np.array_equal(lab, np.round(lab)):
            raise ValueError("label map holds non-integer values")
        lab = lab.astype(np.int64)
    return img.astype(np.float32, copy=False), lab


def _to_ras(
    img: np.ndarray, lab: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing = np.empty(3)
    for axis, (new_axis, _flip) in enumerate(ornt):
        spacing[int(new_axis)] = norms[axis]
    return nio.apply_orientation(img, ornt), nio.apply_orientation(lab, ornt), spacing


def _window(img: np.ndarray) -> tuple[float, float]:
    flat = img.reshape(-1)
    step = max(1, flat.size // _MAX_PERCENTILE_VOXELS)
    finite = flat[::step]
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _resample(panel: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float) -> np.ndarray:
    def index(n: int, mm: float) -> np.ndarray:
        out_n = max(1, int(round(n * mm / pixel_mm)))
        return np.minimum(n - 1, ((np.arange(out_n) + 0.5) * pixel_mm / mm).astype(np.int64))

    return panel[np.ix_(index(panel.shape[0], row_mm), index(panel.shape[1], col_mm))]


def _centre(lab: np.ndarray) -> tuple[int, int, int]:
    """Slice indices through the foreground centroid; per axis, when that slice holds no foreground (e.g. two
    kidneys with the centroid between them), the nearest slice that does. The volume's centre when empty."""
    foreground = lab > 0
    if not foreground.any():
        return tuple(int(v) for v in (np.asarray(lab.shape) - 1) // 2)  # type: ignore[return-value]
    out = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = foreground.sum(axis=others)
        centroid = float(np.dot(np.arange(counts.size), counts) / counts.sum())
        occupied = np.flatnonzero(counts)
        out.append(int(occupied[np.argmin(np.abs(occupied - centroid))]))
    return out[0], out[1], out[2]


def _display(plane: np.ndarray) -> np.ndarray:
    """(first axis, second axis) of an RAS plane -> display rows/columns: both axes reversed and swapped.

    For every view the second RAS axis of the plane becomes the rows from its + end at the top (A or S), and
    the first becomes the columns from its + end on the left (R, or A for sagittal): the radiological
    convention.
    """
    return plane.T[::-1, ::-1]


# ------------------------------------------------------------------------------------------------ rendering


def render_qc(
    image: Any,
    label: Any,
    *,
    affine: Any = None,
    labels: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    panel_px: int = 256,
    window: tuple[float, float] | None = None,
    focus: Any = None,
) -> QCImage:
    """Compose the QC picture in memory (see the module docstring for the conventions).

    Args:
        image: (C, *spatial) or (*spatial) image; the first channel is shown.
        label: (1, *spatial) or (*spatial) integer label map on the image's grid.
        affine: voxel -> RAS affine (default: the label's, else the image's MetaTensor affine).
        labels: label value -> name for the legend (default ``"label <v>"``).
        alpha: overlay opacity in (0, 1].
        panel_px: the size in pixels of the largest extent of the volume (all panels share one scale).
        window: (lowest, highest) image value shown black..white, e.g. (-160, 240) HU for CT soft tissue;
            default: the image's 0.5th-99.5th percentiles.
        focus: a mask on the label's grid (spatial shape, no channel) whose centroid the slices go through
            instead of the whole foreground's (e.g. the largest object); ignored when empty.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if isinstance(panel_px, bool) or not isinstance(panel_px, int) or panel_px < 16:
        raise ValueError(f"panel_px must be an integer >= 16, got {panel_px!r}")
    src = affine if affine is not None else getattr(label, "affine", None)
    src = src if src is not None else getattr(image, "affine", None)
    if src is None:
        raise ValueError("no affine: pass affine= or MetaTensor inputs")
    src_affine = as_numpy(src)
    ndim = 2 if src_affine.shape == (3, 3) else 3
    img, lab = _spatial(image, label, ndim)
    target = None
    if focus is not None:
        target = np.asarray(as_numpy(focus), dtype=bool)
        if target.shape != lab.shape[:ndim]:
            raise ValueError(
                f"focus mask of shape {target.shape} is not on the label's grid {lab.shape[:ndim]}"
            )
        target = target.reshape(lab.shape) if target.any() else None
    img, lab, spacing = _to_ras(img, lab, _affine4(src_affine))
    if target is not None:
        import nibabel.orientations as nio

        target = nio.apply_orientation(target, nio.io_orientation(_affine4(src_affine)))
    cx, cy, cz = _centre(lab if target is None else target)
    if window is None:
        lo, hi = _window(img)
    else:
        lo, hi = (float(v) for v in window)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"window must be two finite numbers (low, high) with high > low, got {window!r}")
    extent = np.asarray(lab.shape) * spacing
    pixel_mm = float(extent.max()) / panel_px

    views = [  # name, image plane, label plane, mm per display row, mm per display column
        ("axial", img[:, :, cz], lab[:, :, cz], spacing[1], spacing[0]),
        ("coronal", img[:, cy, :], lab[:, cy, :], spacing[2], spacing[0]),
        ("sagittal", img[cx, :, :], lab[cx, :, :], spacing[2], spacing[1]),
    ]
    tiles: list[tuple[str, np.ndarray]] = []
    for name, img_plane, lab_plane, row_mm, col_mm in views:
        if min(img_plane.shape) < 2:  # a 2D image has only one real view
            continue
        grey = _resample(_display(img_plane), row_mm, col_mm, pixel_mm)
        over = _resample(_display(lab_plane), row_mm, col_mm, pixel_mm)
        tiles.append((name, _blend(grey, over, lo, hi, alpha)))
    if not tiles:  # a single pixel row/column: show whatever there is
        grey = _display(img[:, :, cz])
        tiles.append(("axial", _blend(grey, _display(lab[:, :, cz]), lo, hi, alpha)))

    present = sorted(v for v in label_counts(lab) if v > 0)
    names = {int(k): str(v) for k, v in (labels or {}).items()}
    panels_h = max(t.shape[0] for _, t in tiles)
    width = sum(t.shape[1] for _, t in tiles) + _GAP_PX * (len(tiles) - 1)
    per_row = max(1, width // _LEGEND_COL_PX)
    legend_rows = -(-len(present) // per_row) if present else 1
    height = panels_h + _GAP_PX + legend_rows * _LEGEND_ROW_PX
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    panels: list[Panel] = []
    x = 0
    for name, tile in tiles:
        rgb[: tile.shape[0], x : x + tile.shape[1]] = tile
        panels.append(Panel(name, x, 0, tile.shape[1], tile.shape[0]))
        x += tile.shape[1] + _GAP_PX
    legend = []
    for n, value in enumerate(present):
        lx = (n % per_row) * _LEGEND_COL_PX + 2
        ly = panels_h + _GAP_PX + (n // per_row) * _LEGEND_ROW_PX + (_LEGEND_ROW_PX - _SWATCH_PX) // 2
        rgb[ly : ly + _SWATCH_PX, lx : lx + _SWATCH_PX] = label_color(value)
        legend.append((value, names.get(value, f"label {value}"), lx + _SWATCH_PX + 4, ly + _SWATCH_PX // 2))
    return QCImage(rgb, panels, legend)


def _blend(grey: np.ndarray, over: np.ndarray, lo: float, hi: float, alpha: float) -> np.ndarray:
    g = np.clip((grey.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out = np.repeat(g[:, :, None], 3, axis=2)
    for value in np.unique(over):
        if value <= 0:
            continue
        mask = over == value
        out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(label_color(int(value)), dtype=np.float64)
    return np.round(out).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ encoding


def _png_matplotlib(qc: QCImage) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = qc.rgb.shape[:2]
    dpi = 100
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    fig.figimage(qc.rgb, xo=0, yo=0, origin="upper", resize=False)
    for _value, name, x, y in qc.legend:
        fig.text(x / w, 1.0 - y / h, name, color="white", fontsize=7, ha="left", va="center")
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _png_pil(qc: QCImage) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(qc.rgb, mode="RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for _value, name, x, y in qc.legend:
        draw.text((x, y), name, fill=(255, 255, 255), font=font, anchor="lm")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _backend(name: str) -> str:
    if name not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"unknown QC backend {name!r}; valid: auto, matplotlib, pil")
    if name != "auto":
        return name
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "pil"
    return "matplotlib"


def write_qc_png(
    image: Any,
    label: Any,
    out_path: str | os.PathLike,
    *,
    affine: Any = None,
    labels: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    panel_px: int = 256,
    window: tuple[float, float] | None = None,
    backend: str = "auto",
    focus: Any = None,
) -> Path:
    """Render (:func:`render_qc`) and write the QC PNG atomically; ``backend`` is auto, matplotlib or pil."""
    qc = render_qc(
        image, label, affine=affine, labels=labels, alpha=alpha, panel_px=panel_px, window=window, focus=focus
    )
    chosen = _backend(backend)
    data = _png_matplotlib(qc) if chosen == "matplotlib" else _png_pil(qc)
    out = atomic_write_bytes(out_path, data)
    logger.debug("wrote QC picture %s (%dx%d, %s)", out.name, qc.rgb.shape[1], qc.rgb.shape[0], chosen)
    return out
