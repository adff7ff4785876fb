"""Damaged and confusing DICOM input: every case checks the reason code AND the offending file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.data.dicom import load_dicom_series, read_dicom, scan_dicom_tree, select_series
from medseg.errors import InputError, Problem, ReasonCode
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

SHAPE = (10, 12, 8)


def _series(
    folder: Path, seed: int = 0, orientation: str = "axial", **kwargs
) -> tuple[np.ndarray, list[Path]]:
    vol = np.random.default_rng(seed).integers(-500, 500, size=SHAPE).astype(np.float32)
    files = write_dicom_series(
        vol, affine_for(orientation, (0.8, 0.9, 2.0), SHAPE), folder, seed=seed, **kwargs
    )
    return vol, files


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _codes(problems: list[Problem]) -> dict[str, str]:
    return {p.path: p.code.value for p in problems}


def _only_series(root: Path):
    scan = scan_dicom_tree(root)
    assert len(scan.series) == 1, [s.summary() for s in scan.series]
    return scan, scan.series[0]


def _value_offset(path: Path, tag_bytes: bytes) -> int:
    """Byte offset of the value of the (explicit VR, short form) element whose tag bytes are given."""
    data = path.read_bytes()
    at = data.index(tag_bytes, 132)
    return at + 8


def test_non_dicom_files_are_skipped_and_series_loads(tmp_path: Path) -> None:
    vol, _ = _series(tmp_path / "s")
    (tmp_path / "s" / "report.txt").write_text("radiology report\n" * 20)
    (tmp_path / "s" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    (tmp_path / "s" / "notes.txt").write_bytes(b"")  # empty, but named as no slice would be

    scan, series = _only_series(tmp_path)

    assert _codes(scan.problems) == {
        "s/report.txt": "NOT_DICOM",
        "s/image.png": "NOT_DICOM",
        "s/notes.txt": "EMPTY_FILE",
    }
    assert series.problems == [] and series.n_slices == SHAPE[2]
    out, _, _ = load_dicom_series(series)
    assert np.array_equal(out, vol)


def test_an_empty_file_named_like_a_slice_refuses_its_series(tmp_path: Path) -> None:
    """A 0-byte .dcm beside a series is a slice whose transfer left it empty (or has not started): when it is an
    end slice nothing else could tell, so the series is refused rather than read without it."""
    _series(tmp_path / "s")
    (tmp_path / "s" / "IM00099.dcm").write_bytes(b"")

    _scan, series = _only_series(tmp_path)

    assert [(p.code.value, p.path) for p in series.problems] == [("EMPTY_FILE", "s/IM00099.dcm")]


def test_file_cut_inside_its_header_is_reported(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    victim = files[3]
    # cut in the middle of ImagePositionPatient's value: pydicom would silently return a partial dataset
    cut = _value_offset(victim, b"\x20\x00\x32\x00DS") + 5
    victim.write_bytes(victim.read_bytes()[:cut])

    scan, series = _only_series(tmp_path)

    assert _codes(scan.problems) == {"s/IM00004.dcm": "TRUNCATED_HEADER"}
    # the series UID was complete, so the series knows it lost a slice and refuses to load; the gap it leaves
    # is reported too
    assert [(p.code, p.path) for p in series.problems] == [
        (ReasonCode.TRUNCATED_HEADER, "s/IM00004.dcm"),
        (ReasonCode.MISSING_SLICE, "s/IM00005.dcm"),
    ]
    with pytest.raises(InputError) as err:
        read_dicom(tmp_path / "s")
    assert err.value.code == ReasonCode.TRUNCATED_HEADER and err.value.path == "IM00004.dcm"


def test_file_cut_before_its_series_uid_is_reported(tmp_path: Path) -> None:
    vol, files = _series(tmp_path / "s")
    victim = files[0]
    victim.write_bytes(victim.read_bytes()[:400])  # inside the first dataset elements

    scan = scan_dicom_tree(tmp_path)

    assert _codes(scan.problems) == {"s/IM00001.dcm": "TRUNCATED_HEADER"}


@pytest.mark.parametrize("how", ["file_cut", "element_short"])
def test_pixel_data_shorter_than_header_says(tmp_path: Path, how: str) -> None:
    _, files = _series(tmp_path / "s")
    victim = files[5]
    if how == "file_cut":
        victim.write_bytes(victim.read_bytes()[:-50])
    else:

        def shorten(ds: pydicom.Dataset) -> None:
            ds.PixelData = ds.PixelData[: 2 * SHAPE[0] * (SHAPE[1] - 2)]  # two rows missing

        _edit(victim, shorten)

    scan, series = _only_series(tmp_path)

    assert scan.problems == []
    assert [(p.code, p.path) for p in series.problems] == [(ReasonCode.TRUNCATED_PIXEL_DATA, "s/IM00006.dcm")]
    with pytest.raises(InputError) as err:
        load_dicom_series(series)
    assert err.value.code == ReasonCode.TRUNCATED_PIXEL_DATA and err.value.path == "s/IM00006.dcm"


def test_missing_slice_names_files_on_both_sides(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    files[4].unlink()

    _, series = _only_series(tmp_path)

    assert [(p.code, p.path) for p in series.problems] == [(ReasonCode.MISSING_SLICE, "s/IM00006.dcm")]
    assert "s/IM00004.dcm" in series.problems[0].detail and "1 slice(s) missing" in series.problems[0].detail


def test_mixed_orientations_in_one_series_uid_are_split(tmp_path: Path) -> None:
    uid = generate_uid(entropy_srcs=["mixed"])
    _series(tmp_path / "ax", seed=1, series_uid=uid)
    _series(tmp_path / "cor", seed=2, orientation="coronal", series_uid=uid)

    scan = scan_dicom_tree(tmp_path)
    assert sorted(s.stack_id for s in scan.series) == [f"{uid}#axial", f"{uid}#coronal"]
    assert all(s.problems == [] and s.n_slices == SHAPE[2] for s in scan.series)

    unsplit = scan_dicom_tree(tmp_path, split_stacks=False)
    (series,) = unsplit.series
    codes = {(p.code, p.path) for p in series.problems}
    # both stacks are the same size, so the majority orientation is whichever sorts first; one side is flagged
    flagged = {path.split("/")[0] for code, path in codes if code == ReasonCode.MIXED_ORIENTATION}
    assert len(flagged) == 1 and flagged <= {"ax", "cor"}
    assert sum(code == ReasonCode.MIXED_ORIENTATION for code, _ in codes) == SHAPE[2]


def test_two_series_without_rule_are_ambiguous_and_listed(tmp_path: Path) -> None:
    _series(tmp_path / "a", seed=1, series_description="ABDOMEN ARTERIAL", series_number=3)
    _series(tmp_path / "b", seed=2, series_description="ABDOMEN VENOUS", series_number=4)
    scan = scan_dicom_tree(tmp_path)

    with pytest.raises(InputError) as err:
        select_series(scan)

    assert err.value.code == ReasonCode.AMBIGUOUS_SERIES and err.value.path == str(scan.root)
    message = str(err.value)
    for s in scan.series:
        assert s.stack_id[-20:] in message
    # SeriesDescription is free text that can hold identifiers: listed by series number, not description
    assert "ABDOMEN" not in message
    assert "series_number=3" in message and "series_number=4" in message
    assert "n_slices=8" in message and "shape=10x12x8" in message and "series rule" in message
    with pytest.raises(InputError) as err2:
        read_dicom(tmp_path)
    assert err2.value.code == ReasonCode.AMBIGUOUS_SERIES


def _write_sr(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sr"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["sr-series"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["sr-study"])
    ds.save_as(path, enforce_file_format=True)


def _write_dicomdir_like(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["dicomdir"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "SYNTH"
    ds.save_as(path, enforce_file_format=True)


def test_junk_is_ignored_with_reasons(tmp_path: Path) -> None:
    vol, _ = _series(tmp_path / "study" / "ct")
    _write_dicomdir_like(tmp_path / "study" / "DICOMDIR")
    _write_dicomdir_like(tmp_path / "study" / "index.dcm")  # a directory record under another name
    (tmp_path / "study" / "sr").mkdir()
    _write_sr(tmp_path / "study" / "sr" / "report.dcm")
    (tmp_path / "study" / "README.txt").write_text("exported by PACS\n")

    scan, series = _only_series(tmp_path / "study")

    assert _codes(scan.problems) == {
        "DICOMDIR": "NO_PIXEL_DATA",
        "index.dcm": "NO_PIXEL_DATA",
        "sr/report.dcm": "NO_PIXEL_DATA",
        "README.txt": "NOT_DICOM",
    }
    assert "Basic Text SR" in next(p.detail for p in scan.problems if p.path == "sr/report.dcm")
    out, _, _ = load_dicom_series(series)
    assert np.array_equal(out, vol)


def test_gantry_tilt_is_reported(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    for k, f in enumerate(files):  # positions drift along y: a tilted gantry (20 degrees-ish shear)

        def tilt(ds: pydicom.Dataset, k: int = k) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + 0.7 * k, z]

        _edit(f, tilt)

    _, series = _only_series(tmp_path)

    assert [p.code for p in series.problems] == [ReasonCode.GANTRY_TILT]
    assert series.problems[0].path == "s/IM00008.dcm"
    with pytest.raises(InputError) as err:
        load_dicom_series(series)
    assert err.value.code == ReasonCode.GANTRY_TILT


def test_non_orthonormal_orientation_is_reported(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    for f in files:
        _edit(f, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.1, 1, 0]))

    _, series = _only_series(tmp_path)

    assert {p.code for p in series.problems} == {ReasonCode.NON_ORTHONORMAL_ORIENTATION}
    assert sorted(p.path for p in series.problems) == [f"s/IM{k:05d}.dcm" for k in range(1, SHAPE[2] + 1)]


def test_duplicate_positions_are_reported(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    position = pydicom.dcmread(files[2]).ImagePositionPatient
    _edit(files[3], lambda ds: setattr(ds, "ImagePositionPatient", position))

    _, series = _only_series(tmp_path)

    assert [p.code for p in series.problems] == [ReasonCode.DUPLICATE_SLICE]
    assert series.problems[0].path in {"s/IM00003.dcm", "s/IM00004.dcm"}  # equal positions: either order
    other = ({"s/IM00003.dcm", "s/IM00004.dcm"} - {series.problems[0].path}).pop()
    assert other in series.problems[0].detail


def test_nonuniform_spacing_is_reported(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")

    def nudge(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.4]  # 20 % of the 2 mm step, well above the 1 % tolerance

    _edit(files[4], nudge)

    _, series = _only_series(tmp_path)

    assert [(p.code, p.path) for p in series.problems] == [(ReasonCode.NONUNIFORM_SPACING, "s/IM00005.dcm")]


def test_small_position_noise_is_tolerated(tmp_path: Path) -> None:
    vol, files = _series(tmp_path / "s")

    def jitter(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.004]  # DS rounding-sized noise

    _edit(files[4], jitter)
    out, _, _ = read_dicom(tmp_path / "s")
    assert np.array_equal(out, vol)


def test_missing_geometry_is_reported(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    _edit(files[2], lambda ds: delattr(ds, "ImagePositionPatient"))

    _, series = _only_series(tmp_path)

    assert [(p.code, p.path) for p in series.problems] == [(ReasonCode.MISSING_GEOMETRY, "s/IM00003.dcm")]
    assert "ImagePositionPatient" in series.problems[0].detail


def test_inconsistent_shape_and_spacing_without_split(tmp_path: Path) -> None:
    _, files = _series(tmp_path / "s")
    _edit(files[1], lambda ds: setattr(ds, "PixelSpacing", [0.95, 0.8]))

    _, series = _only_series(tmp_path)
    assert [(p.code, p.path) for p in series.problems] == [(ReasonCode.INCONSISTENT_SPACING, "s/IM00002.dcm")]

    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    small = np.zeros((6, 12, 2), dtype=np.float32)
    write_dicom_series(
        small, affine_for("axial", (0.8, 0.9, 2.0), small.shape), tmp_path / "t", series_uid=uid
    )
    split = scan_dicom_tree(tmp_path)
    assert sorted(s.stack_id for s in split.series) == [f"{uid}#10x12", f"{uid}#6x12"]
    (unsplit,) = scan_dicom_tree(tmp_path, split_stacks=False).series
    shape_paths = sorted(p.path for p in unsplit.problems if p.code == ReasonCode.INCONSISTENT_SHAPE)
    assert shape_paths == ["t/IM00001.dcm", "t/IM00002.dcm"]


def test_echoes_and_temporal_positions_become_separate_stacks(tmp_path: Path) -> None:
    uid = generate_uid(entropy_srcs=["multi-echo"])
    vol1, _ = _series(tmp_path / "e1", seed=1, modality="MR", series_uid=uid, extra_tags={"EchoNumbers": 1})
    vol2, _ = _series(tmp_path / "e2", seed=2, modality="MR", series_uid=uid, extra_tags={"EchoNumbers": 2})
    scan = scan_dicom_tree(tmp_path)
    assert [s.stack_id for s in scan.series] == [f"{uid}#echo1", f"{uid}#echo2"]
    assert np.array_equal(load_dicom_series(scan.series[0])[0], vol1)
    assert np.array_equal(load_dicom_series(scan.series[1])[0], vol2)

    uid_t = generate_uid(entropy_srcs=["dynamic"])
    for t in (1, 2, 3):
        tags = {"TemporalPositionIdentifier": t}
        _series(tmp_path / f"t{t}", seed=10 + t, series_uid=uid_t, study_uid=uid, extra_tags=tags)
    dynamic = [s for s in scan_dicom_tree(tmp_path).series if s.series_uid == uid_t]
    assert [s.stack_id for s in dynamic] == [f"{uid_t}#t1", f"{uid_t}#t2", f"{uid_t}#t3"]
    assert all(s.problems == [] for s in dynamic)


def test_same_positions_without_distinguishing_tag_are_duplicates(tmp_path: Path) -> None:
    uid = generate_uid(entropy_srcs=["dup-stack"])
    _series(tmp_path / "a", seed=1, series_uid=uid)
    _series(tmp_path / "b", seed=2, series_uid=uid)

    (series,) = scan_dicom_tree(tmp_path).series

    assert {p.code for p in series.problems} == {ReasonCode.DUPLICATE_SLICE}
    assert len(series.problems) == SHAPE[2]


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_dicom(tmp_path / "nope")
    assert err.value.code == ReasonCode.FILE_NOT_FOUND
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(InputError) as err:
        read_dicom(tmp_path / "empty")
    assert err.value.code == ReasonCode.NO_SERIES and "a.txt" in str(err.value)


def test_a_slice_without_series_uid_refuses_its_folder_and_never_crashes_a_batch(tmp_path: Path) -> None:
    """Found by the batch fuzz: an empty SeriesInstanceUID made discovery raise and the whole run die."""
    import pydicom

    _, files = _series(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = ""
    ds.save_as(files[0])

    scan, series = _only_series(tmp_path)

    assert _codes(scan.problems) == {"s/IM00001.dcm": "UNREADABLE"}
    assert [(p.code.value, p.path) for p in series.problems][:1] == [("UNREADABLE", "s/IM00001.dcm")]
