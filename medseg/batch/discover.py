"""Discovery: an input (NIfTI file, DICOM series folder, study folder or tree of studies) -> work items.

What becomes one work item:

* single-channel models: every DICOM image stack found (:func:`medseg.data.dicom.scan_dicom_files`) is one
  ``series`` item; every loose volume file (NIfTI, NRRD, MetaImage) is one ``file`` item;
* multimodal models: every DICOM study (StudyInstanceUID) is one ``study`` item whose channels are chosen by the
  channel spec's series rules (:func:`medseg.data.dicom.select_series`, as in training);
* for any model: a folder holding files named ``<CHANNEL>.nii.gz`` (or ``.nii``) for the spec's channels is one
  ``case`` item (other volume files in it, e.g. ``label.nii.gz``, are not inputs).

Whatever cannot be used becomes a *quarantined* item carrying a :class:`~medseg.errors.Problem` (reason code,
offending path relative to the input root, detail): a series that the channel rule does not select
(WRONG_MODALITY, TOO_FEW_SLICES, NO_SERIES), a stack with integrity/geometry problems (TRUNCATED_PIXEL_DATA,
MISSING_SLICE, ...), a file that is not readable DICOM, a study or case folder missing a channel. Non-image DICOM
objects (DICOMDIR, structured reports, presentation states) are not work items; they are only counted.

Every item has a stable key (:mod:`medseg.batch.naming`): a keyed hash of its UIDs, or of its relative path when it
has none. The relative path is kept on the item for the user's quarantine list; it is never logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from medseg.batch.ledger import LEDGER_FILE
from medseg.batch.naming import keyed_name
from medseg.config.schema import ChannelConfig
from medseg.data.dicom import DicomScan, SeriesInfo, SeriesRule, scan_dicom_files, select_series
from medseg.data.io import is_volume_file, volume_stem
from medseg.errors import InputError, Problem, ReasonCode

logger = logging.getLogger(__name__)

__all__ = ["Discovery", "ItemKind", "WorkItem", "discover"]



class ItemKind(str, Enum):
    """What a work item is made of."""

    SERIES = "series"  # one DICOM stack (single-channel models)
    STUDY = "study"  # one DICOM study, channels chosen by series rules (multimodal models)
    FILE = "file"  # one volume file (single-channel models), or an unusable file
    CASE = "case"  # a folder of <CHANNEL>.nii.gz files


@dataclass(eq=False)
class WorkItem:
    """One unit of work of a batch run.

    Attributes:
        key: keyed hash naming the item in the ledger and its output folder.
        kind: see :class:`ItemKind`.
        relative_path: the item's location relative to the input root (POSIX); private: never logged.
        sources: channel name -> DICOM stack or volume file, in the spec's channel order (empty when quarantined).
        problem: set when the item is quarantined at discovery.
        uids: DICOM UIDs of the item (for provenance; empty for files).
    """

    key: str
    kind: ItemKind
    relative_path: str
    sources: dict[str, SeriesInfo | Path] = field(default_factory=dict)
    problem: Problem | None = None
    uids: dict[str, Any] = field(default_factory=dict)

    @property
    def quarantined(self) -> bool:
        return self.problem is not None

    @property
    def input_files(self) -> list[Path]:
        """Every file the item is read from (all channels), each once."""
        files: dict[Path, None] = {}
        for source in self.sources.values():
            for f in source.source_files if isinstance(source, SeriesInfo) else [source]:
                files[Path(f)] = None
        return list(files)

    def input_fingerprint(self) -> str | None:
        """SHA-256 over (relative name, size, modification time) of :attr:`input_files`, or None without sources.

        Taken at discovery and again before the item's outputs are published: a file that grew or was replaced
        (a series still being copied, a study re-exported) changes it. ``stat`` only, no content read, so an
        archive of thousands of studies is fingerprinted in seconds.
        """
        files = sorted(self.input_files, key=str)
        if not files:
            return None
        digest = hashlib.sha256()
        for f in files:
            try:
                st = f.stat()
                digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{f.name}\0missing\n".encode())
        return digest.hexdigest()

    @property
    def source_dicom_files(self) -> list[Path] | None:
        """The files of the first (reference) channel's DICOM series, for a DICOM SEG's references (in slice order;
        a multi-frame image once)."""
        first = next(iter(self.sources.values()), None)
        return first.source_files if isinstance(first, SeriesInfo) else None


@dataclass
class Discovery:
    """The work items found under ``root`` (sorted by key), and how many non-image DICOM files were passed over."""

    root: Path
    items: list[WorkItem]
    skipped_non_image: int = 0

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            name = "quarantined" if item.quarantined else item.kind.value
            out[name] = out.get(name, 0) + 1
        return out


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def _walk(root: Path, excluded: Sequence[Path]) -> dict[Path, list[Path]]:
    """Files under ``root`` grouped by folder, sorted.

    Skipped: hidden entries, the ``excluded`` folders, medseg output folders (they hold a run ledger: an earlier
    run's label maps are never input), symbolic links to files outside ``root`` and broken or looping links.
    Folder links are not followed (``os.walk`` default), so a link loop cannot trap the walk.
    """
    out: dict[Path, list[Path]] = {}
    skip = {p.resolve() for p in excluded}
    real_root = root.resolve()
    outside = outputs = 0
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        if LEDGER_FILE in names:
            outputs += 1
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip)
        files = []
        for f in (here / n for n in sorted(names) if not n.startswith(".")):
            if f.is_symlink() and not Path(os.path.realpath(f)).is_relative_to(real_root):  # loops: not a file
                outside += 1
            elif f.is_file():
                files.append(f)
        if files:
            out[here] = files
    if outputs:
        logger.warning("%d medseg output folder(s) inside the input passed over (results are never input)", outputs)
    if outside:
        logger.warning("%d symbolic link(s) to files outside the input folder not followed", outside)
    return out


def _channel_rules(channels: Sequence[ChannelConfig]) -> list[SeriesRule | None]:
    return [c.series_rule() for c in channels]


# ----------------------------------------------------------------------------------------------- volume files
def _volume_items(
    folders: Mapping[Path, list[Path]], root: Path, names: list[str], key: bytes
) -> list[WorkItem]:
    items: list[WorkItem] = []
    wanted = {n.lower(): n for n in names}
    for folder, files in folders.items():
        by_channel: dict[str, list[Path]] = {}
        for f in files:
            channel = wanted.get(volume_stem(f.name).lower())
            if channel is not None:
                by_channel.setdefault(channel, []).append(f)
        if by_channel:  # a case folder: <CHANNEL>.nii.gz files
            items.append(_case_item(folder, by_channel, root, names, key))
            continue
        for f in files:
            rel = _relative(f, root)
            item = WorkItem(keyed_name(key, "file", rel), ItemKind.FILE, rel, sources={names[0]: f})
            if len(names) > 1:
                item.sources = {}
                item.problem = Problem(
                    ReasonCode.MISSING_CHANNEL,
                    rel,
                    f"a single volume file cannot hold the model's channels {names}; put <CHANNEL>.nii.gz files "
                    "of one case in one folder",
                )
            items.append(item)
    return items


def _case_item(
    folder: Path, by_channel: Mapping[str, list[Path]], root: Path, names: list[str], key: bytes
) -> WorkItem:
    rel = _relative(folder, root)
    item = WorkItem(keyed_name(key, "case", rel), ItemKind.CASE, rel)
    missing = [n for n in names if n not in by_channel]
    doubled = sorted(n for n, fs in by_channel.items() if len(fs) > 1)
    if missing:
        item.problem = Problem(
            ReasonCode.MISSING_CHANNEL, rel, f"channel file(s) {missing} missing; the model expects {names}"
        )
    elif doubled:
        item.problem = Problem(
            ReasonCode.AMBIGUOUS_SERIES,
            rel,
            f"several files for channel(s) {doubled} (e.g. .nii and .nii.gz)",
        )
    else:
        item.sources = {n: by_channel[n][0] for n in names}
    return item


# ----------------------------------------------------------------------------------------------- DICOM
def _series_folder(series: SeriesInfo, root: Path) -> str:
    parents = {str(f.parent) for f in series.files}
    return _relative(Path(os.path.commonpath(sorted(parents))), root)


def _rule_problem(rule: SeriesRule | None, series: SeriesInfo, where: str) -> Problem | None:
    """Why the channel's series rule does not select ``series`` (None when it does)."""
    if rule is None or rule.matches(series):
        return None
    if not rule.matches_modality(series):
        return Problem(
            ReasonCode.WRONG_MODALITY,
            where,
            f"modality {series.modality or '?'} is not the model's {rule.modality}",
        )
    if series.n_slices < rule.min_slices:
        return Problem(
            ReasonCode.TOO_FEW_SLICES,
            where,
            f"{series.n_slices} slice(s), the model's rule needs {rule.min_slices}",
        )
    return Problem(ReasonCode.NO_SERIES, where, f"series does not match the model's {rule.describe()}")


def _series_items(scan: DicomScan, rule: SeriesRule | None, channel: str, key: bytes) -> list[WorkItem]:
    items = []
    for s in scan.series:
        rel = _series_folder(s, scan.root)
        uids = {
            "study_uid": s.study_uid,
            "series_uid": s.series_uid,
            "stack_id": s.stack_id,
            "frame_of_reference_uid": s.frame_of_reference_uid,
        }
        item = WorkItem(keyed_name(key, "series", s.stack_id), ItemKind.SERIES, rel, uids=uids)
        item.problem = _rule_problem(rule, s, rel) or (s.problems[0] if s.problems else None)
        if item.problem is None:
            item.sources = {channel: s}
        items.append(item)
    return items


def _study_items(
    scan: DicomScan, rules: Sequence[SeriesRule | None], names: list[str], key: bytes
) -> list[WorkItem]:
    by_study: dict[str, list[SeriesInfo]] = {}
    for s in scan.series:
        by_study.setdefault(s.study_uid, []).append(s)
    items = []
    for study_uid, series in by_study.items():
        folders = sorted({str(f.parent) for s in series for f in s.files})
        rel = _relative(Path(os.path.commonpath(folders)), scan.root)
        item = WorkItem(
            keyed_name(key, "study", study_uid), ItemKind.STUDY, rel, uids={"study_uid": study_uid}
        )
        study_scan = DicomScan(root=scan.root, series=series, problems=[])
        chosen: dict[str, SeriesInfo] = {}
        for name, rule in zip(names, rules, strict=True):
            try:
                chosen[name] = select_series(study_scan, rule, root=rel)
            except InputError as exc:
                item.problem = Problem(exc.code, rel, f"channel {name}: {exc.detail}")
                break
            if chosen[name].problems:
                item.problem = chosen[name].problems[0]
                break
        if item.problem is None:
            item.sources = chosen
            item.uids["series"] = {n: s.stack_id for n, s in chosen.items()}
        items.append(item)
    return items


def _file_problem_items(scan: DicomScan, key: bytes) -> tuple[list[WorkItem], int]:
    """Files skipped by the scan that no series took into account: one quarantined item each."""
    attributed = {p for s in scan.series for p in s.problems}
    items: list[WorkItem] = []
    non_image = 0
    for p in scan.problems:
        if p in attributed:
            continue
        if p.code == ReasonCode.NO_PIXEL_DATA:  # DICOMDIR, reports, presentation states: not images by design
            non_image += 1
            continue
        rel = str(p.path)
        items.append(WorkItem(keyed_name(key, "file", rel), ItemKind.FILE, rel, problem=p))
    return items, non_image


# ----------------------------------------------------------------------------------------------- entry point
def discover(
    input_path: str | os.PathLike,
    channels: Sequence[ChannelConfig],
    key: bytes,
    *,
    exclude: Iterable[str | os.PathLike] = (),
) -> Discovery:
    """Find the work items of a batch run.

    Args:
        input_path: a volume file, a DICOM file or folder (series, study, tree of studies), or a tree of NIfTI
            files / case folders.
        channels: the model's channels (``DataContract.channels``: name, normalization and series rule).
        key: the naming key (:func:`medseg.batch.naming.load_or_create_key`).
        exclude: folders not to descend into (the output folder when it lies inside the input).

    Raises:
        InputError: FILE_NOT_FOUND when ``input_path`` does not exist.
    """
    path = Path(input_path).absolute()
    if not path.exists():
        raise InputError(ReasonCode.FILE_NOT_FOUND, None, "the batch input does not exist")
    if not channels:
        raise ValueError("the model's channel spec is empty")
    names = [c.name for c in channels]
    rules = _channel_rules(channels)
    if path.is_dir():
        root, folders = path, _walk(path, [Path(e) for e in exclude])
    else:
        root, folders = path.parent, {path.parent: [path]}
    volume_folders = {d: [f for f in fs if is_volume_file(f)] for d, fs in folders.items()}
    volume_folders = {d: fs for d, fs in volume_folders.items() if fs}
    items = _volume_items(volume_folders, root, names, key)
    dicom_candidates = [f for fs in folders.values() for f in fs if not is_volume_file(f)]
    non_image = 0
    if dicom_candidates:
        scan = scan_dicom_files(dicom_candidates, root)
        if len(names) == 1:
            items += _series_items(scan, rules[0], names[0], key)
        else:
            items += _study_items(scan, rules, names, key)
        file_items, non_image = _file_problem_items(scan, key)
        items += file_items
    items = _unique(items)
    items.sort(key=lambda it: it.key)
    found = Discovery(root=root, items=items, skipped_non_image=non_image)
    logger.info(
        "discovered %d item(s): %s; %d non-image DICOM file(s) passed over",
        len(items),
        ", ".join(f"{k}={v}" for k, v in sorted(found.counts.items())) or "none",
        non_image,
    )
    return found


def _unique(items: list[WorkItem]) -> list[WorkItem]:
    """Drop repeated keys (cannot happen for distinct UIDs/paths; guards the ledger's one-row-per-item rule)."""
    seen: dict[str, WorkItem] = {}
    for item in items:
        if item.key in seen:
            logger.warning("item %s found twice; keeping the first", item.key)
            continue
        seen[item.key] = item
    return list(seen.values())
