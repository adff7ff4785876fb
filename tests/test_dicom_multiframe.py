"""Enhanced multi-frame DICOM: read like the classic series it was converted from, refuse what is unsafe, segment.

Test data: synthetic single-frame series (medseg.synthetic) converted with ``dcmulti`` (dicom3tools: Enhanced CT /
Enhanced MR, frames in the order of its file arguments, i.e. not the spatial order) and with highdicom's Legacy
Converted Enhanced classes. dcmulti writes decimal strings with 6 significant digits, so the synthetic geometry stays
within 100 mm of the origin (positions exact to 5e-5 mm) for the 1e-4 mm affine comparisons.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RLELossless, generate_uid
from test_batch_support import NAME_KEY, THRESHOLD_HU, threshold_predictor

from medseg.batch import segment_archive
from medseg.batch.naming import keyed_name
from medseg.cli import main
from medseg.data.dicom import SeriesRule, load_dicom_series, read_dicom, scan_dicom_tree
from medseg.data.io import load_volume
from medseg.errors import InputError, ReasonCode
from medseg.outputs.dicom_seg import write_dicom_seg
from medseg.outputs.dicom_seg_geometry import source_affine
from medseg.synthetic.dataset import write_ct_study
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

SHAPE = (12, 14, 8)
ORIGIN = (-21.0, 14.5, 30.25)
AFFINE_TOL_MM = 1e-4
CASES = [
    ("axial", False, (0.7, 0.8, 2.5)),
    ("coronal", False, (0.9, 0.6, 1.5)),
    ("sagittal", False, (0.5, 0.75, 2.0)),
    ("oblique", False, (0.8, 0.6, 1.25)),
    ("axial", True, (0.7, 0.8, 2.5)),
]


def _tool(name: str) -> str:
    binary = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} is required for these tests (installed by the test extra)")
    return binary


def _volume(seed: int, low: int = -1024, high: int = 3000) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=SHAPE).astype(np.float32)


def _classic(
    folder: Path,
    orientation: str = "axial",
    reverse: bool = False,
    spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """A classic series with shuffled (random) file names; returns (volume, affine, files in k order)."""
    vol = kwargs.pop("volume", None)
    vol = _volume(kwargs.get("seed", 0)) if vol is None else vol
    affine = affine_for(orientation, spacing, SHAPE, origin=ORIGIN)  # type: ignore[arg-type]
    files = write_dicom_series(vol, affine, folder, file_names="random", reverse_order=reverse, **kwargs)
    return vol, affine, files


def _dcmulti(files: list[Path], out: Path) -> Path:
    """One enhanced multi-frame file from single-frame ``files`` (frames in the order of the sorted names)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [str(f) for f in sorted(files)]
    result = subprocess.run(
        [_tool("dcmulti"), "-of", str(out), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and out.stat().st_size > 0, result.stderr[-2000:]
    return out


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _add_dimension_index(ds: Dataset) -> None:
    """StackID / InStackPositionNumber dimensions (spatial rank), as scanners write them; dcm2niix needs them."""
    iop = np.asarray(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    normal = np.cross(iop[:3].astype(float), iop[3:].astype(float))
    along = [
        float(np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, dtype=float) @ normal)
        for g in ds.PerFrameFunctionalGroupsSequence
    ]
    for group, rank in zip(ds.PerFrameFunctionalGroupsSequence, np.argsort(np.argsort(along)), strict=True):
        content = group.FrameContentSequence[0]
        content.StackID, content.InStackPositionNumber = "1", int(rank) + 1
        content.DimensionIndexValues = [1, int(rank) + 1]
    organization = generate_uid()
    item = Dataset()
    item.DimensionOrganizationUID = organization
    ds.DimensionOrganizationSequence = DicomSequence([item])
    pointers = []
    for pointer in (0x00209056, 0x00209057):  # StackID, InStackPositionNumber in FrameContentSequence
        item = Dataset()
        item.DimensionOrganizationUID = organization
        item.DimensionIndexPointer, item.FunctionalGroupPointer = pointer, 0x00209111
        pointers.append(item)
    ds.DimensionIndexSequence = DicomSequence(pointers)


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ornt = io_orientation(affine)
    return apply_orientation(array, ornt), affine @ inv_ornt_aff(ornt, array.shape)


def _code(fn) -> InputError:
    with pytest.raises(InputError) as info:
        fn()
    return info.value


# ------------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize(
    ("orientation", "reverse", "spacing"),
    CASES,
    ids=[f"{o}{'-reversed' if r else ''}" for o, r, _ in CASES],
)
def test_enhanced_ct_reads_like_its_classic_series_and_dcm2niix(
    tmp_path: Path, orientation: str, reverse: bool, spacing: tuple[float, float, float]
) -> None:
    # a neutral Manufacturer: dcm2niix takes "medseg synthetic" for Mediso and applies that vendor's frame kludge
    vol, affine, files = _classic(
        tmp_path / "classic", orientation, reverse, spacing, extra_tags={"Manufacturer": "SYNTHETIC"}
    )
    mf = _dcmulti(files, tmp_path / "mf" / "image.dcm")
    _edit(mf, _add_dimension_index)  # frames stay in file-name order, i.e. not in spatial order
    assert pydicom.dcmread(mf, stop_before_pixels=True).SOPClassUID.name == "Enhanced CT Image Storage"

    classic, classic_affine, _ = read_dicom(tmp_path / "classic")
    ours, our_affine, meta = read_dicom(tmp_path / "mf")

    assert np.array_equal(classic, vol)  # precondition: the classic reader is exact
    assert ours.shape == SHAPE
    assert float(np.max(np.abs(ours - classic))) == 0.0  # same voxels after the rescale (intercept -1024)
    assert float(np.max(np.abs(our_affine - classic_affine))) <= AFFINE_TOL_MM
    assert float(np.max(np.abs(our_affine - affine))) <= AFFINE_TOL_MM
    series = scan_dicom_tree(tmp_path / "mf").series[0]
    frames = [h.frame for h in series.slices]
    assert series.multiframe and series.source_files == [mf.absolute()]
    assert sorted(frames) == list(range(SHAPE[2])) and frames != list(range(SHAPE[2]))  # sorting was needed
    assert meta["sop_instance_uids"] == [str(pydicom.dcmread(mf, stop_before_pixels=True).SOPInstanceUID)] * 8

    result = subprocess.run(
        [_tool("dcm2niix"), "-z", "y", "-f", "ref", "-o", str(tmp_path), str(tmp_path / "mf")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ref = nib.load(tmp_path / "ref.nii.gz")
    ref_array, ref_affine = _canonical(ref.get_fdata(dtype=np.float32), ref.affine)
    our_array, our_affine_c = _canonical(np.asarray(ours), our_affine)
    assert np.array_equal(our_array, ref_array)
    assert float(np.max(np.abs(our_affine_c - ref_affine))) <= AFFINE_TOL_MM


def test_legacy_converted_enhanced_pet_applies_its_rescale(tmp_path: Path) -> None:
    vol = _volume(3, 0, 20000) * 0.5 + 10.0  # stored = (value - 10) / 0.5 fits int16
    _, affine, files = _classic(
        tmp_path / "classic", "oblique", modality="PT", rescale_slope=0.5, rescale_intercept=10.0, volume=vol
    )
    legacy = hd.legacy.LegacyConvertedEnhancedPETImage(
        [pydicom.dcmread(f) for f in files],
        series_instance_uid=generate_uid(),
        series_number=7,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    (tmp_path / "mf").mkdir()
    legacy.save_as(tmp_path / "mf" / "pet.dcm", enforce_file_format=True)

    ours, our_affine, meta = read_dicom(tmp_path / "mf")
    classic, classic_affine, _ = read_dicom(tmp_path / "classic")

    assert meta["modality"] == "PT"
    assert np.array_equal(classic, vol) and np.array_equal(ours, classic)
    assert not np.all(ours == np.round(ours))  # the slope really was applied
    assert float(np.max(np.abs(our_affine - classic_affine))) <= AFFINE_TOL_MM
    assert float(np.max(np.abs(our_affine - affine))) <= AFFINE_TOL_MM


def test_enhanced_mr_without_and_with_per_frame_pixel_value_transformation(tmp_path: Path) -> None:
    vol, _, files = _classic(tmp_path / "classic", "sagittal", modality="MR", volume=_volume(4, 0, 3000))
    mf = _dcmulti(files, tmp_path / "mf" / "image.dcm")

    def drop_shared_transformation(ds: Dataset) -> None:
        assert ds.SOPClassUID.name == "Enhanced MR Image Storage"
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence

    _edit(mf, drop_shared_transformation)  # MR often has none: slope 1, intercept 0
    ours, _, _ = read_dicom(tmp_path / "mf")
    assert np.array_equal(ours, vol)

    series = scan_dicom_tree(tmp_path / "mf").series[0]
    k = 5
    frame = series.slices[k].frame

    def per_frame_rescale(ds: Dataset) -> None:  # one frame gets its own transformation (per-frame wins)
        item = Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = "2", "-5", "US"
        ds.PerFrameFunctionalGroupsSequence[frame].PixelValueTransformationSequence = DicomSequence([item])

    _edit(mf, per_frame_rescale)
    ours, _, _ = read_dicom(tmp_path / "mf")
    expected = vol.copy()
    expected[:, :, k] = vol[:, :, k] * 2 - 5
    assert np.array_equal(ours, expected)


def test_rle_compressed_multiframe_is_decoded_once_per_file(tmp_path: Path) -> None:
    vol, affine, files = _classic(tmp_path / "classic", "coronal", reverse=True)
    mf = _dcmulti(files, tmp_path / "mf" / "image.dcm")

    def compress(ds: Dataset) -> None:
        ds.compress(RLELossless)

    _edit(mf, compress)
    assert pydicom.dcmread(mf, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    ours, our_affine, _ = read_dicom(tmp_path / "mf")
    assert np.array_equal(ours, vol)
    assert float(np.max(np.abs(our_affine - affine))) <= AFFINE_TOL_MM


# ------------------------------------------------------------------------------------------------ refusals
def test_truncated_multiframe_pixel_data_is_refused_once(tmp_path: Path) -> None:
    _, _, files = _classic(tmp_path / "classic")
    mf = _dcmulti(files, tmp_path / "mf" / "image.dcm")
    mf.write_bytes(mf.read_bytes()[:-300])  # cut inside the last frame

    series = scan_dicom_tree(tmp_path / "mf").series[0]
    truncated = [p for p in series.problems if p.code == ReasonCode.TRUNCATED_PIXEL_DATA]
    assert len(truncated) == 1 and truncated[0].path == "image.dcm"  # one problem for the file, not per frame
    err = _code(lambda: read_dicom(tmp_path / "mf"))
    assert err.code == ReasonCode.TRUNCATED_PIXEL_DATA and err.path == "image.dcm"
    assert "x 8 frames" in err.detail and "cut short" in err.detail


def test_missing_frame_is_refused_like_a_missing_slice(tmp_path: Path) -> None:
    _, _, files = _classic(tmp_path / "classic")
    files[3].unlink()  # spatial slice k = 3
    kept = [f for f in files if f.exists()]
    _dcmulti(kept, tmp_path / "mf" / "image.dcm")

    classic_err = _code(lambda: read_dicom(tmp_path / "classic"))
    err = _code(lambda: read_dicom(tmp_path / "mf"))

    assert classic_err.code == err.code == ReasonCode.MISSING_SLICE
    assert err.path == "image.dcm"
    assert "image.dcm frame" in err.detail and "about 1 slice(s) missing" in err.detail


def _rotated_iop(iop, degrees: float) -> list[str]:
    f_r, f_c = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    t = np.radians(degrees)  # rotation about the normal: same plane, different in-plane axes
    r, c = np.cos(t) * f_r + np.sin(t) * f_c, -np.sin(t) * f_r + np.cos(t) * f_c
    return [f"{v:.6f}" for v in (*r, *c)]


def test_mixed_orientation_frames_are_split_or_refused_as_in_a_classic_series(tmp_path: Path) -> None:
    _, _, files = _classic(tmp_path / "classic", "oblique", spacing=(0.8, 0.6, 1.25))
    mf = _dcmulti(files, tmp_path / "mf" / "image.dcm")
    k = 4
    frame = scan_dicom_tree(tmp_path / "mf").series[0].slices[k].frame

    def rotate_one_frame(ds: Dataset) -> None:
        iop = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        item = Dataset()
        item.ImageOrientationPatient = _rotated_iop(iop, 5.0)
        ds.PerFrameFunctionalGroupsSequence[frame].PlaneOrientationSequence = DicomSequence([item])

    _edit(mf, rotate_one_frame)
    _edit(
        files[k],
        lambda ds: setattr(ds, "ImageOrientationPatient", _rotated_iop(ds.ImageOrientationPatient, 5.0)),
    )

    for folder in ("classic", "mf"):  # the same outcome for both layouts
        unsplit = scan_dicom_tree(tmp_path / folder, split_stacks=False).series
        assert len(unsplit) == 1
        assert ReasonCode.MIXED_ORIENTATION in {p.code for p in unsplit[0].problems}
        split = scan_dicom_tree(tmp_path / folder).series
        assert sorted(s.n_slices for s in split) == [1, 7]
        main_stack = max(split, key=lambda s: s.n_slices)
        # the split-off frame is named as the cause, and the gap it leaves is reported too
        assert [p.code for p in main_stack.problems][:2] == [ReasonCode.STRAY_SLICE, ReasonCode.MISSING_SLICE]
    mixed = next(
        p
        for p in scan_dicom_tree(tmp_path / "mf", split_stacks=False).series[0].problems
        if p.code == ReasonCode.MIXED_ORIENTATION
    )
    assert mixed.path == "image.dcm" and mixed.detail.startswith(f"frame {frame + 1}: ")


def test_temporal_positions_in_one_file_are_split_never_mixed(tmp_path: Path) -> None:
    first, _, files_1 = _classic(tmp_path / "a", seed=1)
    second, _, files_2 = _classic(tmp_path / "b", seed=2, volume=_volume(9))
    mf = _dcmulti(files_1 + files_2, tmp_path / "mf" / "image.dcm")  # frames 1-8: a, 9-16: b, same positions

    mixed = scan_dicom_tree(tmp_path / "mf").series
    assert len(mixed) == 1 and mixed[0].problems[0].code == ReasonCode.DUPLICATE_SLICE
    assert mixed[0].problems[0].detail.startswith("frame ")

    def temporal_index(ds: Dataset) -> None:
        for number, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
            group.FrameContentSequence[0].TemporalPositionIndex = 1 if number < 8 else 2

    _edit(mf, temporal_index)
    stacks = scan_dicom_tree(tmp_path / "mf").series
    assert [s.stack_id.rsplit("#", 1)[1] for s in stacks] == ["t1", "t2"]
    assert all(s.ok and s.n_slices == 8 for s in stacks)
    assert np.array_equal(load_dicom_series(stacks[0])[0], first)
    assert np.array_equal(load_dicom_series(stacks[1])[0], second)


def test_batch_quarantines_the_seg_of_one_temporal_position_and_segments_it_without_seg(
    tmp_path: Path,
) -> None:
    """Two temporal positions at the same positions in one file: a SEG could not say which one it segments.
    With the seg output each stack is QUARANTINED (final, not retried); without it both are segmented."""
    volumes = [
        _classic(tmp_path / "a", seed=1)[::2],
        _classic(tmp_path / "b", seed=2, volume=_volume(9))[::2],
    ]
    mf = _dcmulti(volumes[0][1] + volumes[1][1], tmp_path / "archive" / "study" / "image.dcm")

    def temporal_index(ds: Dataset) -> None:
        for number, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
            group.FrameContentSequence[0].TemporalPositionIndex = 1 if number < 8 else 2

    _edit(mf, temporal_index)
    root = tmp_path / "archive"
    with_seg = segment_archive(
        root, tmp_path / "out", threshold_predictor(), name_key=NAME_KEY, progress=False
    )
    assert (with_seg.done, with_seg.quarantined, with_seg.failed) == (0, 2, 0)
    rows = list(csv.DictReader((tmp_path / "out" / "quarantine.csv").open()))
    assert {r["reason"] for r in rows} == {"UNSUPPORTED_FORMAT"}
    assert all(
        "--formats nifti,report,qc" in r["detail"] and "temporal positions" in r["detail"] for r in rows
    )
    again = segment_archive(root, tmp_path / "out", threshold_predictor(), name_key=NAME_KEY, progress=False)
    assert (again.done, again.quarantined, again.failed) == (0, 2, 0)

    out = tmp_path / "no-seg"
    summary = segment_archive(
        root, out, threshold_predictor(), name_key=NAME_KEY, progress=False, formats=("nifti", "report")
    )
    assert (summary.done, summary.quarantined, summary.failed) == (2, 0, 0)
    for series, (volume, _files) in zip(scan_dicom_tree(root).series, volumes, strict=True):
        label = nib.load(out / keyed_name(NAME_KEY, "series", series.stack_id) / "label.nii.gz")
        np.testing.assert_array_equal(np.asarray(label.dataobj), (volume > THRESHOLD_HU).astype(np.uint8))


def _no_functional_groups(tmp_path: Path, files: list[Path]) -> None:  # dcmulti makes a classic MF from PET
    _dcmulti(files, tmp_path / "mf" / "image.dcm")


def _non_image(tmp_path: Path, files: list[Path]) -> None:
    def rt_dose(ds: Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"

    _edit(_dcmulti(files, tmp_path / "mf" / "image.dcm"), rt_dose)


def _colour(tmp_path: Path, files: list[Path]) -> None:
    _edit(_dcmulti(files, tmp_path / "mf" / "image.dcm"), lambda ds: setattr(ds, "SamplesPerPixel", 3))


@pytest.mark.parametrize(
    ("make", "modality", "detail"),
    [
        (_no_functional_groups, "PT", "multi-frame image without functional groups (Positron Emission"),
        (_non_image, "CT", "multi-frame non-image object (RT Dose Storage, 8 frames)"),
        (_colour, "CT", "colour image (3 samples/pixel)"),
    ],
    ids=["no-functional-groups", "non-image", "colour"],
)
def test_unsupported_multiframe_objects_are_skipped_with_a_reason(
    tmp_path: Path, make, modality: str, detail: str
) -> None:
    _, _, files = _classic(tmp_path / "classic", modality=modality, volume=_volume(5, 0, 3000))
    make(tmp_path, files)
    scan = scan_dicom_tree(tmp_path / "mf")
    assert scan.series == []
    assert [(p.code, p.path) for p in scan.problems] == [(ReasonCode.UNSUPPORTED_FORMAT, "image.dcm")]
    assert detail in scan.problems[0].detail
    assert _code(lambda: read_dicom(tmp_path / "mf")).code == ReasonCode.NO_SERIES


# ------------------------------------------------------------------------------------------------ entry points
def test_load_volume_info_and_series_rules_with_a_multiframe_series(tmp_path: Path, capsys) -> None:
    study = tmp_path / "study"
    ct, ct_affine, _ = _classic(study / "ct", "axial", seed=1, series_description="ct classic")
    mr, mr_affine, mr_files = _classic(
        tmp_path / "src", "coronal", modality="MR", seed=2, series_number=5, volume=_volume(6, 0, 3000)
    )
    mf = _dcmulti(mr_files, study / "mr" / "image.dcm")

    img = load_volume(study / "mr")
    assert tuple(img.shape) == (1, *SHAPE) and np.array_equal(img[0].numpy(), mr)
    assert float(np.max(np.abs(img.affine.numpy() - mr_affine))) <= AFFINE_TOL_MM
    chosen = load_volume(study, series_rule=SeriesRule(modality="MR"))
    assert np.array_equal(chosen[0].numpy(), mr)
    assert np.array_equal(read_dicom(study, rule={"modality": "CT"})[0], ct)
    assert np.array_equal(read_dicom(mf)[0], mr)  # the file itself
    assert _code(lambda: read_dicom(study)).code == ReasonCode.AMBIGUOUS_SERIES

    assert main(["info", str(study)]) == 0
    out = capsys.readouterr().out
    assert "DICOM: 2 series/stack(s), 0 skipped file(s)" in out
    mr_line = next(line for line in out.splitlines() if line.strip().startswith("[") and " MR " in line)
    assert "frames=8 (multi-frame)" in mr_line and "shape=12x14x8" in mr_line and mr_line.endswith("ok")


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_batch_segments_a_multiframe_study_and_a_classic_one(tmp_path: Path, orientation: str) -> None:
    root = tmp_path / "archive"
    write_ct_study(root / "classic", orientation=orientation, shape=(24, 24, 12), seed=1, n_organs=2)
    # a random volume (a phantom is nearly symmetric, which would hide a slice <-> frame mix-up) with frames in
    # shuffled order; dcmulti writes the oblique orientation to 6 decimals (~1e-6 off orthogonal, as scanners do)
    _, _, files = _classic(tmp_path / "src", orientation, reverse=orientation == "axial", seed=2)
    mf = _dcmulti(files, root / "enhanced" / "CT" / "image.dcm")

    summary = segment_archive(
        root, tmp_path / "out", threshold_predictor(), name_key=NAME_KEY, progress=False
    )

    assert (summary.done, summary.quarantined, summary.failed) == (2, 0, 0)
    for study in ("classic", "enhanced"):
        volume, affine, meta = read_dicom(root / study)
        key = keyed_name(NAME_KEY, "series", meta["stack_id"])
        label = nib.load(tmp_path / "out" / key / "label.nii.gz")
        expected = (volume > THRESHOLD_HU).astype(np.uint8)
        assert 0 < expected.sum() < expected.size
        np.testing.assert_array_equal(np.asarray(label.dataobj), expected)
        np.testing.assert_allclose(label.affine, affine, atol=AFFINE_TOL_MM)
    source = pydicom.dcmread(mf, stop_before_pixels=True)
    seg_path = tmp_path / "out" / key / "seg.dcm"
    seg = hd.seg.segread(seg_path)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence] == [
        source.SOPInstanceUID
    ]
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    # rebuild the label from the SEG through ReferencedFrameNumber -> medseg's slice k
    k_of_frame = {h.frame + 1: k for k, h in enumerate(scan_dicom_tree(root / "enhanced").series[0].slices)}
    rebuilt = np.zeros_like(expected)
    pixels = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        rebuilt[:, :, k_of_frame[int(ref.ReferencedFrameNumber)]] = pixels[f].T
    np.testing.assert_array_equal(rebuilt, expected)
    assert _dciodvfy_errors(seg_path) == []


def test_seg_writer_checks_a_multiframe_source(tmp_path: Path) -> None:
    _, affine, files = _classic(tmp_path / "classic", "sagittal", spacing=(0.5, 0.75, 2.0))
    mf = _dcmulti(files, tmp_path / "mf" / "image.dcm")
    volume, read_affine, _ = read_dicom(tmp_path / "mf")
    label = (volume > 0).astype(np.uint8)
    source = pydicom.dcmread(mf, stop_before_pixels=True)
    assert float(np.max(np.abs(source_affine([source]) - read_affine))) <= AFFINE_TOL_MM

    shifted = read_affine.copy()
    shifted[:3, 3] += 0.01  # on the frames (selection) but off the grid by 0.01 mm (exact check)
    with pytest.raises(ValueError, match="differs from the source series' geometry by 0.01"):
        write_dicom_seg(label, [mf], {1: "body"}, tmp_path / "a.dcm", affine=shifted)
    half = read_affine.copy()
    half[:3, 3] += read_affine[:3, 2] / 2  # between frames
    with pytest.raises(ValueError, match=r"label slice\(s\) \[0, 1, 2, 3, 4\] lie on no frame"):
        write_dicom_seg(label, [mf], {1: "body"}, tmp_path / "b.dcm", affine=half)
    with pytest.raises(ValueError, match="either single-frame slices or exactly one multi-frame image"):
        write_dicom_seg(label, [mf, files[0]], {1: "body"}, tmp_path / "c.dcm")
    # no affine: all frames in spatial order; the folder form gives the same SEG content
    out = write_dicom_seg(label, tmp_path / "mf", {1: "body"}, tmp_path / "d.dcm")
    assert int(hd.seg.segread(out).NumberOfFrames) == int(np.count_nonzero(label.any(axis=(0, 1))))
