"""The review page of a batch run (``OUTPUT/report.html``): gathered from the ledger and the case reports.

Written at the end of every run (and so refreshed by every resumed run) and rebuilt by ``medseg report OUTPUT``
without inference. It covers the items seen by the folder's last run; everything it shows comes from the ledger
(states, reason codes, run times), ``batch-report.json`` (the model's provenance) and each case's ``report.json``
(volumes, connected components, border contact): the same folder gives the same bytes.

Flags, computed over the run itself (:class:`ReviewSettings` holds the thresholds):

* ``outlier``: robust z-score of the log volume, ``0.6745 (log v - median) / MAD``, beyond ``outlier_z`` (3.5, the
  Iglewicz-Hoaglin rule), over the run's non-empty cases of that label; only with at least ``min_cases`` such
  cases; the MAD is floored at ``mad_floor`` (0.05 in log units: volumes within about 5% of each other never make
  an outlier of a case that differs by less than ~30%).
* ``range``: a volume outside the training set's range, when the model's provenance holds one
  (``label_volume_range_ml``: ``{label: [lowest, highest]}``).
* ``empty``: a label without voxels; ``fragmented``: more than ``max(many_components, components_factor x the
  run's median)`` connected components; ``border``: the label touches a face of the image grid.
* ``quarantined`` / ``failed`` / ``pending`` / ``no-report``: the item's state.

Privacy: the page shows keys, reason codes and numbers; the exception type of a failure, never its text; no input
path (``quarantine.csv`` keeps those).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.atomic import atomic_write_text
from medseg.batch.ledger import LEDGER_FILE, Ledger
from medseg.batch.ledger_db import LedgerRow, Status
from medseg.batch.publish import lock_output
from medseg.batch.report import REPORT_JSON
from medseg.errors import ConfigError
from medseg.outputs.html_report import CaseRow, Flag, ReviewPage, render_page

logger = logging.getLogger(__name__)

__all__ = ["REVIEW_PAGE", "ReviewSettings", "gather_review", "rebuild_review_page", "write_review_page"]

REVIEW_PAGE = "report.html"
_MAD_SCALE = 0.6745
_FAILURE_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class ReviewSettings:
    """Thresholds of the flags (see the module docstring)."""

    outlier_z: float = 3.5
    min_cases: int = 5
    mad_floor: float = 0.05
    many_components: int = 5
    components_factor: float = 3.0


@dataclass
class _LabelStats:
    median_log: float | None = None
    scale: float | None = None
    components_limit: float = math.inf
    z: dict[str, float] = field(default_factory=dict)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _volume(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("volume_ml", entry.get("area_mm2"))
    return float(value) if isinstance(value, int | float) else None


def _labels(reports: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], str]:
    """Label names (by value) and the unit over all reports: mL for 3D, mm^2 for 2D."""
    found: dict[str, int] = {}
    area = False
    for report in reports.values():
        for name, entry in (report.get("labels") or {}).items():
            found.setdefault(str(name), int(entry.get("value", 0)))
            area = area or "area_mm2" in entry
    return sorted(found, key=lambda n: (found[n], n)), "mm\u00b2" if area else "mL"


def _label_stats(
    label: str, reports: Mapping[str, Mapping[str, Any]], settings: ReviewSettings
) -> _LabelStats:
    stats = _LabelStats()
    volumes = {}
    comps = []
    for key, report in reports.items():
        entry = (report.get("labels") or {}).get(label)
        v = _volume(entry) if entry else None
        if v is not None and v > 0:
            volumes[key] = math.log(v)
            c = ((report.get("objects") or {}).get(label) or {}).get("components")
            if isinstance(c, int):
                comps.append(c)
    if comps:
        stats.components_limit = max(
            settings.many_components, settings.components_factor * statistics.median(comps)
        )
    if len(volumes) >= settings.min_cases:
        med = statistics.median(volumes.values())
        mad = statistics.median(abs(x - med) for x in volumes.values())
        stats.median_log, stats.scale = med, max(mad, settings.mad_floor)
        stats.z = {k: _MAD_SCALE * (x - med) / stats.scale for k, x in volumes.items()}
    return stats


def _ranges(model: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The training set's volume range per label from the model's provenance, when it records one."""
    found = model.get("label_volume_range_ml")
    out = {}
    if isinstance(found, Mapping):
        for label, pair in found.items():
            if (
                isinstance(pair, list | tuple)
                and len(pair) == 2
                and all(isinstance(v, int | float) for v in pair)
            ):
                out[str(label)] = (float(pair[0]), float(pair[1]))
    return out


