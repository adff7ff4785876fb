"""The battery's table (cases.py): each bad input refused with its reason code, naming the file; no traceback,
no identifier in anything printed or written; good inputs converted with their exact voxels and geometry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from battery import run_case
from cases import CASE_IDS, CASES, Case
from other_cases import OTHER_CASES, OtherCase
from report import DOC, render


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_input_case(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    outcome = run_case(case, tmp_path, capfd)

    assert outcome.errors == []
    assert (outcome.convert, outcome.info) == (case.convert, case.info)


def test_docs_table_matches_the_cases() -> None:
    """docs/reliability.md is generated from the tables (python tests/reliability/report.py); the test above and
    test_batch_battery.py check that every row's actual outcome is its expected one."""
    assert DOC.read_text() == render({c.name: (c.convert, c.info, c.segment_expected) for c in CASES}, None)


@pytest.mark.parametrize("case", OTHER_CASES, ids=[o.function for o in OTHER_CASES])
def test_other_cases_name_tests_that_exist(case: OtherCase) -> None:
    """Every node id in other_cases.py is a test function defined at the top level of its file (read, not
    imported: the files import torch, MLflow, Ray)."""
    assert case.node.count("::") == 1 and case.file.is_file(), case.node
    tree = ast.parse(case.file.read_text())
    tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    assert case.function in tests, case.node
