"""DICOM input: discovery (headers only), series selection by rules, exact-geometry reading, a MONAI reader.

Classic single-frame series and enhanced multi-frame images (one file per series; see
:mod:`medseg.data.dicom.multiframe`) are read alike, with the same geometry checks.

Typical use::

    from medseg.data.dicom import read_dicom, SeriesRule
    volume, affine, meta = read_dicom("study/", rule=SeriesRule(modality="CT", min_slices=20))

``DicomSeriesReader`` (MONAI ``ImageReader``) is imported lazily so that this package does not pull in MONAI/torch.
"""

from __future__ import annotations

from typing import Any

from medseg.data.dicom.geometry import StackGeometry, analyse_stack, axis_codes
from medseg.data.dicom.header import read_image_headers, read_slice_header
from medseg.data.dicom.reader import load_dicom_series, read_dicom, series_meta
from medseg.data.dicom.records import SkippedFile, SliceHeader
from medseg.data.dicom.scan import scan_dicom_files, scan_dicom_tree
from medseg.data.dicom.select import SeriesRule, select_series
from medseg.data.dicom.series import DicomScan, SeriesInfo

__all__ = [
    "DicomScan",
    "DicomSeriesReader",
    "SeriesInfo",
    "SeriesRule",
    "SkippedFile",
    "SliceHeader",
    "StackGeometry",
    "analyse_stack",
    "axis_codes",
    "load_dicom_series",
    "read_dicom",
    "read_image_headers",
    "read_slice_header",
    "scan_dicom_files",
    "scan_dicom_tree",
    "select_series",
    "series_meta",
]


def __getattr__(name: str) -> Any:
    if name == "DicomSeriesReader":
        from medseg.data.dicom.monai_reader import DicomSeriesReader

        return DicomSeriesReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
