"""QC picture: radiological orientation, physical proportions, overlay colours, PNG encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.outputs.qc import label_color, render_qc, write_qc_png

SHAPE = (32, 32, 16)
SPACING = (1.0, 1.0, 2.5)


def _ras_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A RAS grid with label 1 in the right-anterior-superior corner and label 2 left-posterior-inferior."""
    image = np.linspace(-100, 100, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    label = np.zeros(SHAPE, dtype=np.int64)
    label[24:30, 24:30, 11:14] = 1  # +x = right, +y = anterior, +z = superior
    label[2:6, 2:6, 2:5] = 2
    affine = np.diag([*SPACING, 1.0])
    return image, label, affine


def _where(rgb: np.ndarray, value: int) -> np.ndarray:
    return np.all(rgb == np.asarray(label_color(value), dtype=np.uint8), axis=-1)


def _quadrants(mask: np.ndarray) -> set[str]:
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return {
        ("top" if r < h / 2 else "bottom") + "-" + ("left" if c < w / 2 else "right")
        for r, c in zip(rows, cols, strict=True)
    }


def test_radiological_orientation_and_proportions() -> None:
    image, label, affine = _ras_volume()
    # slices through label 1 only: put label 2 far from the centroid by rendering label 1 alone first
    qc = render_qc(image, np.where(label == 1, 1, 0), affine=affine, alpha=1.0, panel_px=128)
    assert [p.name for p in qc.panels] == ["axial", "coronal", "sagittal"]
    # extents 32 x 32 x 40 mm -> 40 mm span 128 px: 0.3125 mm per pixel
    sizes = {p.name: (p.height, p.width) for p in qc.panels}
    assert sizes == {"axial": (102, 102), "coronal": (128, 102), "sagittal": (128, 102)}
    for panel in qc.panels:
        crop = qc.rgb[panel.y : panel.y + panel.height, panel.x : panel.x + panel.width]
        # right on the viewer's left (axial, coronal), anterior on the left (sagittal); anterior/superior on top
        assert _quadrants(_where(crop, 1)) == {"top-left"}, panel.name
    assert qc.legend[0][:2] == (1, "label 1")


def test_same_anatomy_in_any_voxel_order_gives_the_same_picture() -> None:
    image, label, affine = _ras_volume()
    reference = render_qc(image, label, affine=affine, labels={1: "liver", 2: "spleen"})
    # store the same physical volume as L-P-S with the axes permuted to (z, x, y)
    flipped_img, flipped_lab = image[::-1, ::-1, :], label[::-1, ::-1, :]
    lps = affine.copy()
    lps[:3, 0], lps[:3, 1] = -affine[:3, 0], -affine[:3, 1]
    lps[:3, 3] = affine[:3, :3] @ np.array([SHAPE[0] - 1, SHAPE[1] - 1, 0])
    order = (2, 0, 1)
    perm_img, perm_lab = np.transpose(flipped_img, order), np.transpose(flipped_lab, order)
    perm = np.eye(4)
    perm[:3, :3] = lps[:3, :3][:, order]
    perm[:3, 3] = lps[:3, 3]
    other = render_qc(perm_img, perm_lab, affine=perm, labels={1: "liver", 2: "spleen"})
    np.testing.assert_array_equal(other.rgb, reference.rgb)
    assert [entry[:2] for entry in other.legend] == [(1, "liver"), (2, "spleen")]


def test_overlay_blend_and_empty_label() -> None:
    image, label, affine = _ras_volume()
    qc = render_qc(np.zeros(SHAPE, np.float32), label, affine=affine, alpha=0.5, window=(-1.0, 1.0))
    axial = qc.panels[0]
    crop = qc.rgb[: axial.height, : axial.width].astype(int)
    grey = 128  # value 0 in the window (-1, 1) -> 127.5
    expected = np.round(0.5 * 127.5 + 0.5 * np.asarray(label_color(1)))
    assert np.any(np.all(crop == expected, axis=-1))
    assert np.all(np.abs(crop[-1, -1] - grey) <= 1)  # the corner has no label: plain grey

    empty = render_qc(image, np.zeros(SHAPE, np.int64), affine=affine)
    assert empty.legend == []
    for value in (1, 2):
        assert not _where(empty.rgb, value).any()


def test_2d_image_gives_one_panel() -> None:
    image = np.ones((20, 10), np.float32)
    label = np.zeros((20, 10), np.int64)
    label[0:4, 0:4] = 3
    qc = render_qc(image[None], label[None], affine=np.diag([0.5, 0.5, 1.0]), alpha=1.0, panel_px=40)
    assert [p.name for p in qc.panels] == ["axial"]
    assert (qc.panels[0].height, qc.panels[0].width) == (20, 40)
    assert _where(qc.rgb, 3).any()


@pytest.mark.parametrize("backend", ["matplotlib", "pil"])
def test_write_qc_png(tmp_path: Path, backend: str) -> None:
    image, label, affine = _ras_volume()
    qc = render_qc(image, label, affine=affine, labels={1: "liver", 2: "spleen"}, alpha=1.0)
    out = write_qc_png(
        image,
        label,
        tmp_path / "qc.png",
        affine=affine,
        labels={1: "liver", 2: "spleen"},
        alpha=1.0,
        backend=backend,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == (qc.rgb.shape[1], qc.rgb.shape[0])
        pixels = np.asarray(png.convert("RGB"))
    panels_h = max(p.height for p in qc.panels)
    np.testing.assert_array_equal(pixels[:panels_h], qc.rgb[:panels_h])  # the panels are encoded exactly
    axial = qc.panels[0]
    assert _where(pixels[: axial.height, : axial.width], 1).any()
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]


def test_qc_argument_errors(tmp_path: Path) -> None:
    image, label, affine = _ras_volume()
    with pytest.raises(ValueError, match="no affine"):
        render_qc(image, label)
    with pytest.raises(ValueError, match=r"image spatial shape \(32, 32, 16\) differs from the label's"):
        render_qc(image, label[:, :, :8], affine=affine)
    with pytest.raises(ValueError, match="alpha must be in"):
        render_qc(image, label, affine=affine, alpha=0)
    with pytest.raises(ValueError, match="window must be two finite numbers"):
        render_qc(image, label, affine=affine, window=(1.0, 1.0))
    with pytest.raises(ValueError, match="unknown QC backend 'svg'; valid: auto, matplotlib, pil"):
        write_qc_png(image, label, tmp_path / "qc.png", affine=affine, backend="svg")