def _case_flags(
    key: str,
    report: Mapping[str, Any],
    stats: Mapping[str, _LabelStats],
    ranges: Mapping[str, tuple[float, float]],
    unit: str,
    settings: ReviewSettings,
) -> list[Flag]:
    flags: list[Flag] = []
    labels, objects = report.get("labels") or {}, report.get("objects") or {}
    for label, st in stats.items():
        entry = labels.get(label)
        if entry is None:
            continue
        v = _volume(entry)
        if v is not None and v <= 0:
            flags.append(Flag("empty", label, "no voxel of this label"))
            continue
        z = st.z.get(key)
        if z is not None and abs(z) > settings.outlier_z and st.median_log is not None:
            median = math.exp(st.median_log)
            flags.append(
                Flag(
                    "outlier", label, f"robust z = {z:+.1f}: {v:,.1f} {unit}, run median {median:,.1f} {unit}"
                )
            )
        lo, hi = ranges.get(label, (-math.inf, math.inf))
        if v is not None and not lo <= v <= hi:
            flags.append(Flag("range", label, f"{v:,.1f} {unit}; training set {lo:,.1f}-{hi:,.1f} {unit}"))
        obj = objects.get(label) or {}
        n = obj.get("components")
        if isinstance(n, int) and n > st.components_limit:
            flags.append(Flag("fragmented", label, f"{n} components (limit {st.components_limit:g})"))
        if obj.get("touches_border"):
            flags.append(Flag("border", label, "touches the field-of-view border"))
    return flags


def _state_flag(row: LedgerRow) -> tuple[str | None, Flag | None]:
    """(reason shown, flag) of an item that is not DONE."""
    if row.status == Status.QUARANTINED:
        return row.reason, Flag("quarantined", None, f"reason code {row.reason}")
    if row.status == Status.FAILED:
        match = _FAILURE_TYPE.match(row.error or "")
        kind = match.group(0) if match else "error"
        return kind, Flag("failed", None, f"{kind}; retried by the next run")
    return None, Flag("pending", None, "not reached by the run")


def _link(output: Path, folder: str, name: str) -> str | None:
    return f"{folder}/{name}" if (output / folder / name).is_file() else None


def _case_row(output: Path, row: LedgerRow, report: Mapping[str, Any] | None, labels: list[str]) -> CaseRow:
    case = CaseRow(key=row.key, state=row.status.value)
    if row.status != Status.DONE:
        case.reason, flag = _state_flag(row)
        case.flags.append(flag)
        return case
    folder = row.output or row.key
    case.thumb, case.qc = _link(output, folder, "thumb.png"), _link(output, folder, "qc.png")
    case.report = _link(output, folder, "report.json")
    if report is None:  # a run without the report format has no volumes to show, and nothing is wrong
        if "report" in row.formats:
            case.flags.append(Flag("no-report", None, "report.json missing or unreadable"))
        return case
    entries, objects = report.get("labels") or {}, report.get("objects") or {}
    for label in labels:
        case.volumes[label] = _volume(entries[label]) if label in entries else None
        case.components[label] = (objects.get(label) or {}).get("components") if objects else None
    confidence = report.get("confidence")
    if isinstance(confidence, Mapping):
        confidence = confidence.get("mean")
    case.confidence = float(confidence) if isinstance(confidence, int | float) else None
    return case


def _model_rows(model: Mapping[str, Any], medseg_version: str | None) -> list[tuple[str, str]]:
    fields = (
        ("name", "model_name"),
        ("version", "model_version"),
        ("source", "source_uri"),
        ("weights sha256", "weights_sha256"),
        ("config hash", "config_hash"),
        ("network", "network"),
        ("test-time augmentation", "tta"),
        ("postprocessing", "postprocess"),
    )
    rows = [(name, "-" if model.get(k) is None else str(model.get(k))) for name, k in fields]
    return [*rows, ("medseg version (run)", medseg_version or "-")]


def _run_rows(ledger: Ledger, run: Mapping[str, Any], rows: list[LedgerRow]) -> list[tuple[str, str]]:
    start, end = run["started_at"], run["finished_at"]
    computed = [
        r for r in rows
        if r.status == Status.DONE and r.finished_at is not None and r.finished_at >= start
        and (end is None or r.finished_at <= end)
    ]  # fmt: skip
    wall = None if end is None else end - start
    per_case = [r.seconds_total for r in computed if r.seconds_total is not None]
    settings = run.get("settings") or {}
    out = [
        ("run", f"#{run['run_id']} ({len(ledger.runs())} run(s) in this output folder so far)"),
        ("started", _utc(start)),
        ("finished", _utc(end) if end is not None else "not recorded (interrupted)"),
        ("wall time", "-" if wall is None else f"{wall:,.1f} s"),
        ("computed in this run", str(len(computed))),
        ("already done before", str(sum(1 for r in rows if r.status == Status.DONE) - len(computed))),
        ("throughput", f"{len(computed) / wall * 60:,.1f} cases/min" if wall and computed else "-"),
        ("time per case (median)", f"{statistics.median(per_case):,.2f} s" if per_case else "-"),
        ("formats", ", ".join(settings.get("formats") or []) or "-"),
        ("workers", str(settings.get("workers", "-"))),
    ]
    return out


