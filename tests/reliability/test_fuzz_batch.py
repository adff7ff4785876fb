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


def test_no_canary_identifier_in_anything_the_batch_wrote_or_logged(tmp_path: Path, caplog, capfd) -> None:
    """Canary identifiers sit in every identifying tag and in the folder names of the fuzzed archive: none may
    appear in the logs (DEBUG included), stdout/stderr, output names or any file of the output folder except
    quarantine.csv (the user's list of input paths, by design) and SEG files (they carry the patient module)."""
    from inputs import CANARY_STRINGS

    with caplog.at_level("DEBUG"):
        run_batch_fuzz(tmp_path, 30, seed=9)
    captured = capfd.readouterr()
    logged = "\n".join(  # the archive writer (this test's own set-up) may name its folders
        r.getMessage() for r in caplog.records if not r.name.startswith("medseg.synthetic")
    )
    text = logged + captured.out + captured.err
    assert [c for c in CANARY_STRINGS if c in text] == []
    out = tmp_path / "out"
    written = [p for p in out.rglob("*") if p.is_file() and p.name not in ("quarantine.csv", "seg.dcm")]
    assert len(written) > 30
    for path in written:
        assert [c for c in CANARY_STRINGS if c in str(path.relative_to(out))] == [], path
        data = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        hits = [c for c in CANARY_STRINGS if c.encode() in data]
        assert hits == [], (path.relative_to(out), hits)
