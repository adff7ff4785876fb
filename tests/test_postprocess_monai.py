"""medseg's postprocessing against MONAI's: where they agree, and the differences that keep medseg's own code.

MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` need scikit-image, which medseg does not
install; the comparisons skip without it (``pip install scikit-image`` to run them). The tests of medseg's side of each
difference run always. See the module docstring of :mod:`medseg.inference.components` and benchmarks/postprocess.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.inference.components import largest_component, remove_small


def _random_map(rng: np.random.Generator, ndim: int, labels: int) -> np.ndarray:
    shape = tuple(int(n) for n in rng.integers(5, 13, ndim))
    foreground = rng.random(shape) < rng.uniform(0.15, 0.45)
    return np.where(foreground, rng.integers(1, labels + 1, shape), 0).astype(np.uint8)


def _largest_is_unique(label: np.ndarray, connectivity: int | None) -> bool:
    structure = ndimage.generate_binary_structure(label.ndim, connectivity or label.ndim)
    for value in np.unique(label[label > 0]):
        components, _ = ndimage.label(label == value, structure=structure)
        sizes = np.bincount(components.ravel())[1:]
        if np.count_nonzero(sizes == sizes.max()) > 1:
            return False
    return True


def _monai():
    pytest.importorskip("skimage", reason="MONAI's postprocessing transforms need scikit-image")
    from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

    return KeepLargestConnectedComponent, RemoveSmallObjects


def _monai_remove(label: np.ndarray, min_mm3: float, spacing, connectivity: int) -> np.ndarray:
    """MONAI's RemoveSmallObjects(by_measure=True) on one label's binary mask at a time, as a wrapper would."""
    _, remove_small_objects = _monai()
    remove = remove_small_objects(min_mm3, connectivity, by_measure=True, pixdim=spacing)
    out = label.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image >= 0.26 deprecates the min_size MONAI passes
        for value in np.unique(label[label > 0]):
            mask = label == value
            out[mask & ~np.asarray(remove(mask[None]))[0]] = 0
    return out


# ------------------------------------------------------------------------------------------ largest component


@pytest.mark.parametrize("ndim", [2, 3])
def test_largest_component_agrees_with_monai_without_ties(ndim: int) -> None:
    keep_largest, _ = _monai()
    rng = np.random.default_rng(ndim)
    compared = 0
    for _ in range(40):
        label = _random_map(rng, ndim, labels=3)
        for connectivity in (None, *range(1, ndim + 1)):
            if not _largest_is_unique(label, connectivity):
                continue
            ref = keep_largest(connectivity=connectivity)(torch.from_numpy(label[None].copy()))[0].numpy()
            np.testing.assert_array_equal(largest_component(label, connectivity=connectivity), ref)
            compared += 1
    assert compared > 20


def test_largest_component_tie_differs_from_monai() -> None:
    """Two components of the same size: medseg keeps the first in raster order, MONAI another one."""
    keep_largest, _ = _monai()
    label = np.zeros((7,), dtype=np.uint8)
    label[[0, 1, 4, 5]] = 1
    ours = largest_component(label)
    ref = keep_largest()(torch.from_numpy(label[None].copy()))[0].numpy()
    assert ours.tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert ref.tolist() != ours.tolist()


def test_largest_component_tie_rule_is_first_in_raster_order_in_3d() -> None:
    label = np.zeros((4, 4, 4), dtype=np.uint8)
    label[3, 3, 2:4] = 2  # later in raster order
    label[0, 0, 0:2] = 2
    out = largest_component(label)
    assert out[0, 0, 0] == out[0, 0, 1] == 2 and not out[3].any()


# ------------------------------------------------------------------------------------------ small objects


def _skimage_before_0_26() -> bool:
    import skimage

    return tuple(int(p) for p in skimage.__version__.split(".")[:2]) < (0, 26)


@pytest.mark.parametrize("ndim", [2, 3])
def test_remove_small_agrees_with_monai_per_label_away_from_the_threshold(ndim: int) -> None:
    """Thresholds half a voxel off an integer count: no rounding question, the decisions agree (scikit-image < 0.26)."""
    _monai()
    if not _skimage_before_0_26():
        pytest.skip(
            "scikit-image >= 0.26 makes MONAI remove one voxel more (test_monai_remove_small_objects_off_by_one_with_scikit_image_0_26)"
        )
    rng = np.random.default_rng(10 + ndim)
    spacing = (0.8, 0.8, 2.5)[-ndim:]
    voxel = math.prod(spacing)
    for _ in range(30):
        label = _random_map(rng, ndim, labels=3)
        for connectivity in range(1, ndim + 1):
            threshold = (int(rng.integers(1, 6)) + 0.5) * voxel
            ours = remove_small(label, threshold, spacing, connectivity=connectivity)
            np.testing.assert_array_equal(ours, _monai_remove(label, threshold, spacing, connectivity))


def test_monai_remove_small_objects_off_by_one_with_scikit_image_0_26() -> None:
    """scikit-image 0.26 turned the ``min_size`` MONAI passes into an inclusive ``max_size``: MONAI then removes
    objects of ``ceil(threshold / voxel)`` voxels too, here a 3 mm^3 object under a 2.5 mm^3 threshold."""
    _monai()
    label = np.zeros((9,), dtype=np.uint8)
    label[0:3] = 1  # 3 voxels of 1 mm^3
    label[5:7] = 1  # 2 voxels
    assert remove_small(label, 2.5, 1.0).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    monai_kept = _monai_remove(label, 2.5, (1.0,), 1)
    if _skimage_before_0_26():
        assert monai_kept.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    else:
        assert monai_kept.tolist() == [0] * 9


def test_monai_remove_small_objects_treats_one_label_value_as_one_object() -> None:
    """On a multi-label map MONAI measures all voxels of a label value together, not each connected object."""
    _, remove_small_objects = _monai()
    label = np.array([2, 2, 0, 0, 0, 2, 2, 0, 1, 1, 1, 1], dtype=np.uint8)
    ours = remove_small(label, 3.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(remove_small_objects(3, 1, by_measure=True, pixdim=1.0)(label[None].copy()))[0]
    assert ours.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]  # both 2-voxel objects of label 2 go
    assert ref[:7].tolist() == [2, 2, 0, 0, 0, 2, 2]  # MONAI sees one label-2 object of 4 voxels


def test_monai_remove_small_objects_rounds_the_voxel_count_up() -> None:
    """0.7 mm isotropic voxels, threshold 3 voxels = 1.029 mm^3: MONAI's ceil(1.029 / 0.7**3) is 4 voxels."""
    _monai()
    spacing = (0.7, 0.7, 0.7)
    label = np.zeros((3, 3, 8), dtype=np.uint8)
    label[1, 1, 0:3] = 1  # 3 voxels: exactly 1.029 mm^3
    assert math.ceil(1.029 / math.prod(spacing)) == 4
    assert remove_small(label, 1.029, spacing).sum() == 3  # kept: the threshold is inclusive
    assert _monai_remove(label, 1.029, spacing, 3).sum() == 0


def test_remove_small_judges_each_object_of_a_label() -> None:
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[0, 0, 0:2] = 2
    label[5, 5, 4:6] = 2
    label[2:4, 2:4, 2:4] = 2
    out = remove_small(label, 3.0, 1.0)
    assert out.sum() == 2 * 8 and not out[0].any() and not out[5].any()
