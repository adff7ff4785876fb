"""Seeded fuzz (fuzz.py): 200 mutants of one slice of a 20-slice series through `medseg convert`."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz import describe, run_fuzz

N_MUTANTS = 200


def test_fuzzed_slices_never_crash_hang_or_convert_with_changed_geometry(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    result = run_fuzz(tmp_path, N_MUTANTS, seed=13, capfd=capfd)
    summary = result.summary()

    crashes = [describe(m) for m in result.mutants if m.outcome in ("crash", "hang")]
    assert crashes == []
    assert [describe(m) for m in result.violations] == []
    # the run exercised both refusals and harmless mutants (a fuzz that refuses everything proves nothing)
    assert summary["refused"] >= 50 and summary["converted unchanged"] >= 20, summary
    assert summary["format mutants"] >= N_MUTANTS // 2, summary
