"""Seeded DICOM fuzz: 1,000 mutants of one slice of a valid 20-slice CT series, each through `medseg convert`.

Mutants are truncations and byte flips of the first, middle or last slice, half of them confined to the elements
of groups 0020 / 0028 / 7FE0 (see tests/reliability/fuzz.py for the classification). Prints the counts: crashes
(a traceback or an exit other than 0 / 2), hangs, refusals by reason code, and how many mutants that altered a
geometry or pixel-format value were converted with changed geometry or voxels (must be 0). CI runs 200 of them
(tests/reliability/test_fuzz_dicom.py).

Then the same number of mutated series (one mutated slice each) go through one ``medseg segment`` batch run
(tests/reliability/fuzz_batch.py; CI runs 100): every discovered item must end DONE, QUARANTINED or FAILED, and no
DONE output may have another geometry, or other labels for a mutant that touched a geometry or pixel-format value.

Usage: ``python benchmarks/fuzz_dicom.py [--mutants 1000] [--seed 13] [--show N] [--no-batch]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--show", type=int, default=10, help="list up to N failing mutants")
    parser.add_argument("--no-batch", action="store_true", help="skip the medseg segment batch stage")
    args = parser.parse_args()

    from fuzz import describe, run_fuzz

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_fuzz(Path(tmp), args.mutants, seed=args.seed)
    seconds = time.perf_counter() - start
    summary = result.summary()
    summary["seconds"] = round(seconds, 1)
    print(json.dumps(summary, indent=2))
    bad = [m for m in result.mutants if m.outcome in ("crash", "hang")] + result.violations
    for m in bad[: args.show]:
        print(describe(m))
    if args.no_batch:
        return 1 if bad else 0

    import logging

    from fuzz_batch import run_batch_fuzz

    logging.getLogger("medseg").setLevel(logging.ERROR)  # one warning per quarantined item otherwise
    with tempfile.TemporaryDirectory() as tmp:
        batch = run_batch_fuzz(Path(tmp), args.mutants, seed=args.seed)
    print("medseg segment batch:", json.dumps({**batch.summary(), "reasons": batch.reasons}, indent=2))
    accounted = sum(batch.counts[k] for k in ("DONE", "QUARANTINED", "FAILED")) == batch.discovered
    for line in batch.violations[: args.show]:
        print(line)
    return 1 if bad or batch.violations or not accounted else 0


if __name__ == "__main__":
    sys.exit(main())
