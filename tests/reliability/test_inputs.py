"""The battery's table (cases.py): each bad input refused with its reason code, naming the file; no traceback,
no identifier in anything printed or written; good inputs converted with their exact voxels and geometry."""

from __future__ import annotations

from pathlib import Path

import pytest
from battery import run_case
from cases import CASE_IDS, CASES, Case
from report import DOC, render


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_input_case(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    outcome = run_case(case, tmp_path, capfd)

    assert outcome.errors == []
    assert (outcome.convert, outcome.info) == (case.convert, case.info)


def test_docs_table_matches_the_cases() -> None:
    """docs/reliability.md is generated from the table (python tests/reliability/report.py); the test above
    checks that every row's actual outcome is its expected one."""
    assert DOC.read_text() == render({c.name: (c.convert, c.info) for c in CASES}, None)
