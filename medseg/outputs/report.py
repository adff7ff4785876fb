"""Per-case report: label volumes, model provenance and a description of the input without patient identifiers.

A report is a JSON-ready dict (``format`` ``"medseg-case-report"``, ``format_version`` 1)::

    {"created": ISO time (UTC), "case_id": from provenance or None,
     "provenance": {"model_name", "model_version", "source_uri", "weights_sha256", "config_hash",
                    "medseg_version", "network", ...whatever the caller adds},
     "input": {"shape", "spacing_mm", "orientation", "spatial_dims", "channels", "modality",
               "series_uid_hash", "study_uid_hash", "frame_of_reference_uid_hash"},
     "labels": {name: {"value", "voxels", "volume_ml"}}      # 3D; 2D gives "area_mm2" instead of "volume_ml"
     "objects": {name: {"value", "components", "largest_voxels", "touches_border"}}  # when given (outputs.objects)
     "timing": {name: seconds}, "outputs": {format: {"file", "sha256"}}, "notes": [...]}

Volumes: voxel count x voxel volume, the voxel volume being ``|det(affine[:3, :3])|`` mm^3 (exact for oblique
and sheared grids too); 1 mL = 1000 mm^3.

Privacy: the input description is built from a fixed list of fields: no patient name, ID, birth date,
accession number, file or folder names. DICOM UIDs appear only as hashes: HMAC-SHA256 with ``uid_key`` when
one is given (the batch run's key), else plain SHA-256. ``provenance`` is copied as given: the caller must not
put identifiers in it.

Hashes: ``weights_sha256`` is the SHA-256 of the checkpoint file; ``config_hash`` the SHA-256 of the canonical
JSON (sorted keys, no whitespace, UTF-8) of the model spec's training config.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import hmac
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.atomic import atomic_write_text
from medseg.hashing import file_sha256
from medseg.plain import as_numpy, to_plain

logger = logging.getLogger(__name__)

__all__ = [
    "REPORT_FORMAT",
    "build_report",
    "canonical_json",
    "collect_reports",
    "config_hash",
    "describe_input",
    "file_sha256",
    "label_counts",
    "label_volumes",
    "model_provenance",
    "report_row",
    "uid_hash",
    "write_report",
]

REPORT_FORMAT = "medseg-case-report"
REPORT_VERSION = 1
_COUNT_CHUNK = 1 << 22
_UID_FIELDS = {
    "series_uid": "series_uid_hash",
    "study_uid": "study_uid_hash",
    "frame_of_reference_uid": "frame_of_reference_uid_hash",
}


# ------------------------------------------------------------------------------------------------ hashes




def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace (tuples as lists, numpy scalars as numbers, paths as text)."""
    return json.dumps(to_plain(value, text_keys=True), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json` of a configuration."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def uid_hash(uid: str, key: bytes | None = None) -> str:
    """Hex HMAC-SHA256 of a UID with ``key``, or its plain SHA-256 without one."""
    data = str(uid).encode("ascii", errors="replace")
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ sections


def _model_from_uri(uri: str) -> tuple[str | None, str | None]:
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, f"@{alias}"
        name, _, version = rest.partition("/")
        return name, version or None
    if uri.startswith("runs:/"):
        return uri, None
    return Path(uri).stem, None


def model_provenance(
    spec: Any,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    source_uri: str | None = None,
    model_name: str | None = None,
    model_version: str | int | None = None,
) -> dict[str, Any]:
    """Provenance of a model, computed once per run (hashing the checkpoint reads the whole file).

    Args:
        spec: the model's :class:`medseg.checkpoint.ModelSpec`.
        checkpoint_path: the checkpoint file whose SHA-256 is recorded.
        source_uri: how the model was named (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, a path).
        model_name, model_version: override what is parsed from ``source_uri``.
    """
    parsed_name, parsed_version = _model_from_uri(source_uri) if source_uri else (None, None)
    if parsed_name is None and checkpoint_path is not None:
        parsed_name = Path(checkpoint_path).stem
    return {
        "model_name": model_name if model_name is not None else parsed_name,
        "model_version": str(model_version) if model_version is not None else parsed_version,
        "source_uri": source_uri,
        "weights_sha256": file_sha256(checkpoint_path) if checkpoint_path is not None else None,
        "config_hash": config_hash(spec.config),
        "model_medseg_version": getattr(spec, "medseg_version", None),
        "network": dict(spec.network).get("name"),
        "labels": {str(k): v for k, v in spec.labels.items()},
    }


def label_counts(label: Any) -> dict[int, int]:
    """Voxel count of every non-zero value of a label map.

    Small non-negative integer labels (the usual case) are counted with ``np.bincount`` over chunks of 4M voxels:
    one pass, no sort, bounded extra memory.
    """
    arr = as_numpy(label)
    if arr.size == 0:
        return {}
    lo, hi = int(arr.min()), int(arr.max())
    if arr.dtype.kind in "iub" and lo >= 0 and hi < 1 << 16:
        flat = arr.reshape(-1)
        if flat.dtype.kind == "b":
            flat = flat.view(np.uint8)
        total = np.zeros(hi + 1, dtype=np.int64)
        for start in range(0, flat.size, _COUNT_CHUNK):
            total += np.bincount(flat[start : start + _COUNT_CHUNK], minlength=hi + 1)
        return {int(v): int(total[v]) for v in np.flatnonzero(total) if v != 0}
    values, counts = np.unique(arr, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def label_volumes(label: Any, affine: Any, labels: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    """Per declared non-zero label: voxel count and volume in mL (3D) or area in mm^2 (2D).

    Raises:
        ValueError: the label map holds values that are not declared in ``labels``.
    """
    arr = as_numpy(label)
    aff = as_numpy(affine).astype(np.float64)
    ndim = aff.shape[0] - 1
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:  # channel-first
        arr = arr[0]
    if aff.shape not in ((3, 3), (4, 4)) or arr.ndim != ndim:
        raise ValueError(
            f"label map of shape {arr.shape} does not fit affine of shape {aff.shape} (3x3 for 2D, 4x4 for 3D)"
        )
    unit = abs(float(np.linalg.det(aff[:ndim, :ndim])))
    found = label_counts(arr)
    declared = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    unknown = sorted(set(found) - set(declared))
    if unknown:
        raise ValueError(f"label map holds values {unknown} that are not declared labels {sorted(declared)}")
    out: dict[str, dict[str, Any]] = {}
    names = list(declared.values())
    for value, name in sorted(declared.items()):
        if names.count(name) > 1:  # two values with one name: keep both entries
            name = f"{name}_{value}"
        n = found.get(value, 0)
        entry: dict[str, Any] = {"value": value, "voxels": n}
        if ndim == 3:
            entry["volume_ml"] = n * unit / 1000.0
        else:
            entry["area_mm2"] = n * unit
        out[name] = entry
    return out


def describe_input(
    image: Any, *, uid_key: bytes | None = None, channels: Iterable[str] | None = None
) -> dict:
    """Shape, spacing, orientation, modality and hashed UIDs of an input image (no patient identifiers)."""
    import nibabel.orientations as nio

    arr_shape = tuple(int(s) for s in image.shape[1:])
    aff = as_numpy(image.affine).astype(np.float64)
    ndim = len(arr_shape)
    spacing = [float(v) for v in np.linalg.norm(aff[:ndim, :ndim], axis=0)]
    if ndim == 3:
        orientation = "".join(str(c) for c in nio.aff2axcodes(aff))
    else:
        orientation = "".join(str(c) for c in nio.aff2axcodes(aff, labels=(("L", "R"), ("P", "A"))))
    meta = getattr(image, "meta", {}) or {}
    out: dict[str, Any] = {
        "shape": list(arr_shape),
        "spacing_mm": spacing,
        "orientation": orientation,
        "spatial_dims": ndim,
        "channels": list(channels) if channels is not None else meta.get("channel_names"),
        "modality": meta.get("modality") or None,
    }
    for src, dst in _UID_FIELDS.items():
        value = meta.get(src)
        out[dst] = uid_hash(str(value), uid_key) if value else None
    return out


def build_report(
    *,
    image: Any,
    label: Any,
    spec: Any,
    provenance: Mapping[str, Any],
    timing: Mapping[str, float] | None = None,
    outputs: Mapping[str, Any] | None = None,
    notes: Iterable[str] = (),
    uid_key: bytes | None = None,
    created: _dt.datetime | None = None,
    objects: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report of one case (see the module docstring for the layout).

    ``objects`` (:func:`medseg.outputs.objects.label_objects` statistics) is recorded when given.

    ``created`` is the report's time stamp (default: now, UTC). Timing values differ between runs, so a report is
    not byte-reproducible even with a fixed ``created``.
    """
    from medseg._version import __version__

    prov = {"medseg_version": __version__, "config_hash": config_hash(spec.config), **dict(provenance)}
    prov.setdefault("labels", {str(k): v for k, v in spec.labels.items()})
    report = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "created": (created or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds"),
        "case_id": prov.get("case_id"),
        "provenance": to_plain(prov, text_keys=True),
        "input": describe_input(image, uid_key=uid_key, channels=spec.channel_names),
        "labels": label_volumes(label, image.affine, spec.labels),
        "timing": {str(k): float(v) for k, v in (timing or {}).items()},
        "outputs": to_plain(dict(outputs or {}), text_keys=True),
        "notes": list(notes),
    }
    if objects is not None:
        report["objects"] = to_plain(dict(objects), text_keys=True)
    return report


# ------------------------------------------------------------------------------------------------ files


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def report_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """One flat CSV row of a report: identity, provenance, input, volumes, timing and written outputs."""
    row: dict[str, Any] = {"case_id": report.get("case_id"), "created": report.get("created")}
    for key, value in (report.get("provenance") or {}).items():
        if key != "labels":
            row[f"provenance.{key}"] = value
    for key, value in (report.get("input") or {}).items():
        row[f"input.{key}"] = value
    for name, entry in (report.get("labels") or {}).items():
        if "volume_ml" in entry:
            row[f"volume_ml.{name}"] = entry["volume_ml"]
        if "area_mm2" in entry:
            row[f"area_mm2.{name}"] = entry["area_mm2"]
        row[f"voxels.{name}"] = entry.get("voxels")
    for key, value in (report.get("timing") or {}).items():
        row[f"timing.{key}"] = value
    row["outputs"] = sorted(report.get("outputs") or {})
    row["notes"] = list(report.get("notes") or [])
    return {k: _cell(v) for k, v in row.items()}


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(
    report: Mapping[str, Any], json_path: str | os.PathLike, csv_path: str | os.PathLike | None = None
) -> list[Path]:
    """Write the report as indented JSON and, when ``csv_path`` is given, as a one-row CSV; both atomically."""
    written = [atomic_write_text(json_path, json.dumps(to_plain(report, text_keys=True), indent=2, allow_nan=True) + "\n")]
    if csv_path is not None:
        written.append(atomic_write_text(csv_path, _csv_text([report_row(report)])))
    return written


def collect_reports(folder: str | os.PathLike, out_csv: str | os.PathLike | None = None) -> Path:
    """Gather every ``report.json`` under ``folder`` into one CSV (default ``folder/reports.csv``).

    Rows are in path order with a leading ``report`` column (the report's folder relative to ``folder``, i.e.
    the case's output name); columns are the union over all reports. Unreadable reports are skipped with a
    warning.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    rows = []
    for path in sorted(root.rglob("report.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("skipping unreadable report %s: %s", path.relative_to(root), exc)
            continue
        if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
            logger.warning("skipping %s: not a medseg case report", path.relative_to(root))
            continue
        rows.append({"report": str(path.parent.relative_to(root)), **report_row(report)})
    target = Path(out_csv) if out_csv is not None else root / "reports.csv"
    atomic_write_text(target, _csv_text(rows) if rows else "report\n")
    logger.info("collected %d report(s) into %s", len(rows), target.name)
    return target
