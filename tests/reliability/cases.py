"""The battery's table: every bad (and good) input with the outcome `medseg info` / `medseg convert` must give.

Each :class:`Case` writes its input under ``<tmp>/<case>/<CANARY_FOLDER>`` (the canary folder is the input root, so
reason lines, which name files relative to it, never show it) and says what ``medseg convert`` must answer:
``OK`` (then the written NIfTI's voxels and affine are compared with the truth) or a reason code, with the
relative path the reason line must name. ``info`` is what ``medseg info`` must show: ``OK`` (a listing, exit 0),
or a reason code (in the reason line with exit 2, or in the listing's problem lines with exit 0). ``segment`` is
what one ``medseg segment`` batch over an archive of every case must give for the items discovered in the case's
folder (:mod:`batch_battery`: a CT model with default settings): ``DONE`` per item segmented (its label checked
against the truth), ``Q:<code>`` per item quarantined; by default the ``convert`` expectation (``OK`` -> ``DONE``).
It differs where the batch has no convert option (``--min-slices``, ``--modality``: the model's series rule is
CT, at least one slice, and a 3D model needs a volume), where every stack and every unusable file is its own item
(two series, a re-acquired slice, junk beside a series) instead of one answer for the folder.
``docs/reliability.md`` is generated from this table (``python tests/reliability/report.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from inputs import (
    NIFTI_AFFINE,
    Built,
    case_uid,
    cut_at,
    edit,
    edit_all,
    element_map,
    find_element,
    in_uid_namespace,
    nifti_volume,
    patch_nifti,
    set_raw_value,
    write_ct,
    write_nifti,
)
from layouts import bare_series, multiframe
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[Path], Built]
    convert: str  # "OK" or a ReasonCode value
    info: str  # "OK" or a ReasonCode value (in the listing or the reason line)
    path: str | None = None  # file the convert reason line must name (None: not checked)
    args: tuple[str, ...] = field(default=())  # extra convert arguments
    segment: str | None = None  # what a batch must give (see batch_battery.py); None: as convert, OK -> DONE

    @property
    def segment_expected(self) -> str:
        """The batch outcome of the case's items: ``DONE`` / ``Q:<code>`` / ``F:<error>``, sorted, `` + ``-joined."""
        if self.segment is not None:
            return self.segment
        return "DONE" if self.convert == "OK" else f"Q:{self.convert}"


def _series(root: Path, n: int = 12, **kw) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    return write_ct(root, n, **kw)


def _ok_series(root: Path) -> Built:
    vol, aff, _ = _series(root)
    return Built(root, vol, aff)


def _with(change: Callable[[list[Path], Path], None], n: int = 12, **kw) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        vol, aff, files = _series(root, n, **kw)
        change(files, root)
        return Built(root, vol, aff)

    return build


def _edit_slice(k: int, change: Callable[[pydicom.Dataset], object]) -> Callable[[list[Path], Path], None]:
    return lambda files, root: edit(files[k], change)


def _set(keyword: str, value: object) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _delete(*keywords: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for k in keywords:
            delattr(ds, k)

    return change


# ------------------------------------------------------------------------------------------------ DICOM builders
def _junk_only(root: Path) -> Built:
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("nothing to see\n")
    (root / "empty.dcm").write_bytes(b"")
    return Built(root)


def _no_preamble(files: list[Path], root: Path) -> None:
    raw = files[0].read_bytes()
    meta_end = max(e.value_start + e.length for e in element_map(files[0]) if e.group == 2)
    files[0].write_bytes(raw[meta_end:])  # the bare data set: no preamble, no 'DICM', no file meta


def _cut_before_uid(files: list[Path], root: Path) -> None:
    cut_at(files[0], find_element(files[0], 0x0020000E).start - 2)


def _cut_in_ipp(files: list[Path], root: Path) -> None:
    cut_at(files[-1], find_element(files[-1], 0x00200032).value_start + 5)


def _pixels_short(files: list[Path], root: Path) -> None:
    cut_at(files[-1], files[-1].stat().st_size - 50)


def _unknown_ts(files: list[Path], root: Path) -> None:
    e = find_element(files[3], 0x00020010)
    value = b"1.2.3.4.5".ljust(e.length, b"\0")
    set_raw_value(files[3], 0x00020010, value)


def _j2k_garbage(files: list[Path], root: Path) -> None:
    ds = pydicom.dcmread(files[1])
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(200))])
    ds["PixelData"].VR = "OB"
    ds.save_as(files[1], enforce_file_format=True)


