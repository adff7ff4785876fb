"""Benchmark: build the review page (``report.html``) of a synthetic 2,000-case batch run.

A synthetic output folder (:mod:`medseg.synthetic.batch_output`: a real ledger, ``batch-report.json`` and one
``report.json`` per DONE case with four labels; 20 quarantined, 5 failed, 10 planted volume outliers) is written
first (not timed); then :func:`medseg.batch.review.rebuild_review_page` is timed: reading the ledger and every
case report, computing the flags, drawing one volume plot per label and writing the page. Target: under 10 s.

Usage: ``.venv/bin/python benchmarks/report_page.py [--cases 2000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from medseg.batch.ledger import LEDGER_FILE, Ledger
from medseg.batch.review import gather_review, rebuild_review_page
from medseg.synthetic.batch_output import SyntheticRun, write_batch_output

TARGET_S = 10.0
LABELS = ("liver", "spleen", "kidney_left", "kidney_right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.cases
    run = SyntheticRun(
        n_cases=n,
        labels=LABELS,
        outliers={i: (LABELS[i % len(LABELS)], 5.0 if i % 2 else 0.2) for i in range(7, n, max(1, n // 10))},
        quarantined={i: "MISSING_SLICE" for i in range(3, n, max(1, n // 20))},
        failed=[i for i in range(5, n, max(1, n // 5))],
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        start = time.perf_counter()
        write_batch_output(out, run)
        print(
            f"synthetic output folder: {n} cases written in {time.perf_counter() - start:.1f} s (not timed)"
        )
        times, gather = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with Ledger.open(out / LEDGER_FILE) as ledger:
                page = gather_review(out, ledger)
            gather.append(time.perf_counter() - start)
            start = time.perf_counter()
            path = rebuild_review_page(out)
            times.append(time.perf_counter() - start)
        flagged = sum(1 for c in page.cases if c.flags)
        size_mb = path.stat().st_size / 1e6
        best, median = min(times), statistics.median(times)
        print(f"cases {len(page.cases)}, flagged {flagged}, labels {len(page.labels)}, page {size_mb:.2f} MB")
        print(f"gather only (ledger + reports + flags + plots): median {statistics.median(gather):.2f} s")
        print(
            f"page build (medseg report): best {best:.2f} s, median {median:.2f} s over {args.repeats} run(s)"
        )
        verdict = "OK" if median < TARGET_S else "SLOWER THAN TARGET"
        print(f"target < {TARGET_S:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
