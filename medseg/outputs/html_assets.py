"""The inline stylesheet and script of the batch review page (:mod:`medseg.outputs.html_report`).

Kept apart from the page builder so that each stays readable. The page must work opened from the file system
with no network: nothing here loads anything; the Content-Security-Policy of the page forbids it anyway.

Script: click a column header to sort (numbers by their ``data-v`` value, missing values last; again to reverse);
the filter box matches key, state, reason and flags; the selects keep one state, the cases flagged for review
(``data-review``) or one kind of flag. The number of
rows shown is written into ``#shown``.
"""

from __future__ import annotations

__all__ = ["CSS", "SCRIPT"]

CSS = """
:root { --fg: #1b1f24; --muted: #5b6570; --line: #d8dde3; --bg: #ffffff; --band: #f4f6f8;
        --bad: #b42318; --warn: #b54708; --ok: #067647; --info: #175cd3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 24px 48px; }
h1 { font-size: 20px; margin: 18px 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 12px; }
.mono, td.key, .sha { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; background: var(--band); }
.card b { display: block; font-size: 22px; }
.card.DONE b { color: var(--ok); } .card.QUARANTINED b { color: var(--warn); }
.card.FAILED b { color: var(--bad); } .card.FLAGGED b { color: var(--info); }
table.kv { border-collapse: collapse; } table.kv td { padding: 2px 14px 2px 0; vertical-align: top; }
table.kv td:first-child { color: var(--muted); white-space: nowrap; }
.sha { word-break: break-all; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0; }
.controls input[type=search] { width: 260px; padding: 4px 6px; }
table.cases { border-collapse: collapse; width: 100%; }
table.cases th, table.cases td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
                                 vertical-align: middle; }
table.cases th { position: sticky; top: 0; background: var(--band); cursor: pointer; user-select: none;
                 white-space: nowrap; z-index: 1; }
table.cases th.sorted-asc::after { content: " \\25B2"; } table.cases th.sorted-desc::after { content: " \\25BC"; }
table.cases td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.cases tr.flagged { background: #fff8eb; } table.cases tr.state-FAILED { background: #fef3f2; }
table.cases td.qc { display: flex; align-items: center; gap: 8px; }
table.cases img { display: block; height: 96px; border: 1px solid var(--line); background: #000; }
.state { font-weight: 600; } .state-DONE .state { color: var(--ok); }
.state-QUARANTINED .state { color: var(--warn); } .state-FAILED .state { color: var(--bad); }
.flag { display: inline-block; border-radius: 10px; padding: 0 7px; margin: 1px 2px; font-size: 12px;
        border: 1px solid currentColor; white-space: nowrap; }
.flag.outlier, .flag.failed, .flag.range { color: var(--bad); } .flag.quarantined { color: var(--warn); }
.flag.empty, .flag.fragmented, .flag.no-report { color: var(--warn); }
.flag.border, .flag.pending { color: var(--muted); }
.plots img { max-width: 100%; border: 1px solid var(--line); margin: 4px 0 12px; }
.note { color: var(--muted); font-size: 12.5px; }
a { color: var(--info); }
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("cases");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var search = document.getElementById("filter-text");
  var stateSel = document.getElementById("filter-state");
  var flagSel = document.getElementById("filter-flag");
  var shown = document.getElementById("shown");

  function key(row, col, numeric) {
    var cell = row.cells[col];
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent.trim(); }
    if (!numeric) { return v.toLowerCase(); }
    return v === "" ? null : parseFloat(v);
  }

  function sortBy(col) {
    var th = heads[col];
    var numeric = th.getAttribute("data-type") === "num";
    var asc = !th.classList.contains("sorted-asc");
    for (var i = 0; i < heads.length; i++) { heads[i].classList.remove("sorted-asc", "sorted-desc"); }
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var rows = Array.prototype.slice.call(body.rows);
    var decorated = rows.map(function (r, i) { return [key(r, col, numeric), i, r]; });
    decorated.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (x === y) { return a[1] - b[1]; }
      if (x === null) { return 1; }  // missing values last, whatever the direction
      if (y === null) { return -1; }
      var c = x < y ? -1 : 1;
      return asc ? c : -c;
    });
    var frag = document.createDocumentFragment();
    decorated.forEach(function (d) { frag.appendChild(d[2]); });
    body.appendChild(frag);
  }

  function applyFilter() {
    var text = search.value.trim().toLowerCase();
    var state = stateSel.value;
    var flag = flagSel.value;
    var n = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var kinds = (r.getAttribute("data-flag-kinds") || "").split(" ");
      var ok = (!state || r.getAttribute("data-state") === state) &&
               (!flag || (flag === "*" ? r.getAttribute("data-review") === "1" : kinds.indexOf(flag) >= 0)) &&
               (!text || r.getAttribute("data-search").indexOf(text) >= 0);
      r.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = String(n);
  }

  for (var i = 0; i < heads.length; i++) {
    if (heads[i].getAttribute("data-type")) {
      heads[i].addEventListener("click", sortBy.bind(null, i));
    }
  }
  search.addEventListener("input", applyFilter);
  stateSel.addEventListener("change", applyFilter);
  flagSel.addEventListener("change", applyFilter);
  applyFilter();
})();
"""