def _slope_text(files: list[Path], root: Path) -> None:
    e = find_element(files[3], 0x00281053)
    set_raw_value(files[3], 0x00281053, b"ab".ljust(e.length))


def _unsigned_wrap(root: Path) -> Built:
    # -1024 HU stored as signed 16-bit but declared unsigned: -1024 reads as 64512
    vol, aff, files = _series(root, rescale_intercept=0.0, extra_tags={"PixelRepresentation": 0})
    return Built(root, vol, aff)


def _per_slice_rescale(root: Path) -> Built:
    vol, aff, files = _series(root)
    expected = vol.copy()
    k = 5
    edit(files[k], lambda ds: (setattr(ds, "RescaleSlope", "2"), setattr(ds, "RescaleIntercept", "-3000")))
    expected[:, :, k] = (vol[:, :, k] + 1024) * 2 - 3000  # the same stored values, the slice's own rescale
    return Built(root, expected, aff)


def _no_rescale_anywhere(root: Path) -> Built:
    vol, aff, files = _series(root, modality="MR", rescale_intercept=0.0)
    return Built(root, vol, aff)


def _move(k: int, dz: float = 0.0, dy: float = 0.0) -> Callable[[list[Path], Path], None]:
    def change(files: list[Path], root: Path) -> None:
        def shift(ds: pydicom.Dataset) -> None:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + dy, z + dz]

        edit(files[k], shift)

    return change


def _duplicate(files: list[Path], root: Path) -> None:
    position = pydicom.dcmread(files[2]).ImagePositionPatient
    edit(files[3], _set("ImagePositionPatient", position))


def _tilt(files: list[Path], root: Path) -> None:
    for k, f in enumerate(files):
        edit(f, lambda ds, k=k: setattr(
            ds, "ImagePositionPatient", [float(ds.ImagePositionPatient[0]),
                                         float(ds.ImagePositionPatient[1]) + 0.7 * k,
                                         float(ds.ImagePositionPatient[2])]))


def _two_series(root: Path) -> Built:
    _series(root / "a", seed=1, series_number=2)
    _series(root / "b", seed=2, series_number=3)
    return Built(root)


def _exported_twice(change: Callable[[pydicom.Dataset], object] | None = None) -> Callable[[Path], Built]:
    """The series in ``first/`` and a copy in ``second/`` (same instances); ``change`` edits one copied slice."""

    def build(root: Path) -> Built:
        vol, aff, files = _series(root / "first")
        (root / "second").mkdir()
        for f in files:
            (root / "second" / f.name).write_bytes(f.read_bytes())
        if change is not None:
            edit(root / "second" / files[5].name, change)
        return Built(root, vol, aff)

    return build


def _backup_without_the_damaged_slice(root: Path) -> Built:
    """``original/`` with its end slice cut before SeriesInstanceUID, and ``a_backup/`` (read first) holding
    byte-identical copies of the 11 readable slices: the backup must not hide the damage."""
    vol, aff, files = _series(root / "original")
    (root / "a_backup").mkdir()
    for f in files[1:]:
        (root / "a_backup" / f.name).write_bytes(f.read_bytes())
    _cut_before_uid(files, root)
    return Built(root, vol, aff)


