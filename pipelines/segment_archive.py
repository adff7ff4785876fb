#!/usr/bin/env python
"""Segment a whole archive (a tree of DICOM studies or NIfTI files) with one model, resumably.

    python pipelines/segment_archive.py ARCHIVE/ RESULTS/ --model models:/liver@champion

The same as ``medseg segment``. Run it again after an interruption (Ctrl-C, kill, power loss): items whose outputs
are complete and unchanged are skipped, the rest is computed. Results: one folder per series/case named by a keyed
hash, ``batch-report.json`` / ``batch-report.csv`` (no patient identifiers), ``report.html`` (the review page) and
``quarantine.csv`` (the unusable inputs with their reason codes and paths). Exit status: 0 when every item is DONE
or QUARANTINED, 1 when some FAILED (run again to retry them), 2 for a bad argument or input, 130 when interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg.cli import main as medseg_main  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return medseg_main(["segment", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