def _plots(
    labels: list[str],
    unit: str,
    cases: list[CaseRow],
    stats: Mapping[str, _LabelStats],
    settings: ReviewSettings,
) -> dict[str, bytes]:
    from medseg.outputs.volume_plot import PlotPoint, volume_plot_png

    plots = {}
    for label in labels:
        points = [
            PlotPoint(c.key, c.volumes[label], any(f.label == label and f.kind == "outlier" for f in c.flags))
            for c in cases
            if c.volumes.get(label) is not None
        ]
        if not points:
            continue
        st = stats[label]
        median = limits = None
        if st.median_log is not None and st.scale is not None:
            half = settings.outlier_z * st.scale / _MAD_SCALE
            median = math.exp(st.median_log)
            limits = (math.exp(st.median_log - half), math.exp(st.median_log + half))
        plots[label] = volume_plot_png(label, unit, points, median=median, limits=limits)
    return plots


def gather_review(
    output: str | Path, ledger: Ledger, run_id: int | None = None, settings: ReviewSettings | None = None
) -> ReviewPage:
    """The review of run ``run_id`` (default: the last one) of the output folder ``output``."""
    settings = settings or ReviewSettings()
    out = Path(output)
    runs = ledger.runs()
    if not runs:
        raise ConfigError(f"{LEDGER_FILE}: no run recorded in this output folder yet")
    run = runs[-1] if run_id is None else next((r for r in runs if r["run_id"] == run_id), None)
    if run is None:
        raise ConfigError(f"{LEDGER_FILE}: no run #{run_id} in this output folder")
    rows = ledger.rows(run_id=run["run_id"])
    reports = {
        r.key: rep
        for r in rows
        if r.status == Status.DONE
        and (rep := _read_json(out / (r.output or r.key) / "report.json")) is not None
    }
    model = (_read_json(out / REPORT_JSON) or {}).get("model")
    if not isinstance(model, Mapping):  # no batch report: the first case report's provenance
        model = next((rep.get("provenance") or {} for rep in reports.values()), {})
    labels, unit = _labels(reports)
    stats = {label: _label_stats(label, reports, settings) for label in labels}
    ranges = _ranges(model)
    cases = []
    for row in rows:
        case = _case_row(out, row, reports.get(row.key), labels)
        if row.key in reports:
            case.flags.extend(_case_flags(row.key, reports[row.key], stats, ranges, unit, settings))
        cases.append(case)
    notes = [
        f"outlier: |robust z| > {settings.outlier_z:g} on the log volume (median and MAD over this run's non-empty "
        f"cases of the label, MAD at least {settings.mad_floor:g}; needs {settings.min_cases} or more cases).",
        f"fragmented: more than max({settings.many_components}, {settings.components_factor:g} x the run's "
        "median) connected components (full connectivity).",
        "No mean confidence column: the case reports carry no probabilities."
        if not any(c.confidence is not None for c in cases)
        else "",
    ]
    counts = {s.value: sum(1 for r in rows if r.status == s) for s in Status}
    return ReviewPage(
        title=f"medseg batch review: {model.get('model_name') or 'model'}",
        counts=counts,
        model=_model_rows(model, run.get("medseg_version")),
        run=_run_rows(ledger, run, rows),
        labels=labels,
        unit=unit,
        cases=cases,
        plots=_plots(labels, unit, cases, stats, settings),
        notes=[n for n in notes if n],
        show_confidence=any(c.confidence is not None for c in cases),
    )


def write_review_page(
    output: str | Path, ledger: Ledger, run_id: int | None = None, settings: ReviewSettings | None = None
) -> Path:
    """Gather the review (:func:`gather_review`) and write ``OUTPUT/report.html`` atomically."""
    page = gather_review(output, ledger, run_id, settings)
    path = atomic_write_text(Path(output) / REVIEW_PAGE, render_page(page))
    flagged = sum(1 for c in page.cases if c.flags)
    logger.info("review page: %d item(s), %d flagged, written to %s", len(page.cases), flagged, path.name)
    return path


def rebuild_review_page(output: str | Path, settings: ReviewSettings | None = None) -> Path:
    """Rebuild ``OUTPUT/report.html`` of a finished (or interrupted) run from its ledger and case reports.

    Raises:
        ConfigError: ``output`` is not a batch output folder (no ledger) or holds no run.
        medseg.batch.publish.OutputLockedError: a run is writing to ``output`` now.
    """
    out = Path(output)
    if not (out / LEDGER_FILE).is_file():
        raise ConfigError(f"{out.name}: not a medseg batch output folder (no {LEDGER_FILE})")
    with lock_output(out), Ledger.open(out / LEDGER_FILE) as ledger:
        return write_review_page(out, ledger, settings=settings)