def _localizer(root: Path) -> Built:
    uid = case_uid("tri-planar")
    for i, plane in enumerate(("axial", "coronal", "sagittal")):
        _series(root / plane, n=1, seed=i, orientation=plane, series_uid=uid)
    return Built(root)


def _instances(mode: str) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        vol, aff, files = _series(root)
        rng = np.random.default_rng(3)
        numbers = rng.permutation(len(files)) + 1
        for k, f in enumerate(files):
            if mode == "missing":
                edit(f, _delete("InstanceNumber"))
            elif mode == "duplicated":
                edit(f, _set("InstanceNumber", 1))
            else:
                edit(f, _set("InstanceNumber", int(numbers[k])))
        return Built(root, vol, aff)

    return build


def _multi_echo(root: Path) -> Built:
    uid = case_uid("multi-echo")
    for echo in (1, 2):
        _series(root / f"e{echo}", seed=echo, modality="MR", rescale_intercept=0.0, series_uid=uid,
                extra_tags={"EchoNumbers": echo})
    return Built(root)


def _reacquired(root: Path) -> Built:
    vol, aff, files = _series(root)
    ds = pydicom.dcmread(files[4])
    ds.AcquisitionNumber = 2
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = case_uid("re-acquired")
    ds.save_as(root / "IM00005_reacquired.dcm", enforce_file_format=True)
    return Built(root, vol, aff)


def _encoded(syntax: str) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        vol, aff, files = _series(root)
        for f in files:
            ds = pydicom.dcmread(f)
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(f, enforce_file_format=True)
        return Built(root, vol, aff)

    return build


def _new_uids(ds: pydicom.Dataset) -> None:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if keyword in ds:
            setattr(ds, keyword, case_uid(keyword))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = case_uid("SOPInstanceUID")


def _legacy(name: str) -> Callable[[Path], Built]:
    """One of pydicom's bundled test files (shipped in the wheel: no download) as a one-slice series."""

    def build(root: Path) -> Built:
        src = Path(get_testdata_file(name, download=False))
        root.mkdir(parents=True)
        (root / name).write_bytes(src.read_bytes())
        ds = pydicom.dcmread(src)
        if in_uid_namespace():  # in a batch archive: UIDs of its own (the MR files are one instance twice)
            edit(root / name, _new_uids)
        slope, inter = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        expected = (ds.pixel_array.astype(np.float64) * slope + inter).T[:, :, None]
        return Built(root, expected.astype(np.float32), None)

    return build


# ------------------------------------------------------------------------------------------------ NIfTI builders
def _nii(name: str = "img.nii", data: np.ndarray | None = None, affine: np.ndarray | None = None, **kw):
    def build(root: Path) -> Built:
        d = nifti_volume() if data is None else data
        a = NIFTI_AFFINE if affine is None else affine
        return Built(write_nifti(root / name, d, a, **kw), d, a)

    return build


def _nii_patched(field_name: str, value: object, index: int | None = None, name: str = "img.nii", data=None):
    def build(root: Path) -> Built:
        built = _nii(name, data)(root)
        patch_nifti(built.path, field_name, value, index)
        return built

    return build


def _nii_truncated(name: str, keep: float) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        built = _nii(name)(root)
        raw = built.path.read_bytes()
        built.path.write_bytes(raw[: int(len(raw) * keep)])
        return built

    return build


def _nii_with(value: float) -> Callable[[Path], Built]:
    data = nifti_volume()
    data[3, 4, 5] = value
    return _nii(data=data)


def _nii_conflict(root: Path) -> Built:
    path = root / "img.nii"
    img = nib.Nifti1Image(nifti_volume(), NIFTI_AFFINE)
    moved = NIFTI_AFFINE.copy()
    moved[:3, 3] += [5.0, 0, 0]
    img.set_qform(NIFTI_AFFINE, code=1)
    img.set_sform(moved, code=1)
    root.mkdir(parents=True)
    nib.save(img, str(path))
    return Built(path)


