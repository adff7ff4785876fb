"""Datalists: the training cases (named channel files plus a label) from a folder layout, a CSV or a JSON file.

Layouts (relative paths are relative to the list's folder):

* folder: ``root/<case>/<channel>.nii.gz ... <label>.nii.gz`` (any readable volume suffix, or a DICOM folder named
  after the channel);
* CSV: a header ``case_id,<channel>,...,<label>``, one row per case;
* JSON: ``{"cases": [{"case_id", "channels": {name: path}, "label": path}]}`` (the layout of
  :func:`medseg.synthetic.dataset.write_perfusion_dataset`) or a bare list of such cases.

CSV and JSON lists may give each case a role: a ``split`` column / key with ``train`` or ``val`` (see
:func:`medseg.training.split.choose_split`; an nnU-Net splits file is the other way).

:func:`validate_datalist` loads every case and reports *all* problems at once: missing files, channels or labels
on another grid, undeclared label values; each message names the files involved.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.io import is_volume_file, volume_stem
from medseg.errors import ConfigError, InputError, MedsegError, Problem, ReasonCode

logger = logging.getLogger(__name__)

_MAX_LISTED = 30


@dataclass(frozen=True)
class CaseEntry:
    """One training case: channel name -> file (or DICOM folder), and the label file."""

    case_id: str
    channels: dict[str, Path]
    label: Path | None
    split: str | None = None  # "train" or "val" when the datalist gives roles

    def as_item(self) -> dict[str, Any]:
        """The dictionary handed to the transform chain (paths as text)."""
        return {
            "case_id": self.case_id,
            "channels": {k: str(v) for k, v in self.channels.items()},
            "label": None if self.label is None else str(self.label),
        }


@dataclass
class CaseInfo:
    """Geometry and label statistics of one validated case (no identifiers beyond the case id)."""

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    label_voxels: dict[int, int] = field(default_factory=dict)


class DatalistError(MedsegError):
    """A datalist has problems; ``problems`` lists every one (code, file, detail)."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [
            f"[{p.code.value}] {p.path + ': ' if p.path else ''}{p.detail}"
            for p in self.problems[:_MAX_LISTED]
        ]
        more = len(self.problems) - _MAX_LISTED
        if more > 0:
            lines.append(f"... and {more} more")
        super().__init__(
            f"{source}: {len(self.problems)} problem(s) in the datalist:\n  " + "\n  ".join(lines)
        )


