"""The review page of a batch run (``OUTPUT/report.html``): 20 studies (3 broken, 2 with a planted 5x volume
outlier) rendered in headless Chromium; no identifiers, no network; ``medseg report`` rebuilds it byte for byte;
the flags on a synthetic run; the objects (components, border, largest) stored in every case report."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_batch_support import (
    CANARIES,
    CANARY_FOLDER,
    CANARY_ID,
    CANARY_NAME,
    NAME_KEY,
    threshold_predictor,
    write_archive,
)

from medseg.batch import LEDGER_FILE, Ledger, keyed_name, segment_archive
from medseg.batch.review import REVIEW_PAGE, gather_review, rebuild_review_page
from medseg.cli import main as cli_main
from medseg.data.dicom import read_dicom
from medseg.outputs.objects import label_objects
from medseg.outputs.qc import render_qc
from medseg.synthetic.batch_output import SyntheticRun, write_batch_output
from medseg.synthetic.dataset import write_ct_study

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
# spacing of the normal studies (1.5 x 1.5 x 2.5 mm) scaled to 5x and 1/5 of the voxel volume: same voxels, a
# volume the model (a threshold) reports 5x too large or too small, as a wrong label or a wrong header would
OUTLIER_SPACINGS = {"big": (3.0, 3.0, 3.125), "small": (0.75, 0.75, 2.0)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """15 normal studies + 3 broken ones (test_batch_support) + 2 planted volume outliers: 20 items."""
    root = tmp_path_factory.mktemp("review")
    archive = write_archive(root / "in", n_good=15)
    outliers = {}
    for n, (name, spacing) in enumerate(OUTLIER_SPACINGS.items()):
        folder = root / "in" / f"{CANARY_FOLDER}_outlier_{name}"
        write_ct_study(
            folder, shape=(24, 24, 12), spacing=spacing, seed=50 + n, n_organs=2,
            patient_name=f"{CANARY_NAME}^OUT{n}", patient_id=f"{CANARY_ID}OUT{n}",
        )  # fmt: skip
        outliers[name] = keyed_name(NAME_KEY, "series", read_dicom(folder)[2]["stack_id"])
    out = root / "out"
    summary = segment_archive(archive.root, out, threshold_predictor(), name_key=NAME_KEY, progress=False)
    assert (summary.total, summary.done, summary.quarantined) == (20, 17, 3)
    bad = {r.key for r in summary.items if r.status.value == "QUARANTINED"}
    return {"archive": archive, "out": out, "summary": summary, "outliers": outliers, "bad": bad}


# ------------------------------------------------------------------------------------------------ in Chromium
@pytest.fixture(scope="module")
def chromium():
    """The Chromium binary; skipped without one (or without websocket-client), failed if MEDSEG_REQUIRE_CHROMIUM."""
    from chromium_cdp import find_chromium

    required = bool(os.environ.get("MEDSEG_REQUIRE_CHROMIUM"))
    try:
        import websocket  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("MEDSEG_REQUIRE_CHROMIUM is set but websocket-client (a test extra) is not installed")
        pytest.skip("websocket-client (test extra) drives Chromium")
    binary = find_chromium()
    if binary is None:
        if required:
            pytest.fail("MEDSEG_REQUIRE_CHROMIUM is set but no chromium binary was found")
        pytest.skip(
            "no chromium binary (Debian: apt-get install -y chromium); set MEDSEG_CHROMIUM to point at one"
        )
    return binary


_COLUMN_VALUES = """(() => {
  const th = [...document.querySelectorAll('#cases thead th')].find(h => h.dataset.label === 'body');
  const col = [...th.parentNode.cells].indexOf(th);
  return [...document.querySelectorAll('#cases tbody tr')].map(r => [r.dataset.key, r.cells[col].dataset.v]);
})()"""
_FLAGS = """[...document.querySelectorAll('#cases tbody tr')].map(r =>
  [r.dataset.key, r.dataset.review, [...r.querySelectorAll('.flag')].map(f => f.textContent)])"""


def test_the_page_in_headless_chromium(run, chromium, tmp_path):
    from chromium_cdp import Browser

    out = run["out"]
    with Browser(chromium, tmp_path / "profile") as browser:
        browser.open((out / REVIEW_PAGE).as_uri())
        assert browser.errors() == []
        assert browser.evaluate("document.querySelectorAll('#cases tbody tr').length") == 20
        assert browser.evaluate("document.getElementById('count-QUARANTINED').textContent") == "3"

        # flags: exactly the 2 planted outliers and the 3 quarantined studies are flagged for review
        flags = {key: (review, texts) for key, review, texts in browser.evaluate(_FLAGS)}
        outlier_keys = {k for k, (_, texts) in flags.items() if "outlier: body" in texts}
        assert outlier_keys == set(run["outliers"].values())
        assert {k for k, (_, texts) in flags.items() if "quarantined" in texts} == run["bad"]
        assert {k for k, (review, _) in flags.items() if review == "1"} == outlier_keys | run["bad"]
        assert browser.evaluate("document.getElementById('count-flagged').textContent") == "5"

        # sorting by the body volume: ascending, then descending; quarantined rows (no volume) stay last
        browser.evaluate("document.querySelector('#cases th[data-label=body]').click()")
        rows = browser.evaluate(_COLUMN_VALUES)
        values = [float(v) for _, v in rows if v]
        assert len(values) == 17 and values == sorted(values)
        assert rows[0][0] == run["outliers"]["small"] and all(v == "" for _, v in rows[17:])
        browser.evaluate("document.querySelector('#cases th[data-label=body]').click()")
        rows = browser.evaluate(_COLUMN_VALUES)
        values = [float(v) for _, v in rows if v]
        assert values == sorted(values, reverse=True) and rows[0][0] == run["outliers"]["big"]
        assert all(v == "" for _, v in rows[17:])

        # filters: outliers only, then free text on a reason code
        browser.evaluate(
            "const s = document.getElementById('filter-flag'); s.value = 'outlier';"
            "s.dispatchEvent(new Event('change'))"
        )
        visible = (
            "[...document.querySelectorAll('#cases tbody tr')].filter(r => !r.hidden).map(r => r.dataset.key)"
        )
        assert set(browser.evaluate(visible)) == outlier_keys
        assert browser.evaluate("document.getElementById('shown').textContent") == "2"
        browser.evaluate(
            "const s2 = document.getElementById('filter-flag'); s2.value = ''; s2.dispatchEvent(new Event('change'));"
            "const t = document.getElementById('filter-text'); t.value = 'missing_slice';"
            "t.dispatchEvent(new Event('input'))"
        )
        assert len(browser.evaluate(visible)) == 1
        browser.evaluate(
            "const t2 = document.getElementById('filter-text'); t2.value = '';"
            "t2.dispatchEvent(new Event('input'))"
        )
        # every thumbnail loaded (decoded with a size), from the output folder; images load asynchronously, so a
        # busy machine gets a few seconds before a missing one counts
        widths = "[...document.querySelectorAll('#cases img')].map(i => i.complete ? i.naturalWidth : -1)"
        deadline = time.monotonic() + 30
        sizes = browser.evaluate(widths)
        while -1 in sizes and time.monotonic() < deadline:
            time.sleep(0.2)
            sizes = browser.evaluate(widths)
        assert len(sizes) == 17 and min(sizes) > 100

        # no network: every request is the page itself, a file inside the output folder, or a data: URI
        requests = browser.requests()
        assert len(requests) >= 1 + 17
        for url in requests:
            assert url.startswith((out.as_uri() + "/", "data:image/png;base64,")), url
        assert browser.errors() == []

        shot = browser.screenshot(tmp_path / "report-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report-page.png")


# ------------------------------------------------------------------------------------------------ privacy, rebuild
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "data", "poster") and v]


def test_the_page_holds_no_identifier_and_loads_nothing_from_the_network(run):
    out, archive = run["out"], run["archive"]
    text = (out / REVIEW_PAGE).read_text(encoding="utf-8")
    for secret in (*CANARIES, str(archive.root), str(out), str(out.parent)):
        assert secret not in text, secret
    parser = _Links()
    parser.feed(text)
    assert len(parser.urls) > 17 * 2
    for url in parser.urls:  # relative links into the output folder, or inline pictures
        assert url.startswith("data:image/png;base64,") or re.fullmatch(
            r"[0-9a-f]{24}/[a-z]+\.(png|json)|quarantine\.csv", url
        ), url
    code = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    for pattern in (
        "http://",
        "https://",
        "//cdn",
        "@import",
        "url(",
        "fetch(",
        "XMLHttpRequest",
        "<link",
        "<iframe",
    ):
        assert pattern not in code, pattern
    assert "default-src 'none'" in text  # the CSP forbids any other source
    # the thumbnails and the case reports the page links to carry no identifiers either
    for key in run["outliers"].values():
        for name in ("thumb.png", "report.json"):
            data = (out / key / name).read_bytes()
            assert not any(c.encode() in data for c in CANARIES), (key, name)


def test_medseg_report_rebuilds_the_same_page(run, capsys):
    out = run["out"]
    written = (out / REVIEW_PAGE).read_bytes()
    (out / REVIEW_PAGE).unlink()
    assert cli_main(["report", str(out)]) == 0
    assert str(out / REVIEW_PAGE) in capsys.readouterr().out
    assert (out / REVIEW_PAGE).read_bytes() == written


def test_medseg_report_refuses_a_folder_without_a_ledger(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert f"not a medseg batch output folder (no {LEDGER_FILE})" in capsys.readouterr().err
    assert not (tmp_path / LEDGER_FILE).exists() and not (tmp_path / REVIEW_PAGE).exists()


def test_a_resumed_run_refreshes_the_page(tmp_path):
    archive = write_archive(tmp_path / "in", n_good=2, bad=False)
    out = tmp_path / "out"
    segment_archive(
        archive.root, out, threshold_predictor(), formats=("nifti", "report", "qc"), progress=False
    )
    first = (out / REVIEW_PAGE).read_text()
    assert "#1 (1 run(s)" in first
    segment_archive(
        archive.root, out, threshold_predictor(), formats=("nifti", "report", "qc"), progress=False
    )
    second = (out / REVIEW_PAGE).read_text()
    assert "#2 (2 run(s)" in second and first != second
    with Ledger.open(out / LEDGER_FILE) as ledger:
        page = gather_review(out, ledger)
    assert dict(page.run)["computed in this run"] == "0" and dict(page.run)["already done before"] == "2"


# ------------------------------------------------------------------------------------------------ flags (synthetic)
def test_flags_of_a_synthetic_run_are_exactly_the_planted_ones(tmp_path):
    planted = SyntheticRun(
        n_cases=40,
        labels=("liver", "spleen"),
        outliers={3: ("liver", 5.0), 11: ("spleen", 0.2), 12: ("liver", 1.2)},  # 1.2x: within the spread
        empty={20: "spleen"},
        fragmented={25: ("liver", 9)},
        border={30: "spleen"},
        quarantined={33: "MISSING_SLICE"},
        failed=[36],
        model={"label_volume_range_ml": {"liver": [1000.0, 2500.0]}},
    )
    write_batch_output(tmp_path / "out", planted)
    with Ledger.open(tmp_path / "out" / LEDGER_FILE) as ledger:
        page = gather_review(tmp_path / "out", ledger)
    k = planted.keys
    got = {c.key: sorted(f.text for f in c.flags) for c in page.cases if c.flags}
    assert got == {
        k[3]: ["outlier: liver", "range: liver"],
        k[11]: ["outlier: spleen"],
        k[20]: ["empty: spleen"],
        k[25]: ["fragmented: liver"],
        k[30]: ["border: spleen"],
        k[33]: ["quarantined"],
        k[36]: ["failed"],
    }
    cases = {c.key: c for c in page.cases}
    assert (cases[k[33]].reason, cases[k[36]].reason) == ("MISSING_SLICE", "RuntimeError")
    assert cases[k[3]].volumes["liver"] == pytest.approx(5 * cases[k[4]].volumes["liver"], rel=0.1)
    assert page.counts == {"PENDING": 0, "DONE": 38, "QUARANTINED": 1, "FAILED": 1}
    assert set(page.plots) == {"liver", "spleen"} and all(p[:4] == b"\x89PNG" for p in page.plots.values())
    z = next(f.detail for f in cases[k[3]].flags if f.kind == "outlier")
    assert z.startswith("robust z = +") and float(z.split()[3].rstrip(":")) > 20


def test_a_missing_case_report_is_flagged(tmp_path):
    planted = write_batch_output(tmp_path / "out", SyntheticRun(n_cases=6))
    (tmp_path / "out" / planted.keys[2] / "report.json").unlink()
    with Ledger.open(tmp_path / "out" / LEDGER_FILE) as ledger:
        page = gather_review(tmp_path / "out", ledger)
    assert {c.key: [f.kind for f in c.flags] for c in page.cases if c.flags} == {
        planted.keys[2]: ["no-report"]
    }
    assert next(c for c in page.cases if c.key == planted.keys[2]).volumes == {}


def test_no_outlier_flags_with_too_few_cases(tmp_path):
    planted = SyntheticRun(n_cases=4, outliers={1: ("liver", 5.0)})
    write_batch_output(tmp_path / "out", planted)
    page_path = rebuild_review_page(tmp_path / "out")
    with Ledger.open(tmp_path / "out" / LEDGER_FILE) as ledger:
        page = gather_review(tmp_path / "out", ledger)
    assert all(not c.flags for c in page.cases)
    assert "needs 5 or more cases" in page_path.read_text()


# ------------------------------------------------------------------------------------------------ case objects
def test_label_objects_counts_components_and_finds_the_largest_and_the_border():
    lab = np.zeros((20, 20, 10), dtype=np.uint8)
    lab[2:6, 2:6, 2:6] = 1  # 64 voxels, inside
    lab[10:13, 10:13, 3:5] = 1  # 18 voxels
    lab[7, 7, 7] = 1  # 1 voxel; touches the others only if diagonal: it does not
    lab[0:8, 12:20, 0:4] = 2  # 256 voxels, on the i=0, j=19 and k=0 faces
    objects = label_objects(lab, {0: "bg", 1: "organ", 2: "big", 3: "absent"})
    assert objects.stats == {
        "organ": {"value": 1, "components": 3, "largest_voxels": 64, "touches_border": False},
        "big": {"value": 2, "components": 1, "largest_voxels": 256, "touches_border": True},
        "absent": {"value": 3, "components": 0, "largest_voxels": 0, "touches_border": False},
    }
    assert objects.largest is not None and objects.largest.sum() == 256 and objects.largest[0, 12, 0]
    diagonal = np.zeros((5, 5, 5), dtype=np.uint8)
    diagonal[1, 1, 1] = diagonal[2, 2, 2] = 1  # full connectivity: one object
    assert label_objects(diagonal, {1: "x"}).stats["x"]["components"] == 1
    assert label_objects(np.zeros((4, 4, 4), np.uint8), {1: "x"}).largest is None


def test_the_thumbnail_goes_through_the_largest_object():
    image = np.zeros((1, 40, 40, 40), dtype=np.float32)
    lab = np.zeros((1, 40, 40, 40), dtype=np.uint8)
    lab[0, 25:35, 25:35, 25:35] = 1  # the largest object: 1000 voxels
    for a in range(4):  # 12 small ones (125 voxels each) pull the centroid of all foreground to z = 18
        for b in range(3):
            lab[0, a * 9 + 1 : a * 9 + 6, b * 9 + 1 : b * 9 + 6, 14:19] = 1
    focus = label_objects(lab[0], {1: "x"}).largest
    assert focus.sum() == 1000

    def red_in_axial(qc) -> int:
        axial = qc.rgb[: qc.panels[0].height, : qc.panels[0].width]
        return int((axial == np.asarray([230, 25, 75], dtype=np.uint8)).all(axis=-1).sum())

    # 1 mm voxels, 40 px panels: one pixel per voxel; the axial slice cuts the largest object's 10x10 section
    assert red_in_axial(render_qc(image, lab, affine=np.eye(4), focus=focus, panel_px=40, alpha=1.0)) == 100
    assert red_in_axial(render_qc(image, lab, affine=np.eye(4), panel_px=40, alpha=1.0)) == 12 * 25


def test_every_case_report_records_its_objects(run):
    out = run["out"]
    for key in run["outliers"].values():
        report = json.loads((out / key / "report.json").read_text())
        body = report["objects"]["body"]
        assert body["components"] >= 1 and body["largest_voxels"] <= report["labels"]["body"]["voxels"]
        assert isinstance(body["touches_border"], bool)
        assert report["outputs"]["thumb"]["file"] == "thumb.png"
