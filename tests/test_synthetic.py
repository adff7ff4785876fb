"""Synthetic phantoms: determinism, declared labels, realistic values, physical geometry, lesion contrast."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.synthetic.images2d import make_2d_case
from medseg.synthetic.perfusion import CHANNELS, NOISE_SD, TISSUE_VALUES, make_perfusion_case
from medseg.synthetic.phantoms import ORGANS, make_affine, make_ct_phantom

SMALL = (48, 48, 24)
SMALL_SPACING = (3.0, 3.0, 6.0)

# ---------------------------------------------------------------- CT phantom


def test_ct_same_seed_identical_different_seed_differs():
    a = make_ct_phantom(SMALL, SMALL_SPACING, seed=5)
    b = make_ct_phantom(SMALL, SMALL_SPACING, seed=5)
    c = make_ct_phantom(SMALL, SMALL_SPACING, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert not np.allclose(a.image, c.image)


def test_ct_types_affine_and_declared_labels():
    ph = make_ct_phantom(SMALL, SMALL_SPACING, seed=0, n_organs=6)
    assert ph.image.dtype == np.float32 and ph.label.dtype == np.uint8
    assert ph.image.shape == ph.label.shape == SMALL
    # default grid: axial RAS, voxel size = spacing, centre of the field of view at the world origin
    np.testing.assert_allclose(ph.affine[:3, :3], np.diag(SMALL_SPACING))
    np.testing.assert_allclose(
        ph.affine[:3, :3] @ ((np.array(SMALL) - 1) / 2) + ph.affine[:3, 3], 0, atol=1e-9
    )
    assert nib.aff2axcodes(ph.affine) == ("R", "A", "S")
    assert ph.label_names == {i + 1: o.name for i, o in enumerate(ORGANS)}
    assert set(np.unique(ph.label)) == {0, *ph.label_names}


@pytest.mark.parametrize("n_organs", [1, 4])
def test_ct_n_organs(n_organs):
    ph = make_ct_phantom(SMALL, SMALL_SPACING, seed=2, n_organs=n_organs)
    assert sorted(ph.label_names) == list(range(1, n_organs + 1))
    assert set(np.unique(ph.label)) == set(range(n_organs + 1))


def test_ct_hu_values_per_label():
    ph = make_ct_phantom((64, 64, 32), (2.0, 2.0, 4.0), seed=1, n_organs=6, noise_hu=20.0)
    for lab, name in ph.label_names.items():
        core = ndimage.binary_erosion(ph.label == lab)  # away from partial-volume edges
        assert core.sum() >= 20, name
        mean = float(ph.image[core].mean())
        assert abs(mean - ph.hu[lab]) < 20.0, (name, mean, ph.hu[lab])
    # declared organ values are realistic
    names = {name: ph.hu[lab] for lab, name in ph.label_names.items()}
    assert 50 <= names["liver"] <= 70 and 35 <= names["spleen"] <= 55 and 500 <= names["vertebra"] <= 900
    for kidney in ("kidney_left", "kidney_right"):  # plain ~30 HU or contrast-enhanced ~150 HU
        assert min(abs(names[kidney] - 30.0), abs(names[kidney] - 150.0)) <= 5.0
    # air around the body, body soft tissue / fat in -100..40 HU
    assert abs(float(ph.image[0, 0, :].mean()) + 1000.0) < 10.0
    soft = (ph.label == 0) & (ph.image > -500)
    soft_mean = float(np.median(ph.image[soft]))
    assert -110.0 <= soft_mean <= 40.0
    # noise standard deviation in air is about noise_hu
    assert 15.0 < float(ph.image[:4, :4, :].std()) < 25.0


def test_ct_geometry_is_physical_with_anisotropic_spacing():
    """The same field of view sampled with different voxel sizes gives the same organ volumes in mm^3."""
    a = make_ct_phantom((72, 72, 40), (2.0, 2.0, 4.0), seed=3, n_organs=2)
    b = make_ct_phantom((96, 96, 32), (1.5, 1.5, 5.0), seed=3, n_organs=2)
    for lab in (1, 2):
        va = (a.label == lab).sum() * 2.0 * 2.0 * 4.0
        vb = (b.label == lab).sum() * 1.5 * 1.5 * 5.0
        assert abs(va - vb) / va < 0.06, (lab, va, vb)


def test_ct_same_anatomy_in_any_orientation():
    shape, spacing = (40, 36, 20), (3.0, 3.0, 6.0)
    ras = make_ct_phantom(shape, seed=4, affine=make_affine(shape, spacing, "RAS"))
    las = make_ct_phantom(shape, seed=4, affine=make_affine(shape, spacing, "LAS"))
    lpi = make_ct_phantom(shape, seed=4, affine=make_affine(shape, spacing, "LPI"))
    np.testing.assert_array_equal(las.label, ras.label[::-1])
    np.testing.assert_array_equal(lpi.label, ras.label[::-1, ::-1, ::-1])
    pir_shape = (36, 20, 40)
    pir = make_ct_phantom(pir_shape, seed=4, affine=make_affine(pir_shape, (3.0, 6.0, 3.0), "PIR"))
    # PIR voxel (j, k, i) with j = A->P, k = S->I, i = L->R
    np.testing.assert_array_equal(pir.label, np.transpose(ras.label, (1, 2, 0))[::-1, ::-1, :])


def test_ct_validation_errors():
    with pytest.raises(ValueError, match=r"n_organs must be an integer in 1..6"):
        make_ct_phantom(SMALL, SMALL_SPACING, n_organs=7)
    with pytest.raises(ValueError, match="noise_hu must be a finite number >= 0"):
        make_ct_phantom(SMALL, SMALL_SPACING, noise_hu=-1)
    with pytest.raises(ValueError, match="shape must be 3 sizes >= 2"):
        make_ct_phantom((48, 48))
    with pytest.raises(ValueError, match="disagrees with the affine's voxel size"):
        make_ct_phantom(SMALL, (1.0, 1.0, 1.0), affine=make_affine(SMALL, SMALL_SPACING))
    with pytest.raises(ValueError, match="has no voxel on this grid"):
        make_ct_phantom((6, 6, 4), (3.0, 3.0, 6.0), n_organs=6)
    with pytest.raises(ValueError, match="axcodes must name each"):
        make_affine(SMALL, SMALL_SPACING, "RRS")


# ---------------------------------------------------------------- perfusion


def test_perfusion_keys_types_determinism():
    a = make_perfusion_case(seed=3)
    b = make_perfusion_case(seed=3)
    c = make_perfusion_case(seed=4)
    assert list(a.channels) == ["CBF", "MTT", "CBV"] == list(CHANNELS)
    for name in CHANNELS:
        assert a.channels[name].dtype == np.float32 and a.channels[name].shape == (64, 64, 24)
        np.testing.assert_array_equal(a.channels[name], b.channels[name])
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.label.dtype == np.uint8 and set(np.unique(a.label)) == {0, 1}
    assert a.label_names == {1: "infarct_core"}
    assert a.stacked().shape == (3, 64, 64, 24)
    np.testing.assert_allclose(a.affine[:3, :3], np.diag([3.0, 3.0, 5.0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfusion_lesion_contrast_in_every_channel(seed):
    case = make_perfusion_case(seed=seed)
    lesion = case.label == 1
    brain = case.channels["CBF"] > 0
    shell = ndimage.binary_dilation(lesion, iterations=3) & ~lesion & brain
    assert lesion.sum() > 100 and shell.sum() > 100
    for name, sign in (("CBF", -1), ("MTT", +1), ("CBV", -1)):
        ch = case.channels[name]
        diff = float(ch[lesion].mean() - ch[shell].mean())
        assert sign * diff > 3.0 * case.noise_sd[name], (name, diff, case.noise_sd[name])


def test_perfusion_values_are_plausible():
    case = make_perfusion_case(seed=0)
    lesion = ndimage.binary_erosion(case.label == 1)
    for name in CHANNELS:
        core_value = TISSUE_VALUES["core"][name]
        assert abs(float(case.channels[name][lesion].mean()) - core_value) < 0.2 * core_value
        assert float(case.channels[name].min()) >= 0.0
    # outside the brain every map is exactly 0; corners are outside
    for name in CHANNELS:
        assert case.channels[name][0, 0, 0] == 0.0
    # grey matter (high CBF) about 50, white matter about 20 ml/100 g/min
    cbf = case.channels["CBF"][(case.label == 0) & (case.channels["CBF"] > 0)]
    assert 35 < np.percentile(cbf, 90) < 65 and 12 < np.percentile(cbf, 25) < 30
    assert case.noise_sd == NOISE_SD


def test_perfusion_noise_scale_and_errors():
    quiet = make_perfusion_case(seed=0, noise_scale=0.0)
    assert quiet.noise_sd == {"CBF": 0.0, "MTT": 0.0, "CBV": 0.0}
    with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0"):
        make_perfusion_case(noise_scale=-1)


# ---------------------------------------------------------------- 2D


def test_2d_case_determinism_and_labels():
    a = make_2d_case(seed=1, n_classes=3)
    b = make_2d_case(seed=1, n_classes=3)
    c = make_2d_case(seed=2, n_classes=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.image.shape == a.label.shape == (128, 128)
    assert a.image.dtype == np.float32 and a.label.dtype == np.uint8
    assert set(np.unique(a.label)) == {0, 1, 2, 3}
    assert a.label_names == {1: "disc", 2: "ellipse_1", 3: "ellipse_2"}
    assert a.spacing == (1.0, 1.0)


def test_2d_class_intensities_are_separated():
    case = make_2d_case(shape=(96, 80), seed=0, n_classes=2, spacing=(0.5, 0.7))
    assert case.spacing == (0.5, 0.7)
    means = [float(case.image[ndimage.binary_erosion(case.label == k)].mean()) for k in (0, 1, 2)]
    assert abs(means[0] - 0.2) < 0.05
    for k in (1, 2):
        assert abs(means[k] - case.intensities[k]) < 0.05
    assert means[0] + 0.15 < means[1] and means[1] + 0.15 < means[2]


def test_2d_errors():
    with pytest.raises(ValueError, match=r"n_classes \(foreground classes\) must be an integer in 1..6"):
        make_2d_case(n_classes=0)
    with pytest.raises(ValueError, match="shape must be two sizes >= 32"):
        make_2d_case(shape=(16, 16))
    with pytest.raises(ValueError, match="could not place a class-"):
        make_2d_case(shape=(32, 32), n_classes=6, objects_per_class=3)
