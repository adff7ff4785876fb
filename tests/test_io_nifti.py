"""NIfTI / NRRD / MHA reading and NIfTI writing: round trips and one test per refusal reason."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.data.io import label_dtype, load_volume, save_image, save_label
from medseg.errors import InputError, ReasonCode


def _affine(kind: str) -> np.ndarray:
    a = np.eye(4)
    if kind == "RAS":
        a[:3, :3] = np.diag([0.8, 0.9, 2.5])
    elif kind == "LAS":
        a[:3, :3] = np.diag([-0.8, 0.9, 2.5])
    elif kind == "oblique":
        t = np.deg2rad(17.0)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
        u = np.deg2rad(9.0)
        rot = rot @ np.array([[1, 0, 0], [0, np.cos(u), -np.sin(u)], [0, np.sin(u), np.cos(u)]])
        a[:3, :3] = rot @ np.diag([0.7, 0.7, 3.0])
    a[:3, 3] = [-41.5, 12.25, -80.0]
    return a


def _write(path, data, affine, **kw) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine, **kw)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return img


@pytest.fixture
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 100, size=(13, 11, 7)).astype(np.float32)


@pytest.mark.parametrize("kind", ["RAS", "LAS", "oblique"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_roundtrip_and_label_geometry(tmp_path, volume, kind, suffix):
    src = tmp_path / f"img{suffix}"
    written = _write(src, volume, _affine(kind))
    img = load_volume(src)
    assert tuple(img.shape) == (1, *volume.shape)
    np.testing.assert_array_equal(img[0].numpy(), volume)
    np.testing.assert_allclose(img.affine.numpy(), written.affine, atol=1e-6)

    label = (img > 50).to(dtype=img.dtype) + (img > 150).to(dtype=img.dtype)
    out = save_label(label, tmp_path / "sub" / "label.nii.gz", reference=img)
    back = nib.load(str(out))
    assert back.shape == volume.shape
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    # exactly the input's affine: same float32 sform, byte for byte
    assert np.array_equal(back.affine, nib.load(str(src)).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), label[0].numpy().astype(np.uint8))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".medseg-tmp")]


def test_save_label_refuses_other_grid(tmp_path, volume):
    src = tmp_path / "img.nii.gz"
    _write(src, volume, _affine("RAS"))
    img = load_volume(src)
    with pytest.raises(ValueError, match="differs from the reference shape"):
        save_label(np.zeros((5, 5, 5), np.uint8), tmp_path / "x.nii.gz", reference=img)
    with pytest.raises(ValueError, match="non-integer"):
        save_label(img * 0.5 + 0.25, tmp_path / "x.nii.gz")


def test_save_label_keeps_existing_file_on_failure(tmp_path, volume):
    target = tmp_path / "label.nii.gz"
    target.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        save_label(np.full((3, 3, 3), 0.5), target, affine=np.eye(4))
    assert target.read_bytes() == b"previous result"


def test_save_image_roundtrip(tmp_path, volume):
    aff = _affine("oblique")
    out = save_image(volume, tmp_path / "im.nii.gz", affine=aff)
    img = load_volume(out)
    np.testing.assert_array_equal(img[0].numpy(), volume)
    np.testing.assert_allclose(img.affine.numpy(), aff, atol=1e-5)


def test_label_dtype():
    assert label_dtype(np.array([0, 3])) == np.uint8
    assert label_dtype(np.array([0, 300])) == np.uint16
    assert label_dtype(np.array([-1, 3])) == np.int16


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sitk_formats_match_nifti_geometry(tmp_path, volume, suffix):
    aff = _affine("oblique")
    nii = tmp_path / "a.nii.gz"
    _write(nii, volume, aff)
    other = tmp_path / f"a{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(other))
    a, b = load_volume(nii), load_volume(other)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------- refusals


def _raises(code: ReasonCode, path, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        load_volume(path, **kw)
    assert info.value.code == code, str(info.value)
    assert os.path.basename(str(path)) in str(info.value)
    return info.value


def test_missing_and_empty_and_unsupported(tmp_path):
    _raises(ReasonCode.FILE_NOT_FOUND, tmp_path / "nope.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    _raises(ReasonCode.EMPTY_FILE, empty)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    err = _raises(ReasonCode.UNSUPPORTED_FORMAT, txt)
    assert "NIfTI" in err.detail


def test_garbage_nifti_is_unreadable(tmp_path):
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"this is not a nifti header" * 20)
    _raises(ReasonCode.UNREADABLE, bad)


@pytest.mark.parametrize("keep", [0.3, 0.7, 0.995])
def test_truncated_nii_gz_is_detected(tmp_path, volume, keep):
    src = tmp_path / "full.nii.gz"
    _write(src, volume, _affine("RAS"))
    raw = src.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    # SimpleITK would zero-fill this silently; medseg must refuse it
    _raises(ReasonCode.TRUNCATED_FILE, cut)


def test_truncated_plain_nii_is_detected(tmp_path, volume):
    src = tmp_path / "full.nii"
    _write(src, volume, _affine("RAS"))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(src.read_bytes()[:-100])
    err = _raises(ReasonCode.TRUNCATED_FILE, cut)
    assert "needs" in err.detail


def test_nan_voxels(tmp_path, volume):
    v = volume.copy()
    v[1, 2, 3] = np.nan
    src = tmp_path / "nan.nii.gz"
    _write(src, v, _affine("RAS"))
    err = _raises(ReasonCode.NAN_VOXELS, src)
    assert "1 of" in err.detail
    assert np.isnan(load_volume(src, allow_nan=True)[0, 1, 2, 3])


def test_qform_sform_disagreement(tmp_path, volume):
    src = tmp_path / "qs.nii.gz"
    img = nib.Nifti1Image(volume, _affine("RAS"))
    img.set_sform(_affine("RAS"), code=1)
    shifted = _affine("RAS")
    shifted[0, 3] += 5.0
    img.set_qform(shifted, code=1)
    nib.save(img, str(src))
    err = _raises(ReasonCode.QFORM_SFORM_MISMATCH, src)
    assert "5" in err.detail


def test_4d_where_3d_expected(tmp_path):
    src = tmp_path / "four.nii.gz"
    _write(src, np.zeros((6, 5, 4, 3), np.float32), np.eye(4))
    err = _raises(ReasonCode.WRONG_DIMENSIONS, src)
    assert "3D volume is expected" in err.detail
    assert load_volume(src, allow_channels=True).shape == (3, 6, 5, 4)


def test_huge_header_refused_before_allocation(tmp_path, volume):
    for suffix in (".nii", ".nii.gz"):
        src = tmp_path / f"small{suffix}"
        _write(src, volume, _affine("RAS"))
        raw = bytearray(gzip.decompress(src.read_bytes()) if suffix == ".nii.gz" else src.read_bytes())
        hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])))
        hdr.set_data_shape((2000, 2000, 2000))
        raw[:348] = hdr.binaryblock
        liar = tmp_path / f"liar{suffix}"
        liar.write_bytes(gzip.compress(bytes(raw)) if suffix == ".nii.gz" else bytes(raw))
        err = _raises(ReasonCode.HEADER_SIZE_MISMATCH, liar)
        assert "2000" in err.detail and "before allocating" in err.detail


def test_readers_work_inside_monai_loadimage(tmp_path, volume):
    """The readers are MONAI ImageReaders: LoadImage(d) gives what load_volume gives."""
    from monai.transforms import LoadImage, LoadImaged

    from medseg.data.nifti import NiftiReader
    from medseg.data.sitk_reader import SimpleITKReader

    nii = tmp_path / "a.nii.gz"
    _write(nii, volume, _affine("oblique"))
    mha = tmp_path / "a.mha"
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(mha))
    ours = load_volume(nii)
    via_monai = LoadImage(reader=NiftiReader(), image_only=True, ensure_channel_first=True)(str(nii))
    via_dict = LoadImaged("img", reader=SimpleITKReader(), image_only=True, ensure_channel_first=True)({"img": str(mha)})
    for other in (via_monai, via_dict["img"]):
        np.testing.assert_array_equal(other.numpy(), ours.numpy())
        np.testing.assert_allclose(other.affine.numpy(), ours.affine.numpy(), atol=1e-4)


def test_2d_images_get_a_2d_affine(tmp_path):
    aff = _affine("LAS")
    for name, data in (("flat.nii.gz", np.ones((7, 5), np.float32)), ("thin.nii.gz", np.ones((7, 5, 1), np.float32))):
        _write(tmp_path / name, data, aff)
        img = load_volume(tmp_path / name, spatial_dims=2)
        assert tuple(img.shape) == (1, 7, 5) and tuple(img.affine.shape) == (3, 3)
        np.testing.assert_allclose(img.affine[:2, :2].numpy(), aff[:2, :2])
        np.testing.assert_allclose(img.affine[:2, 2].numpy(), aff[:2, 3])


def test_atomic_outputs_get_normal_permissions(tmp_path, volume):
    out = save_image(volume, tmp_path / "perm.nii.gz", affine=np.eye(4))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
