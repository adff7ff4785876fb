"""Seeded fuzz through one ``medseg segment`` batch (fuzz_batch.py): 100 mutated series in one run."""

from __future__ import annotations

from pathlib import Path

from fuzz_batch import run_batch_fuzz

N_MUTANTS = 100


def test_a_batch_of_fuzzed_series_accounts_for_every_item_and_never_ends_done_with_changed_geometry(
    tmp_path: Path,
) -> None:
    result = run_batch_fuzz(tmp_path, N_MUTANTS, seed=5)
    summary = result.summary()
    # the run survived (segment_archive returned) and every discovered item has a final state
    assert result.counts["PENDING"] == 0, summary
    assert result.counts["DONE"] + result.counts["QUARANTINED"] + result.counts["FAILED"] == result.discovered
    assert result.discovered >= N_MUTANTS - 5, summary  # a damaged UID may split or merge a series, not lose it
    assert result.violations == [], summary
    # the batch exercised both refusals and harmless mutants
    assert result.counts["QUARANTINED"] >= 20 and result.done_same >= 20, summary
