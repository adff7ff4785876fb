"""The review page of a batch run: one self-contained HTML file (inline CSS and script, no network).

The page shows a :class:`ReviewPage` (gathered from the ledger and the case reports by :mod:`medseg.batch.review`):

* a summary: counts per state, the model (name, version, weights sha256, ...) and the run (time, throughput);
* the case table, sortable and filterable: output key, state, reason code, volume per label, connected
  components, mean confidence (when the reports carry it), flags, and a thumbnail linking to the case's QC
  picture and ``report.json`` (relative links into the output folder);
* the quarantined and failed items by key and reason code (their input paths are only in ``quarantine.csv``:
  folder names may name patients);
* one volume distribution plot per label (PNG, inlined as a ``data:`` URI), flagged cases marked.

The page is a pure function of the :class:`ReviewPage`: no clock, no absolute path, no random number, so
rebuilding it from the same data gives the same bytes. Every text is HTML-escaped. A Content-Security-Policy
forbids scripts, styles and images from anywhere but the page itself, its ``data:`` URIs and its folder.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from medseg.outputs.html_assets import CSS, SCRIPT

logger = logging.getLogger(__name__)

__all__ = ["FLAG_KINDS", "INFO_FLAGS", "CaseRow", "Flag", "ReviewPage", "render_page"]

# every kind of flag with what it means (shown as the page's legend and as the flag filter's choices)
FLAG_KINDS = {
    "quarantined": "the input is unusable (reason code; path in quarantine.csv)",
    "failed": "processing failed; the next run retries it (error text in batch-report.json)",
    "pending": "not reached (the run was interrupted)",
    "no-report": "DONE but report.json is missing or unreadable",
    "outlier": "volume outlier for its label",
    "range": "volume outside the training set's range stored with the model",
    "empty": "the label is empty",
    "fragmented": "many connected components",
    "border": "the label touches the field-of-view border (may be cut)",
}
# informative flags: shown and filterable, but they alone do not mark a case "flagged for review" (a body or
# a large organ may touch the border of every scan)
INFO_FLAGS = frozenset({"border"})
_CSP = (
    "default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Flag:
    """One reason to look at a case: ``kind`` (a key of :data:`FLAG_KINDS`), the label it concerns, a detail."""

    kind: str
    label: str | None = None
    detail: str = ""

    @property
    def text(self) -> str:
        return f"{self.kind}: {self.label}" if self.label else self.kind


def _for_review(flags: Sequence[Flag]) -> bool:
    return any(f.kind not in INFO_FLAGS for f in flags)


@dataclass
class CaseRow:
    """One row of the case table; links are relative to the output folder (None when the file is absent)."""

    key: str
    state: str
    reason: str | None = None
    volumes: dict[str, float | None] = field(default_factory=dict)
    components: dict[str, int | None] = field(default_factory=dict)
    confidence: float | None = None
    flags: list[Flag] = field(default_factory=list)
    thumb: str | None = None
    qc: str | None = None
    report: str | None = None


@dataclass
class ReviewPage:
    """Everything the page shows. ``model`` and ``run`` are (name, value) rows; ``plots`` label -> PNG bytes."""

    title: str
    counts: dict[str, int]
    model: list[tuple[str, str]]
    run: list[tuple[str, str]]
    labels: list[str]
    unit: str
    cases: list[CaseRow]
    plots: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    show_confidence: bool = False


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 2) -> tuple[str, str]:
    """(data-v, text) of a number cell; missing values give empty strings (sorted last by the script)."""
    if value is None:
        return "", ""
    return repr(float(value)), f"{value:,.{digits}f}"


def _summary(page: ReviewPage) -> list[str]:
    flagged = sum(1 for c in page.cases if _for_review(c.flags))
    cards = [("DONE", "done"), ("QUARANTINED", "quarantined"), ("FAILED", "failed")]
    if page.counts.get("PENDING"):
        cards.append(("PENDING", "pending"))
    out = ['<div class="cards">']
    for state, text in cards:
        out.append(
            f'<div class="card {state}"><b id="count-{state}">{page.counts.get(state, 0)}</b>{text}</div>'
        )
    out.append(f'<div class="card FLAGGED"><b id="count-flagged">{flagged}</b>flagged for review</div>')
    out.append(f'<div class="card"><b>{len(page.cases)}</b>items in this run</div></div>')
    for title, rows in (("Model", page.model), ("Run", page.run)):
        out.append(f'<h2>{title}</h2><table class="kv">')
        for name, value in rows:
            cls = ' class="sha"' if "sha256" in name or "hash" in name else ""
            out.append(f"<tr><td>{_e(name)}</td><td{cls}>{_e(value)}</td></tr>")
        out.append("</table>")
    return out


def _flag_html(flag: Flag) -> str:
    title = f' title="{_e(flag.detail)}"' if flag.detail else ""
    return f'<span class="flag {_e(flag.kind)}"{title}>{_e(flag.text)}</span>'


def _row(case: CaseRow, page: ReviewPage) -> str:
    kinds = " ".join(sorted({f.kind for f in case.flags}))
    search = " ".join([case.key, case.state, case.reason or "", *(f.text for f in case.flags)]).lower()
    review = _for_review(case.flags)
    classes = f"state-{case.state}" + (" flagged" if review else "")
    cells = [f'<td class="key">{_e(case.key)}</td>', f'<td class="state">{_e(case.state)}</td>']
    cells.append(f"<td>{_e(case.reason or '')}</td>")
    for label in page.labels:
        v, text = _num(case.volumes.get(label))
        cells.append(f'<td class="num vol" data-label="{_e(label)}" data-v="{v}">{text}</td>')
    counts = [c for c in case.components.values() if c is not None]
    total = sum(counts) if counts else None
    detail = ", ".join(f"{k}: {v}" for k, v in case.components.items() if v is not None)
    cells.append(
        f'<td class="num" data-v="{"" if total is None else total}" title="{_e(detail)}">'
        f"{'' if total is None else total}</td>"
    )
    if page.show_confidence:
        v, text = _num(case.confidence, 3)
        cells.append(f'<td class="num" data-v="{v}">{text}</td>')
    cells.append(
        f'<td class="flags" data-v="{len(case.flags)}">{"".join(_flag_html(f) for f in case.flags)}</td>'
    )
    picture = case.thumb or case.qc
    links = []
    if picture:
        img = f'<img src="{_e(picture)}" alt="QC thumbnail of {_e(case.key)}" loading="lazy">'
        links.append(f'<a href="{_e(case.qc or picture)}">{img}</a>')
    if case.report:
        links.append(f'<a href="{_e(case.report)}">report.json</a>')
    cells.append(f'<td class="qc">{"".join(links)}</td>')
    return (
        f'<tr class="{classes}" data-key="{_e(case.key)}" data-state="{_e(case.state)}" '
        f'data-flag-kinds="{_e(kinds)}" data-review="{int(review)}" data-search="{_e(search)}">'
        f"{''.join(cells)}</tr>"
    )


def _table(page: ReviewPage) -> list[str]:
    kinds = sorted({f.kind for c in page.cases for f in c.flags}, key=list(FLAG_KINDS).index)
    states = sorted({c.state for c in page.cases})
    out = [
        "<h2>Cases</h2>",
        '<div class="controls"><input type="search" id="filter-text" placeholder="filter: key, reason, flag"'
        ' aria-label="filter">',
        '<select id="filter-state" aria-label="state"><option value="">all states</option>',
        *(f'<option value="{_e(s)}">{_e(s)}</option>' for s in states),
        '</select><select id="filter-flag" aria-label="flag"><option value="">all cases</option>'
        '<option value="*">flagged for review</option>',
        *(f'<option value="{_e(k)}">{_e(k)}</option>' for k in kinds),
        f'</select><span><span id="shown">{len(page.cases)}</span> of {len(page.cases)} shown</span></div>',
        '<table class="cases" id="cases"><thead><tr>',
        '<th data-type="text">key</th><th data-type="text">state</th><th data-type="text">reason</th>',
        *(f'<th data-type="num" data-label="{_e(lb)}">{_e(lb)} ({_e(page.unit)})</th>' for lb in page.labels),
        '<th data-type="num" title="connected components, all labels (per label on hover)">components</th>',
    ]
    if page.show_confidence:
        out.append('<th data-type="num">mean confidence</th>')
    out.append('<th data-type="num">flags</th><th>QC</th></tr></thead><tbody>')
    out.extend(_row(c, page) for c in page.cases)
    out.append("</tbody></table>")
    return out


def _quarantine(page: ReviewPage) -> list[str]:
    bad = [c for c in page.cases if c.state in ("QUARANTINED", "FAILED")]
    out = ["<h2>Quarantined and failed</h2>"]
    if not bad:
        return [*out, "<p>None.</p>"]
    out.append(
        '<p class="note">Input paths are not shown on this page (folder names may identify patients): '
        'find each item by its key in <a href="quarantine.csv">quarantine.csv</a>, which lists its path '
        "relative to the input folder.</p>"
    )
    out.append('<table class="kv" id="quarantine"><tr><td>key</td><td>state</td><td>reason</td></tr>')
    for c in sorted(bad, key=lambda c: (c.state, c.reason or "", c.key)):
        out.append(
            f'<tr><td class="mono">{_e(c.key)}</td><td>{_e(c.state)}</td><td>{_e(c.reason or "")}</td></tr>'
        )
    out.append("</table>")
    return out


def _plots(page: ReviewPage) -> list[str]:
    out = ["<h2>Volume distributions</h2>", '<div class="plots">']
    if not page.plots:
        out.append("<p>No volumes to plot.</p>")
    for label, png in page.plots.items():
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f'<img src="data:image/png;base64,{data}" alt="volumes of {_e(label)}" data-label="{_e(label)}">'
        )
    out.append("</div>")
    return out


def _legend(page: ReviewPage, used: Sequence[str]) -> list[str]:
    out = ["<h2>Flags</h2>", '<table class="kv">']
    for kind in used:
        info = " (informative: does not mark the case for review on its own)" if kind in INFO_FLAGS else ""
        out.append(
            f'<tr><td><span class="flag {_e(kind)}">{_e(kind)}</span></td><td>{_e(FLAG_KINDS[kind] + info)}</td></tr>'
        )
    out.append("</table>")
    out.extend(f'<p class="note">{_e(n)}</p>' for n in page.notes)
    return out


def render_page(page: ReviewPage) -> str:
    """The page's HTML text (deterministic: same data, same text)."""
    unknown = sorted({f.kind for c in page.cases for f in c.flags} - set(FLAG_KINDS))
    if unknown:
        raise ValueError(f"unknown flag kind(s) {unknown}; valid: {list(FLAG_KINDS)}")
    used = [k for k in FLAG_KINDS if any(f.kind == k for c in page.cases for f in c.flags)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(page.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(page.title)}</h1>",
        '<p class="sub">Review of one batch segmentation run. Items are named by keyed hashes; this page holds '
        "no patient identifiers and no input paths.</p>",
        *_summary(page),
        *_table(page),
        *_quarantine(page),
        *_plots(page),
        *_legend(page, used),
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"