def _nii_scaled(root: Path) -> Built:
    stored = np.random.default_rng(1).integers(-500, 500, size=(12, 10, 8)).astype(np.int16)
    built = _nii(data=stored, dtype=np.int16)(root)
    patch_nifti(built.path, "scl_slope", 2.0)
    patch_nifti(built.path, "scl_inter", -7.0)
    return Built(built.path, stored.astype(np.float32) * 2 - 7, NIFTI_AFFINE)


def _nii_unscaled(slope: float) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        built = _nii()(root)
        patch_nifti(built.path, "scl_slope", slope)
        return built

    return build


_SHEARED = NIFTI_AFFINE.copy()
_SHEARED[0, 1] = 0.3
_SINGULAR = NIFTI_AFFINE.copy()
_SINGULAR[:3, 2] = _SINGULAR[:3, 0] + _SINGULAR[:3, 1]  # third axis in the plane of the first two
_RGB = np.zeros((6, 5, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])


def _empty_nii(root: Path) -> Built:
    root.mkdir(parents=True)
    (root / "img.nii.gz").write_bytes(b"")
    return Built(root / "img.nii.gz")


def _bomb(root: Path) -> Built:
    built = _nii("img.nii.gz")(root)
    for i, v in enumerate([3, 2000, 2000, 2000, 1, 1, 1, 1]):
        patch_nifti(built.path, "dim", v, i)
    return built


