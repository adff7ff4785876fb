"""The source series of a DICOM SEG: its headers read in medseg's slice order, with the Patient and Study
attributes a SEG copies made present.

:func:`load_source_datasets` reads the headers (no pixel data) of a series folder the way
:func:`medseg.data.dicom.read_dicom` scans it, or takes a list of files / datasets already in that order, each file
once. Patient-module fixes: a SEG copies Type 2 attributes of the Patient and General Study modules from its
source; scanners and anonymizers often drop them, so missing ones are added empty (in memory), as the standard
allows, instead of the case failing on every run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from medseg.data.dicom.preamble import looks_like_dicom

__all__ = ["load_source_datasets"]


def _unique(items: Sequence[Any]) -> list[Any]:
    """Items once each, in order: a multi-frame series lists its file once per slice."""
    seen: dict[Any, Any] = {}
    for item in items:
        key = ("dataset", id(item)) if isinstance(item, Dataset) else ("path", str(Path(item).absolute()))
        seen.setdefault(key, item)
    return list(seen.values())


def load_source_datasets(source: str | os.PathLike | Sequence[str | os.PathLike | Dataset]) -> list[Dataset]:
    """Headers (no pixel data) of the source series in medseg's slice order, each file once.

    A folder must hold exactly one image series; it is scanned like :func:`medseg.data.dicom.read_dicom` does,
    so the order is the reader's. A list (paths or datasets) must already be in that order (checked by
    :func:`medseg.outputs.dicom_seg.write_dicom_seg`). A multi-frame source is one file (a list repeating it, like
    ``SeriesInfo.files`` of a multi-frame series, gives it once); its frames are matched to the label's slices by
    their geometry.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"{folder}: DICOM source must be a series folder or a list of slice files")
        from medseg.data.dicom import scan_dicom_tree

        scan = scan_dicom_tree(folder)
        if len(scan.series) != 1:
            raise ValueError(
                f"{folder}: DICOM source folder must hold exactly one image series, found {len(scan.series)}; "
                "pass the series' files instead"
            )
        series = scan.series[0]
        if series.problems:
            raise series.problems[0].to_error()
        items: Sequence[Any] = series.source_files
    else:
        items = list(source)
    if not items:
        raise ValueError("no DICOM source files given")
    return [
        _with_type2_attributes(item if isinstance(item, Dataset) else _read_header(Path(item)))
        for item in _unique(items)
    ]


def _read_header(path: Path) -> Dataset:
    """A source slice's header; files without the Part 10 preamble are read as the scan read them (forced only when
    they start like a DICOM data set, :func:`medseg.data.dicom.preamble.looks_like_dicom`)."""
    return pydicom.dcmread(path, stop_before_pixels=True, force=looks_like_dicom(path))


# Type 2 attributes of the Patient and General Study modules that a SEG copies from its source: they must be
# present (maybe empty). Scanners and anonymizers often drop them; a SEG then gets them empty, as the standard
# allows, instead of the case failing on every run.
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip

# highdicom warns about single-component person names with the name in the text: patient data on stderr.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")


def _with_type2_attributes(ds: Dataset) -> Dataset:
    """``ds`` with every attribute of :data:`_TYPE2_COPIED` present (missing ones added empty, in memory)."""
    for keyword in _TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds
