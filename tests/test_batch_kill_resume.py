"""SIGKILL a `medseg segment` batch at seeded points, resume after each kill (benchmarks/kill_resume.py, smaller):
the final output equals a clean run's, with no temp file, no duplicate ledger row and no DONE item lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from kill_resume import kill_and_resume  # noqa: E402

SERIES, KILLS = 20, 5


@pytest.mark.slow
def test_seeded_kills_then_resume_give_the_clean_run_outputs(tmp_path: Path) -> None:
    result = kill_and_resume(SERIES, KILLS, seed=3, work=tmp_path)
    assert result["final exit code"] == 0, result
    assert result["kills that landed mid-run"] >= KILLS - 1, result  # the kills hit running processes
    done = result["DONE after each kill"]
    assert done == sorted(done) and done[-1] < SERIES, result  # nothing DONE is lost; the kills were mid-batch
    assert result["DONE"] == result["ledger rows"] == SERIES and result["duplicate rows"] == 0, result
    assert result["temp files left"] == 0, result
    assert result["label maps identical to the clean run"], result
    # a kill costs at most the case it caught in flight
    assert result["cases recomputed (in flight at a kill)"] <= result["kills that landed mid-run"], result