# ------------------------------------------------------------------------------------------------ the table
DICOM = "dicom"
CASES: list[Case] = [
    # -- DICOM: files
    Case("dcm_ok", "clean 12-slice CT series", _ok_series, "OK", "OK"),
    Case("dcm_text_beside", "a text file and a 0-byte .txt beside a clean series",
         _with(lambda f, r: ((r / "notes.txt").write_text("x"), (r / "empty.txt").write_bytes(b""))),
         "OK", "EMPTY_FILE", segment="DONE + Q:EMPTY_FILE + Q:NOT_DICOM"),
    Case("dcm_empty_slice_beside", "a 0-byte .dcm beside a series (a slice whose copy left it empty)",
         _with(lambda f, r: (r / "empty.dcm").write_bytes(b"")), "EMPTY_FILE", "EMPTY_FILE", "empty.dcm"),
    Case("dcm_only_junk", "folder of a 0-byte file and a text file", _junk_only, "NO_SERIES", "NOT_DICOM", ".",
         segment="Q:EMPTY_FILE + Q:NOT_DICOM"),
    Case("dcm_no_preamble", "one slice written without preamble / 'DICM' / file meta", _with(_no_preamble),
         "OK", "OK"),
    Case("dcm_no_preamble_series", "every slice a bare implicit VR data set (no preamble, 'DICM', file meta)",
         bare_series(implicit=True), "OK", "OK"),
    Case("dcm_no_preamble_meta_kept", "every slice without preamble / 'DICM', file meta kept",
         bare_series(keep_meta=True), "OK", "OK"),
    Case("dcm_no_preamble_missing_iop", "one bare slice without ImageOrientationPatient",
         bare_series([3], drop=("ImageOrientationPatient",)), "UNREADABLE", "UNREADABLE", "IM00004.dcm"),
    Case("dcm_no_preamble_missing_bits_stored", "one bare slice without BitsStored",
         bare_series([0], drop=("BitsStored",)), "UNREADABLE", "UNREADABLE", "IM00001.dcm"),
    Case("dcm_header_cut_before_uid", "end slice cut inside its header, before SeriesInstanceUID",
         _with(_cut_before_uid), "TRUNCATED_HEADER", "TRUNCATED_HEADER", "IM00001.dcm"),
    Case("dcm_header_cut_in_ipp", "end slice cut inside ImagePositionPatient", _with(_cut_in_ipp),
         "TRUNCATED_HEADER", "TRUNCATED_HEADER", "IM00012.dcm"),
    Case("dcm_pixels_short", "end slice's pixel data cut short", _with(_pixels_short),
         "TRUNCATED_PIXEL_DATA", "TRUNCATED_PIXEL_DATA", "IM00012.dcm"),
    Case("dcm_rows_changed", "one slice says Rows 8 (pixel data for 16)", _with(_edit_slice(11, _set("Rows", 8))),
         "TRUNCATED_PIXEL_DATA", "TRUNCATED_PIXEL_DATA", "IM00012.dcm", ("--min-slices", "3"),
         segment="Q:TRUNCATED_PIXEL_DATA x2"),
    Case("dcm_bits_stored_20", "BitsStored 20 > BitsAllocated 16 in one slice",
         _with(_edit_slice(3, _set("BitsStored", 20))), "INVALID_PIXEL_FORMAT", "INVALID_PIXEL_FORMAT",
         "IM00004.dcm"),
    Case("dcm_high_bit_wrong", "HighBit 14 with BitsStored 16 in one slice",
         _with(_edit_slice(3, _set("HighBit", 14))), "INVALID_PIXEL_FORMAT", "INVALID_PIXEL_FORMAT",
         "IM00004.dcm"),
    Case("dcm_bits_stored_differs", "one end slice BitsStored 12 / HighBit 11, the others 16 / 15",
         _with(_edit_slice(0, lambda ds: (setattr(ds, "BitsStored", 12), setattr(ds, "HighBit", 11)))),
         "INCONSISTENT_PIXEL_FORMAT", "INCONSISTENT_PIXEL_FORMAT", "IM00001.dcm"),
    Case("dcm_sign_differs", "one slice PixelRepresentation 0, the others 1",
         _with(_edit_slice(7, _set("PixelRepresentation", 0))), "INCONSISTENT_PIXEL_FORMAT",
         "INCONSISTENT_PIXEL_FORMAT", "IM00008.dcm"),
    Case("dcm_unknown_transfer_syntax", "one slice with TransferSyntaxUID 1.2.3.4.5", _with(_unknown_ts),
         "UNREADABLE", "UNREADABLE", "IM00004.dcm"),
    Case("dcm_j2k_garbage", "JPEG 2000 slice whose fragment is garbage", _with(_j2k_garbage), "UNREADABLE", "OK",
         "IM00002.dcm"),
    # -- DICOM: values
    Case("dcm_slope_text", "RescaleSlope 'ab' in one slice", _with(_slope_text), "INVALID_RESCALE",
         "INVALID_RESCALE", "IM00004.dcm"),
    Case("dcm_slope_zero", "RescaleSlope 0 in one slice", _with(_edit_slice(3, _set("RescaleSlope", "0"))),
         "INVALID_RESCALE", "INVALID_RESCALE", "IM00004.dcm"),
    Case("dcm_intercept_missing", "RescaleIntercept missing (slope kept) in one slice",
         _with(_edit_slice(0, _delete("RescaleIntercept"))), "INVALID_RESCALE", "INVALID_RESCALE", "IM00001.dcm"),
    Case("dcm_rescale_missing_one_slice", "RescaleSlope and Intercept missing in one end slice only",
         _with(_edit_slice(11, _delete("RescaleSlope", "RescaleIntercept"))), "INCONSISTENT_RESCALE",
         "INCONSISTENT_RESCALE", "IM00012.dcm"),
    Case("dcm_rescale_absent_everywhere", "MR series without rescale tags (1 / 0)", _no_rescale_anywhere, "OK",
         "OK", segment="Q:WRONG_MODALITY"),
    Case("dcm_per_slice_rescale", "one slice with its own slope 2 / intercept -3000", _per_slice_rescale, "OK",
         "OK"),
    Case("dcm_unsigned_wrap", "CT with signed values declared unsigned (-1024 -> 64512)", _unsigned_wrap,
         "INTENSITY_RANGE", "OK", None),
    # -- DICOM: geometry
    Case("dcm_missing_slice", "slice 6 of 12 missing", _with(lambda f, r: f[5].unlink()), "MISSING_SLICE",
         "MISSING_SLICE", "IM00007.dcm"),
    Case("dcm_nonuniform_spacing", "one slice 0.4 mm off the grid", _with(_move(4, dz=0.4)), "NONUNIFORM_SPACING",
         "NONUNIFORM_SPACING", "IM00005.dcm"),
    Case("dcm_duplicate_position", "two slices at one position", _with(_duplicate), "DUPLICATE_SLICE",
         "DUPLICATE_SLICE"),
    Case("dcm_exported_twice", "the series exported twice (a byte-identical copy in a second folder)",
         _exported_twice(), "OK", "OK"),
    Case("dcm_copy_differs", "the same, one copied slice with another WindowCenter (same SOPInstanceUID)",
         _exported_twice(_set("WindowCenter", 123)), "DUPLICATE_SLICE", "DUPLICATE_SLICE"),
    Case("dcm_backup_hides_damage", "a backup copy of 11 slices beside the original whose 12th slice is cut",
         _backup_without_the_damaged_slice, "TRUNCATED_HEADER", "TRUNCATED_HEADER", "original/IM00001.dcm"),
    Case("dcm_two_series", "two series and no rule", _two_series, "AMBIGUOUS_SERIES", "OK", ".",
         segment="DONE x2"),
    Case("dcm_localizer_triplanar", "tri-planar localizer (3 one-slice orientations, one UID)", _localizer,
         "AMBIGUOUS_SERIES", "NOT_VOLUME", ".", segment="Q:NOT_VOLUME x3"),
    Case("dcm_gantry_tilt", "positions drifting in-plane (tilt)", _with(_tilt), "GANTRY_TILT", "GANTRY_TILT",
         "IM00012.dcm"),
    Case("dcm_non_orthonormal", "ImageOrientationPatient not orthonormal",
         _with(lambda f, r: edit_all(f, _set("ImageOrientationPatient", [1, 0, 0, 0.1, 1, 0]))),
         "NON_ORTHONORMAL_ORIENTATION", "NON_ORTHONORMAL_ORIENTATION"),
    Case("dcm_missing_ipp", "ImagePositionPatient missing in one slice",
         _with(_edit_slice(2, _delete("ImagePositionPatient"))), "MISSING_GEOMETRY", "MISSING_GEOMETRY",
         "IM00003.dcm"),
    Case("dcm_instance_missing", "InstanceNumber missing everywhere", _instances("missing"), "OK", "OK"),
    Case("dcm_instance_duplicated", "InstanceNumber 1 everywhere", _instances("duplicated"), "OK", "OK"),
    Case("dcm_instance_shuffled", "InstanceNumber shuffled", _instances("shuffled"), "OK", "OK"),
    Case("dcm_mixed_spacing", "one slice with another PixelSpacing",
         _with(_edit_slice(1, _set("PixelSpacing", [0.95, 0.8]))), "INCONSISTENT_SPACING", "INCONSISTENT_SPACING",
         "IM00002.dcm"),
    Case("dcm_multiframe", "Enhanced CT: the series as one multi-frame file (per-frame functional groups)",
         multiframe(), "OK", "OK"),
    Case("dcm_multiframe_rotated_frame", "Enhanced CT, one frame's orientation rotated 5 degrees",
         multiframe("rotated_frame"), "STRAY_SLICE", "STRAY_SLICE", "image.dcm", ("--min-slices", "3"),
         segment="Q:NOT_VOLUME + Q:STRAY_SLICE"),
    Case("dcm_multiframe_no_position", "Enhanced CT, one frame without PlanePositionSequence",
         multiframe("frame_without_position"), "MISSING_GEOMETRY", "MISSING_GEOMETRY", "image.dcm"),
    Case("dcm_multi_echo", "two echoes in one series UID, no rule", _multi_echo, "AMBIGUOUS_SERIES", "OK", ".",
         segment="Q:WRONG_MODALITY x2"),
    Case("dcm_single_slice", "a single 2D slice", lambda r: Built(r, *_series(r, 1)[:2]), "NOT_VOLUME", "NOT_VOLUME",
         "IM00001.dcm"),
    Case("dcm_two_slices", "two slices", lambda r: Built(r, *_series(r, 2)[:2]), "NOT_VOLUME", "NOT_VOLUME",
         "IM00001.dcm"),
    Case("dcm_single_slice_allowed", "a single slice with --min-slices 1", lambda r: Built(r, *_series(r, 1)[:2]),
         "OK", "NOT_VOLUME", None, ("--min-slices", "1"), segment="Q:NOT_VOLUME"),
    Case("dcm_reacquired_slice", "re-acquired slice (AcquisitionNumber 2) beside a complete stack", _reacquired,
         "AMBIGUOUS_SERIES", "NOT_VOLUME", ".", segment="DONE + Q:NOT_VOLUME"),
    Case("dcm_reacquired_slice_rule", "the same with --min-slices 3: the complete stack", _reacquired, "OK",
         "NOT_VOLUME", None, ("--min-slices", "3"), segment="DONE + Q:NOT_VOLUME"),
    Case("dcm_wrong_modality", "CT series, --modality MR", _ok_series, "WRONG_MODALITY", "OK", ".",
         ("--modality", "MR"), segment="DONE"),
    Case("dcm_legacy_big_endian", "pydicom MR_small_bigendian.dcm (explicit VR big endian)",
         _legacy("MR_small_bigendian.dcm"), "OK", "NOT_VOLUME", None, ("--min-slices", "1"),
         segment="Q:WRONG_MODALITY"),
    Case("dcm_legacy_implicit", "pydicom MR_small_implicit.dcm (implicit VR little endian)",
         _legacy("MR_small_implicit.dcm"), "OK", "NOT_VOLUME", None, ("--min-slices", "1"),
         segment="Q:WRONG_MODALITY"),
    Case("dcm_legacy_deflate", "pydicom image_dfl.dcm (deflated secondary capture, no patient geometry)",
         _legacy("image_dfl.dcm"), "MISSING_GEOMETRY", "MISSING_GEOMETRY", None, ("--min-slices", "1"),
         segment="Q:WRONG_MODALITY"),
    Case("dcm_legacy_ct", "pydicom CT_small.dcm (one slice)", _legacy("CT_small.dcm"), "NOT_VOLUME", "NOT_VOLUME",
         "CT_small.dcm"),
    Case("dcm_deflated_series", "12-slice series re-encoded as Deflated Explicit VR Little Endian",
         _encoded(DeflatedExplicitVRLittleEndian), "OK", "OK"),
    Case("dcm_implicit_series", "12-slice series re-encoded as Implicit VR Little Endian",
         _encoded(ImplicitVRLittleEndian), "OK", "OK"),
    # -- NIfTI
    Case("nii_ok", "clean .nii", _nii(), "OK", "OK"),
    Case("nii_gz_ok", "clean .nii.gz", _nii("img.nii.gz"), "OK", "OK"),
    Case("nii_empty", "0-byte .nii.gz", _empty_nii, "EMPTY_FILE", "EMPTY_FILE", "img.nii.gz"),
    Case("nii_truncated", ".nii cut at 70 %", _nii_truncated("img.nii", 0.7), "TRUNCATED_FILE", "TRUNCATED_FILE",
         "img.nii"),
    Case("nii_gz_truncated", ".nii.gz cut at 70 %", _nii_truncated("img.nii.gz", 0.7), "TRUNCATED_FILE",
         "TRUNCATED_FILE", "img.nii.gz"),
    Case("nii_vox_offset_past_eof", "vox_offset 1e6 in a 4 kB file", _nii_patched("vox_offset", 1e6),
         "HEADER_SIZE_MISMATCH", "HEADER_SIZE_MISMATCH", "img.nii"),
    Case("nii_nan", "one NaN voxel", _nii_with(np.nan), "NAN_VOXELS", "OK", "img.nii"),
    Case("nii_inf", "one infinite voxel", _nii_with(np.inf), "NAN_VOXELS", "OK", "img.nii"),
    Case("nii_qform_sform_conflict", "qform and sform 5 mm apart", _nii_conflict, "QFORM_SFORM_MISMATCH",
         "QFORM_SFORM_MISMATCH", "img.nii"),
    Case("nii_no_spatial_info", "qform_code = sform_code = 0", _nii(qform_code=0, sform_code=0),
         "MISSING_GEOMETRY", "MISSING_GEOMETRY", "img.nii"),
    Case("nii_pixdim_zero", "pixdim[1] = 0", _nii_patched("pixdim", 0.0, 1), "INVALID_HEADER", "INVALID_HEADER",
         "img.nii"),
    Case("nii_sheared", "sheared sform (qform_code 0)", _nii(affine=_SHEARED, qform_code=0), "INVALID_AFFINE",
         "INVALID_AFFINE", "img.nii"),
    Case("nii_singular", "singular sform (qform_code 0)", _nii(affine=_SINGULAR, qform_code=0), "INVALID_AFFINE",
         "INVALID_AFFINE", "img.nii"),
    Case("nii_4d", "4D (2 volumes)", _nii(data=np.zeros((6, 5, 4, 2), np.float32)), "WRONG_DIMENSIONS", "OK",
         "img.nii"),
    Case("nii_5d", "5D", _nii(data=np.zeros((6, 5, 4, 2, 2), np.float32)), "WRONG_DIMENSIONS", "WRONG_DIMENSIONS",
         "img.nii"),
    Case("nii_rgb", "RGB voxels", _nii(data=_RGB), "UNSUPPORTED_DTYPE", "UNSUPPORTED_DTYPE", "img.nii"),
    Case("nii_complex", "complex64 voxels", _nii(data=nifti_volume().astype(np.complex64)), "UNSUPPORTED_DTYPE",
         "UNSUPPORTED_DTYPE", "img.nii"),
    Case("nii_header_bomb", "header says 2000^3 voxels (.nii.gz of a few kB)", _bomb, "HEADER_SIZE_MISMATCH",
         "HEADER_SIZE_MISMATCH", "img.nii.gz"),
    Case("nii_bad_magic", "magic 'zz1'", _nii_patched("magic", b"zz1\0"), "UNREADABLE", "UNREADABLE", "img.nii"),
    Case("nii_sizeof_hdr", "sizeof_hdr 300", _nii_patched("sizeof_hdr", 300), "UNREADABLE", "UNREADABLE",
         "img.nii"),
    Case("nii_unknown_datatype", "datatype code 77", _nii_patched("datatype", 77), "UNSUPPORTED_DTYPE",
         "UNSUPPORTED_DTYPE", "img.nii"),
    Case("nii_scl_slope_nan", "scl_slope NaN (no scaling)", _nii_unscaled(np.nan), "OK", "OK"),
    Case("nii_scl_slope_zero", "scl_slope 0 (no scaling, NIfTI standard)", _nii_unscaled(0.0), "OK", "OK"),
    Case("nii_scl_slope_scaled", "int16 with scl_slope 2 / scl_inter -7", _nii_scaled, "OK", "OK"),
    Case("nii_scl_slope_huge", "scl_slope 1e20", _nii_patched("scl_slope", 1e20), "INTENSITY_RANGE",
         "INTENSITY_RANGE", "img.nii"),
]

CASE_IDS = [c.name for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)