def _resolve(base: Path, value: str | os.PathLike) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _role(value: Any, case_id: str, path: Path) -> str | None:
    """The ``split`` of one case: ``train``, ``val`` or None (empty); anything else is refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    role = str(value).strip().lower()
    if role not in ("train", "val"):
        raise ConfigError(f"{path}: case {case_id}: split must be 'train' or 'val', got {value!r}")
    return role


def _from_folder(root: Path, channels: Sequence[str], label: str) -> list[CaseEntry]:
    entries = []
    for case in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files: dict[str, Path] = {}
        for item in case.iterdir():
            stem = item.name if item.is_dir() else volume_stem(item.name) if is_volume_file(item) else None
            if stem is not None:
                files[stem] = item
        # a channel or label without a file keeps its expected name, so validation reports it as missing
        found = {n: files.get(n, case / f"{n}.nii.gz") for n in channels}
        entries.append(CaseEntry(case.name, found, files.get(label, case / f"{label}.nii.gz")))
    if not entries:
        raise ConfigError(f"{root}: no case folders found (expected root/<case>/<channel>.nii.gz ...)")
    return entries


def _from_csv(path: Path, channels: Sequence[str], label: str) -> list[CaseEntry]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ["case_id", *channels] if c not in header]
        if missing:
            raise ConfigError(f"{path}: CSV columns {missing} missing; the header has {header}")
        rows = list(reader)
    base = path.parent
    return [
        CaseEntry(
            row["case_id"],
            {c: _resolve(base, row[c]) for c in channels},
            _resolve(base, row[label]) if row.get(label) else None,
            _role(row.get("split"), row["case_id"], path),
        )
        for row in rows
    ]


def _from_json(path: Path, channels: Sequence[str], label: str) -> list[CaseEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON datalist ({exc})") from exc
    cases = data.get("cases") if isinstance(data, Mapping) else data
    if not isinstance(cases, list):
        raise ConfigError(f"{path}: expected a list of cases or {{'cases': [...]}}")
    base = path.parent
    entries = []
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping) or not isinstance(case.get("channels"), Mapping):
            raise ConfigError(f"{path}: case {i} must be a mapping with a 'channels' mapping")
        ch = case["channels"]
        found = {n: _resolve(base, ch[n]) for n in channels if n in ch}
        lab = case.get(label)
        case_id = str(case.get("case_id", f"case_{i:03d}"))
        entries.append(
            CaseEntry(case_id, found, _resolve(base, lab) if lab else None, _role(case.get("split"), case_id, path))
        )
    return entries


def load_datalist(
    path: str | os.PathLike, channels: Sequence[str], *, label: str = "label", fmt: str = "auto"
) -> list[CaseEntry]:
    """Read the cases of a folder layout, CSV or JSON datalist (see the module docstring); files are not checked.

    Raises:
        ConfigError: the list itself cannot be read (no such path, bad CSV header, malformed JSON).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"datalist.path: {path} does not exist")
    if fmt == "auto":
        if path.is_dir():
            fmt = "json" if (path / "dataset.json").is_file() else "folder"
        else:
            fmt = {".csv": "csv", ".json": "json"}.get(path.suffix.lower(), "")
            if not fmt:
                raise ConfigError(
                    f"datalist.path: {path}: cannot tell the format; use a folder, .csv or .json"
                )
    if fmt == "json" and path.is_dir():
        path = path / "dataset.json"
    readers = {"folder": _from_folder, "csv": _from_csv, "json": _from_json}
    if fmt not in readers:
        raise ConfigError(f"datalist.format: {fmt!r} is not one of auto, {', '.join(readers)}")
    if (fmt == "folder") != path.is_dir():
        raise ConfigError(f"datalist.path: {path} does not fit format {fmt!r}")
    entries = readers[fmt](path, list(channels), label)
    ids = [e.case_id for e in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate case ids {dupes[:10]}")
    logger.info("datalist %s: %d case(s) (%s)", path, len(entries), fmt)
    return entries


def load_case(data: Any, sources: Mapping[str, Any], label: Any = None) -> tuple[Any, Any]:
    """``(image, label)`` of one case: the channels of ``data`` (a :class:`medseg.config.DataConfig`) assembled from
    ``sources`` (channel name -> file), and the label checked against the image's grid (None when not given)."""
    from medseg.data.channels import assemble_channels, load_label

    image = assemble_channels(
        sources,
        data.channels,
        resample=data.resample_channels,
        tol_mm=data.geometry_tolerance_mm,
        spatial_dims=data.file_dims,
    )
    if label is None:
        return image, None
    reference = sources[data.channel_names[0]]
    return image, load_label(label, image, data.labels, reference_path=reference, tol_mm=data.geometry_tolerance_mm)


def _case_problems(entry: CaseEntry, data: Any, info: list[CaseInfo]) -> list[Problem]:
    """Load one case the way training does; return its problems (empty when it is usable)."""
    names = data.channel_names
    missing = [n for n in names if n not in entry.channels]
    if missing:
        return [
            Problem(
                ReasonCode.MISSING_CHANNEL,
                entry.label,
                f"case {entry.case_id}: no file given for channel(s) {missing} (label {entry.label})",
            )
        ]
    problems = []
    reference = entry.channels[names[0]]
    for name in names:
        f = entry.channels[name]
        if not f.exists():
            problems.append(
                Problem(
                    ReasonCode.FILE_NOT_FOUND,
                    f,
                    f"case {entry.case_id}: channel {name!r} file "
                    f"not found (the case's label: {entry.label}; first channel: {reference})",
                )
            )
    if entry.label is None or not entry.label.exists():
        problems.append(
            Problem(
                ReasonCode.FILE_NOT_FOUND,
                entry.label,
                f"case {entry.case_id}: label file not found (image: {reference})",
            )
        )
    if problems:
        return problems
    try:
        image, label = load_case(data, entry.channels, entry.label)
    except InputError as exc:
        return [Problem(exc.code, exc.path, f"case {entry.case_id}: {exc.detail}")]
    spacing = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:-1, :-1], axis=0)
    values, counts = np.unique(label.numpy(), return_counts=True)
    info.append(
        CaseInfo(
            entry.case_id,
            tuple(image.shape[1:]),
            tuple(float(s) for s in spacing),
            {int(v): int(c) for v, c in zip(values, counts, strict=True)},
        )
    )
    return []


def validate_datalist(entries: Sequence[CaseEntry], data: Any, source: str = "datalist") -> list[CaseInfo]:
    """Check every case against the data contract ``data`` (a :class:`medseg.config.DataConfig`).

    Returns one :class:`CaseInfo` per case. Raises :class:`DatalistError` listing every problem found.
    """
    if not entries:
        raise DatalistError(source, [Problem(ReasonCode.FILE_NOT_FOUND, None, "the datalist has no cases")])
    problems: list[Problem] = []
    info: list[CaseInfo] = []
    for entry in entries:
        problems.extend(_case_problems(entry, data, info))
    if problems:
        raise DatalistError(source, problems)
    return info
