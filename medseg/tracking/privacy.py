"""Keep patient identifiers out of MLflow.

Everything logged to a tracking server (parameters, tags, metric names, JSON artifacts, model metadata) goes
through :func:`find_patient_identifiers`. It flags

- keys named like DICOM patient / visit attributes (``PatientName``, ``patient_id``, ``data.PatientBirthDate``,
  ``AccessionNumber``, ...), whatever the case or separators;
- values that look like identifiers: a DICOM person name (``DOE^JANE``), a patient-group tag number
  (``(0010,0020)``), a DICOM UID (``1.2.840.113619.2.55.3...``), or an identity attribute followed by a value
  (``"PatientID=123"``, a stringified header ``"{'PatientID': '123'}"``). A bare attribute name as a value
  (``group_by: PatientID``, naming a column) is allowed: it carries no identifier.

Findings name the key and the reason, never the value, so an error message cannot leak what it refuses.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.tracking.errors import PatientDataError

logger = logging.getLogger(__name__)

# Identity attributes: refused as keys and when mentioned inside values.
_IDENTITY_NAMES = (
    "patient_name",
    "patient_id",
    "patient_birth_date",
    "patient_birth_time",
    "patient_birth_name",
    "patient_mother_birth_name",
    "patient_address",
    "patient_telephone_numbers",
    "patient_telecom_information",
    "other_patient_ids",
    "other_patient_names",
    "other_patient_ids_sequence",
    "issuer_of_patient_id",
    "medical_record_locator",
    "accession_number",
)
# Further DICOM attributes describing the patient, the visit or the people involved: refused as keys.
_OTHER_NAMES = (
    "patient_age",
    "patient_sex",
    "patient_weight",
    "patient_size",
    "patient_comments",
    "patient_religious_preference",
    "additional_patient_history",
    "ethnic_group",
    "occupation",
    "military_rank",
    "country_of_residence",
    "region_of_residence",
    "insurance_plan_identification",
    "responsible_person",
    "referring_physician_name",
    "performing_physician_name",
    "requesting_physician",
    "operators_name",
    "institution_name",
    "institution_address",
    "study_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
)


def _name_pattern(snake: str) -> str:
    # "patient_birth_date" matches PatientBirthDate, patient_birth_date, patient-birth-date, "patient birth date".
    return r"[\s_.\-]?".join(re.escape(word) for word in snake.split("_"))


def _compile(names: tuple[str, ...], suffix: str = "") -> re.Pattern[str]:
    body = "|".join(_name_pattern(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9])(?:{body})(?![a-z0-9]){suffix}", re.IGNORECASE)


_KEY_RE = _compile(_IDENTITY_NAMES + _OTHER_NAMES)
_IDENTITY_RE = _compile(_IDENTITY_NAMES)
_ASSIGNED_RE = _compile(
    _IDENTITY_NAMES, r"['\"]?\s*[:=]"
)  # "PatientID: 123", "{'PatientID': ...}", "PatientID=1"
_PERSON_NAME_RE = re.compile(r"[^\W\d_]\^[^\W\d_]")  # DICOM PN: Family^Given
_PATIENT_TAG_RE = re.compile(r"\(\s*0010\s*,\s*[0-9a-f]{4}\s*\)", re.IGNORECASE)
_UID_RE = re.compile(r"(?<![\d.])[0-2](?:\.(?:0|[1-9]\d*)){5,}(?![\d.])")


def _split_camel(text: str) -> str:
    # Names are matched case-insensitively with word boundaries, so split "PatientName" into "Patient_Name".
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)


def _key_reason(key: str) -> str | None:
    if _KEY_RE.search(_split_camel(key)):
        return "key names a patient attribute"
    return None


def value_reason(text: str) -> str | None:
    """Why ``text`` looks like it carries a patient identifier, or ``None``."""
    if _PERSON_NAME_RE.search(text):
        return "value looks like a DICOM person name (Family^Given)"
    if _PATIENT_TAG_RE.search(text):
        return "value contains a DICOM patient tag number (0010,xxxx)"
    if _UID_RE.search(text):
        return "value looks like a DICOM UID"
    if _ASSIGNED_RE.search(_split_camel(text)):
        return "value assigns a patient identity attribute"
    return None


def _items(data: Any) -> list[tuple[str, Any]]:
    if isinstance(data, Mapping):
        return [(str(k), v) for k, v in data.items()]
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return [(f.name, getattr(data, f.name)) for f in dataclasses.fields(data)]
    if isinstance(data, list | tuple | set | frozenset):
        return [(str(i), v) for i, v in enumerate(data)]
    return []


def find_patient_identifiers(data: Any, prefix: str = "") -> list[str]:
    """Findings (``"key: reason"``) for every entry of nested ``data`` that looks like a patient identifier."""
    findings: list[str] = []
    entries = _items(data)
    if not entries and not prefix:
        entries = [("value", data)]
    for key, value in entries:
        where = f"{prefix}.{key}" if prefix else key
        reason = _key_reason(key)
        if reason:
            findings.append(f"{where}: {reason}")
            continue
        if _items(value):
            findings.extend(find_patient_identifiers(value, where))
        elif value is not None and not isinstance(value, bool | int | float):
            reason = value_reason(str(value))
            if reason:
                findings.append(f"{where}: {reason}")
    return findings


def check_no_patient_identifiers(data: Any, where: str = "parameters") -> None:
    """Raise :class:`PatientDataError` (naming keys, not values) if ``data`` looks like it holds identifiers."""
    findings = find_patient_identifiers(data)
    if findings:
        raise PatientDataError(where, findings)


def scrub_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of nested ``params`` without the entries :func:`find_patient_identifiers` flags.

    The removed keys (not their values) are logged as a warning.
    """
    removed: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, sub in value.items():
                sub_where = f"{where}.{key}" if where else str(key)
                if _key_reason(str(key)) or (
                    not _items(sub)
                    and sub is not None
                    and not isinstance(sub, bool | int | float)
                    and value_reason(str(sub))
                ):
                    removed.append(sub_where)
                    continue
                out[key] = clean(sub, sub_where)
            return out
        if isinstance(value, list | tuple):
            kept = []
            for i, sub in enumerate(value):
                if not _items(sub) and isinstance(sub, str) and value_reason(sub):
                    removed.append(f"{where}.{i}")
                    continue
                kept.append(clean(sub, f"{where}.{i}"))
            return type(value)(kept) if isinstance(value, tuple) else kept
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return clean({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, where)
        return value

    result = clean(dict(params), "")
    if removed:
        logger.warning(
            "removed %d entr%s that looked like patient identifiers: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(removed),
        )
    return result


_TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".txt", ".csv", ".tsv", ".log", ".md"}
MAX_SCANNED_TEXT_BYTES = 5 * 1024 * 1024


def check_text_file(path: Path) -> None:
    """Refuse a small text artifact (JSON, YAML, CSV, ...) that looks like it holds patient identifiers.

    Flags an identity attribute followed by a value (``"PatientID": ...``, ``PatientName: ...``), a CSV/TSV header
    column named like one, and DICOM patient tag numbers. Binary files (PNG, checkpoints) and text files over
    5 MB are not scanned.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _TEXT_SUFFIXES or path.stat().st_size > MAX_SCANNED_TEXT_BYTES:
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    findings = []
    if _ASSIGNED_RE.search(_split_camel(text)):
        findings.append(f"{path.name}: assigns a patient identity attribute")
    if suffix in (".csv", ".tsv"):
        header = text.split("\n", 1)[0]
        if any(
            _IDENTITY_RE.fullmatch(_split_camel(col.strip().strip('"')))
            for col in re.split(r"[,\t;]", header)
        ):
            findings.append(f"{path.name}: has a column named like a patient identity attribute")
    if _PATIENT_TAG_RE.search(text):
        findings.append(f"{path.name}: contains a DICOM patient tag number (0010,xxxx)")
    if findings:
        raise PatientDataError(f"artifact {path.name}", findings)
