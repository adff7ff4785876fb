"""All outputs of one segmented case, written into one folder with fixed names.

==========  ================  ==============================================================================
format      file              content
==========  ================  ==============================================================================
nifti       label.nii.gz      the label map in exactly the input's geometry (shape and affine of ``image``)
seg         seg.dcm           DICOM SEG referencing the source series (only when source DICOM files are given)
qc          qc.png            three orthogonal slices with the label overlaid (CT: soft-tissue window)
            thumb.png         a small one through the largest object, for the batch run's review page
report      report.json       volumes and objects (components, border contact) per label, provenance, input
                              description, timing, written outputs
            report.csv        the same as one CSV row
==========  ================  ==============================================================================

Every file goes through a temp file, fsync and rename (:mod:`medseg.atomic`). ``report.json`` is written last
and lists the SHA-256 of every other output, so its presence means the case's outputs are complete; a report
left by an earlier run is deleted before anything else is written.

No SEG is written, and the report says why in ``notes``, when the input was not DICOM or when the label map
has no foreground (a SEG needs at least one segment; see :mod:`medseg.outputs.dicom_seg`). A ``seg.dcm`` left
in the folder by an earlier run is then removed, so the folder always matches its report.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg._version import __version__
from medseg.outputs.report import label_counts
from medseg.plain import as_numpy

logger = logging.getLogger(__name__)

__all__ = ["CT_WINDOW", "FORMATS", "OUTPUT_NAMES", "REPORT_CSV_NAME", "THUMB_NAME", "write_case_outputs"]

FORMATS = ("nifti", "seg", "report", "qc")
OUTPUT_NAMES = {"nifti": "label.nii.gz", "seg": "seg.dcm", "report": "report.json", "qc": "qc.png"}
REPORT_CSV_NAME = "report.csv"
THUMB_NAME = "thumb.png"
THUMB_PANEL_PX = 96
CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (W400 / L40) for CT QC pictures
_AFFINE_TOL = 1e-3


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; valid formats: {list(FORMATS)}")
    return [f for f in FORMATS if f in formats]


def _check_label(image: Any, label: Any, labels: Mapping[int, str]) -> np.ndarray:
    arr = as_numpy(label)
    spatial = tuple(int(s) for s in image.shape[1:])
    if arr.ndim != len(spatial) + 1 or arr.shape[0] != 1 or tuple(arr.shape[1:]) != spatial:
        raise ValueError(
            f"label must have shape (1, *{spatial}) like the image's grid, got {tuple(arr.shape)}"
        )
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise ValueError("label map holds non-integer values")
    label_affine = getattr(label, "affine", None)
    if label_affine is not None:
        diff = float(np.max(np.abs(as_numpy(label_affine) - as_numpy(image.affine))))
        if diff > _AFFINE_TOL:
            raise ValueError(
                f"label affine differs from the image's by {diff:.4g} mm; outputs need the input grid"
            )
    unknown = sorted(set(label_counts(arr)) - {int(k) for k in labels})
    if unknown:
        raise ValueError(f"label map holds values {unknown} that are not model labels {sorted(labels)}")
    return arr[0]


def _timed(timing: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    timing[key] = round(time.perf_counter() - start, 6)
    return result


def _seg_metadata(provenance: Mapping[str, Any], created: _dt.datetime | None) -> Any:
    from medseg.outputs.dicom_seg import SegMetadata

    name = str(provenance.get("model_name") or "medseg")
    version = (
        provenance.get("model_version") or str(provenance.get("weights_sha256") or "")[:16] or __version__
    )
    return SegMetadata(
        algorithm_name=name[:64],
        algorithm_version=str(version)[:64],
        series_description=f"medseg {name}"[:64],
        created=created,
    )


def write_case_outputs(
    out_dir: str | os.PathLike,
    *,
    image: Any,
    label: Any,
    spec: Any,
    provenance: Mapping[str, Any],
    source_dicom_files: Sequence[str | os.PathLike] | None = None,
    formats: Sequence[str] = FORMATS,
    timing: Mapping[str, float] | None = None,
    uid_key: bytes | None = None,
    created: _dt.datetime | None = None,
) -> dict[str, Path]:
    """Write the outputs of one case into ``out_dir`` (created if missing).

    Args:
        out_dir: the case's output folder (its name should come from a keyed hash, never from patient data).
        image: the input MetaTensor ``(C, *spatial)`` as the predictor received it.
        label: the predicted label MetaTensor ``(1, *spatial)`` on exactly ``image``'s grid.
        spec: the model's :class:`medseg.checkpoint.ModelSpec` (labels, channel names, config).
        provenance: model provenance (:func:`medseg.outputs.report.model_provenance`) plus any case fields
            (e.g. ``case_id``); copied into the report, so it must hold no patient identifiers.
        source_dicom_files: the source series' files in medseg's slice order (``SeriesInfo.files``); the SEG is
            written only when they are given. For a multimodal case, the series the label's grid comes from.
        formats: any of ``("nifti", "seg", "report", "qc")``.
        timing: seconds spent before writing (read, preprocess, infer, ...), recorded in the report.
        uid_key: key of the HMAC hashing the DICOM UIDs in the report (plain SHA-256 without one).
        created: creation time stamped into the SEG and the report; a fixed value makes ``seg.dcm``
            byte-reproducible (the report still holds run-specific timing).

    Returns:
        ``{format: path}`` of the files written (``"report_csv"`` too with ``"report"``, ``"thumb"`` with ``"qc"``).

    Raises:
        ValueError: unknown format names (the message lists the valid ones), or a label that is not on the
            image's grid or holds values the model does not declare.
    """
    from medseg.data.io import save_label
    from medseg.outputs.dicom_seg import NoSegmentsError, write_dicom_seg
    from medseg.outputs.objects import label_objects
    from medseg.outputs.qc import write_qc_png
    from medseg.outputs.report import build_report, file_sha256, write_report

    wanted = _check_formats(formats)
    labels = {int(k): str(v) for k, v in spec.labels.items()}
    spatial_label = _check_label(image, label, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "report" in wanted:  # the report is the completion mark: never leave an earlier one beside new files
        (out / OUTPUT_NAMES["report"]).unlink(missing_ok=True)
        (out / REPORT_CSV_NAME).unlink(missing_ok=True)
    times: dict[str, float] = {str(k): float(v) for k, v in (timing or {}).items()}
    written: dict[str, Path] = {}
    notes: list[str] = []
    objects = None
    if "qc" in wanted or "report" in wanted:
        objects = _timed(times, "objects_s", lambda: label_objects(spatial_label, labels))

    if "nifti" in wanted:
        written["nifti"] = _timed(
            times, "write_nifti_s", lambda: save_label(label, out / OUTPUT_NAMES["nifti"], reference=image)
        )
    if "seg" in wanted:
        seg_path = out / OUTPUT_NAMES["seg"]
        if not source_dicom_files:
            notes.append("no DICOM SEG: the input was not a DICOM series")
        else:
            affine = image.affine if spatial_label.ndim == 3 else None  # a 2D affine cannot be checked in 3D
            try:
                written["seg"] = _timed(
                    times,
                    "write_seg_s",
                    lambda: write_dicom_seg(
                        spatial_label,
                        list(source_dicom_files),
                        labels,
                        seg_path,
                        metadata=_seg_metadata(provenance, created),
                        affine=affine,
                    ),
                )
            except NoSegmentsError:
                notes.append(
                    "no DICOM SEG: the label map has no foreground (a SEG needs at least one segment)"
                )
        if "seg" not in written:
            seg_path.unlink(
                missing_ok=True
            )  # a stale SEG from an earlier run would contradict this run's report
    if "qc" in wanted:
        modality = (getattr(image, "meta", {}) or {}).get("modality")
        window = CT_WINDOW if modality == "CT" else None
        written["qc"] = _timed(
            times,
            "write_qc_s",
            lambda: write_qc_png(image, label, out / OUTPUT_NAMES["qc"], labels=labels, window=window),
        )
        written["thumb"] = write_qc_png(
            image,
            label,
            out / THUMB_NAME,
            labels=labels,
            window=window,
            panel_px=THUMB_PANEL_PX,
            focus=objects.largest if objects is not None else None,
        )
    if "report" in wanted:
        outputs = {fmt: {"file": path.name, "sha256": file_sha256(path)} for fmt, path in written.items()}
        report = build_report(
            image=image,
            label=label,
            spec=spec,
            provenance=provenance,
            timing=times,
            outputs=outputs,
            notes=notes,
            uid_key=uid_key,
            created=created,
            objects=objects.stats if objects is not None else None,
        )
        json_path, csv_path = write_report(report, out / OUTPUT_NAMES["report"], out / REPORT_CSV_NAME)
        written["report"], written["report_csv"] = json_path, csv_path
    for note in notes:
        logger.info("%s: %s", out.name, note)
    logger.info("%s: wrote %s", out.name, ", ".join(sorted(written)))
    return written
