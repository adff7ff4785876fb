"""DICOM files without the Part 10 preamble and 'DICM' marker (bare data sets): read exactly like the same series
written as Part 10 files when every required tag validates, refused with a reason naming the file otherwise; junk
(text, JPEG, NIfTI, empty files) is still NOT_DICOM / EMPTY_FILE, never "read" by pydicom's force mode."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from medseg.data.dicom import read_dicom, scan_dicom_tree
from medseg.data.dicom.monai_reader import looks_like_dicom
from medseg.errors import InputError, ReasonCode
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

SHAPE = (10, 12, 6)


def _series(folder: Path, seed: int = 0) -> list[Path]:
    vol = np.random.default_rng(seed).integers(-1000, 2000, size=SHAPE).astype(np.float32)
    affine = affine_for("oblique", (0.7, 0.8, 2.5), SHAPE, origin=(-20.0, 10.5, 33.0))
    return write_dicom_series(vol, affine, folder, seed=seed)


def _bare(path: Path, *, implicit: bool = False, keep_meta: bool = False, drop: tuple[str, ...] = ()) -> None:
    """Rewrite a Part 10 file as a bare data set (no preamble / 'DICM'; file meta kept or not), without ``drop``."""
    ds = pydicom.dcmread(path)
    for keyword in drop:
        delattr(ds, keyword)
    if keep_meta:
        ds.save_as(path, enforce_file_format=True)
        path.write_bytes(path.read_bytes()[132:])
        return
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, Dataset(ds), implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    path.write_bytes(buf.getvalue())


def _refusal(folder: Path) -> InputError:
    with pytest.raises(InputError) as info:
        read_dicom(folder)
    return info.value


@pytest.mark.parametrize(
    ("which", "implicit", "keep_meta"),
    [("all", True, False), ("all", False, False), ("all", False, True), ("one", True, False)],
    ids=["implicit-no-meta", "explicit-no-meta", "meta-kept", "one-slice"],
)
def test_bare_data_sets_read_exactly_like_the_part10_series(
    tmp_path: Path, which: str, implicit: bool, keep_meta: bool
) -> None:
    part10 = _series(tmp_path / "part10")
    bare = _series(tmp_path / "bare")
    for f in bare if which == "all" else bare[2:3]:
        _bare(f, implicit=implicit, keep_meta=keep_meta)
    assert bare[2].read_bytes()[128:132] != b"DICM" and looks_like_dicom(bare[2])

    ref, ref_affine, ref_meta = read_dicom(tmp_path / "part10")
    ours, affine, meta = read_dicom(tmp_path / "bare")

    assert np.array_equal(ours, ref)
    assert np.array_equal(affine, ref_affine)
    assert meta == ref_meta  # same UIDs, spacing, shape, orientation
    slices = scan_dicom_tree(tmp_path / "bare").series[0].slices
    assert [h.part10 for h in slices].count(False) == (len(part10) if which == "all" else 1)
    if implicit:
        assert {h.transfer_syntax for h in slices if not h.part10} == {"1.2.840.10008.1.2"}


def test_a_bare_big_endian_data_set_is_decoded_through_pydicom(tmp_path: Path) -> None:
    src = Path(get_testdata_file("MR_small_bigendian.dcm", download=False))
    raw = src.read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # (0002,0000) group length after the 'DICM' marker
    (tmp_path / "mr").mkdir()
    (tmp_path / "mr" / "slice").write_bytes(raw[meta_end:])

    ours, _, _ = read_dicom(tmp_path / "mr", min_slices=1)

    assert np.array_equal(ours[:, :, 0], pydicom.dcmread(src).pixel_array.T.astype(np.float32))
    assert scan_dicom_tree(tmp_path / "mr").series[0].slices[0].transfer_syntax == "1.2.840.10008.1.2.2"


@pytest.mark.parametrize(
    "drop",
    [
        ("ImageOrientationPatient",),
        ("ImagePositionPatient",),
        ("PixelSpacing",),
        ("BitsStored",),
        ("PixelRepresentation",),
        ("SamplesPerPixel",),
        ("PhotometricInterpretation",),
        ("Modality",),
        ("SOPClassUID",),
    ],
    ids=lambda d: d[0],
)
def test_a_bare_slice_missing_a_required_tag_refuses_its_series_naming_the_file_and_tag(
    tmp_path: Path, drop: tuple[str, ...]
) -> None:
    files = _series(tmp_path / "s")
    _bare(files[0], drop=drop)  # an end slice: no geometry check downstream could notice it missing

    err = _refusal(tmp_path / "s")

    assert err.code == ReasonCode.UNREADABLE and err.path == files[0].name
    assert f"lacks required tag(s) {drop[0]};" in err.detail, err.detail
    assert "without the Part 10 preamble" in err.detail


def test_a_bare_slice_with_an_invalid_value_is_refused_like_a_missing_one(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = ["1", "2"]  # two values instead of three
    ds.save_as(files[3], enforce_file_format=True)
    _bare(files[3])

    err = _refusal(tmp_path / "s")

    assert err.code == ReasonCode.UNREADABLE and err.path == files[3].name
    assert "ImagePositionPatient" in err.detail


def test_a_bare_slice_with_compressed_pixel_data_and_no_transfer_syntax_is_refused(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    ds = pydicom.dcmread(files[1])
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True  # encapsulated: item fragments, no fixed length
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, Dataset(ds), implicit_vr=False, little_endian=True, enforce_file_format=False)
    files[1].write_bytes(buf.getvalue())

    err = _refusal(tmp_path / "s")

    assert err.code == ReasonCode.UNREADABLE and err.path == files[1].name
    assert "encapsulated" in err.detail


def test_pixel_format_checks_apply_to_bare_slices_too(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.BitsStored = 20  # > BitsAllocated 16: the same check as for a Part 10 file
    ds.save_as(files[2], enforce_file_format=True)
    _bare(files[2])

    err = _refusal(tmp_path / "s")

    assert err.code == ReasonCode.INVALID_PIXEL_FORMAT and err.path == files[2].name


def test_junk_is_still_not_dicom_and_does_not_affect_a_series_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    _series(folder)
    (folder / "notes.txt").write_text("no image here\n")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(folder / "volume.nii"))
    (folder / "empty.txt").write_bytes(b"")
    # the first bytes of a data set (group 0008, an implausible length) followed by garbage
    (folder / "lookalike.bin").write_bytes(b"\x08\x00\x05\x00" + b"\xff" * 300)

    scan = scan_dicom_tree(folder)

    codes = {p.path: p.code for p in scan.problems}
    assert codes == {
        "notes.txt": ReasonCode.NOT_DICOM,
        "photo.jpg": ReasonCode.NOT_DICOM,
        "volume.nii": ReasonCode.NOT_DICOM,
        "empty.txt": ReasonCode.EMPTY_FILE,
        "lookalike.bin": ReasonCode.NOT_DICOM,
    }
    assert len(scan.series) == 1 and scan.series[0].ok
    assert not looks_like_dicom(folder / "photo.jpg") and not looks_like_dicom(folder / "volume.nii")
