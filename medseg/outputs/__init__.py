"""Segmentation outputs: label NIfTI, DICOM SEG, per-case report (JSON/CSV) and QC picture.

The batch runner and the ``segment`` command call :func:`write_case_outputs`; the pieces are importable on
their own (:mod:`medseg.outputs.dicom_seg`, :mod:`~medseg.outputs.report`, :mod:`~medseg.outputs.qc`).
"""

from __future__ import annotations

from medseg.outputs.dicom_seg import NoSegmentsError, SegMetadata, write_dicom_seg
from medseg.outputs.qc import label_color, render_qc, write_qc_png
from medseg.outputs.report import (
    build_report,
    collect_reports,
    config_hash,
    file_sha256,
    label_volumes,
    model_provenance,
    uid_hash,
    write_report,
)
from medseg.outputs.writer import FORMATS, OUTPUT_NAMES, REPORT_CSV_NAME, write_case_outputs

__all__ = [
    "FORMATS",
    "OUTPUT_NAMES",
    "REPORT_CSV_NAME",
    "NoSegmentsError",
    "SegMetadata",
    "build_report",
    "collect_reports",
    "config_hash",
    "file_sha256",
    "label_color",
    "label_volumes",
    "model_provenance",
    "render_qc",
    "uid_hash",
    "write_case_outputs",
    "write_dicom_seg",
    "write_qc_png",
    "write_report",
]
