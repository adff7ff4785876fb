"""SIGKILL a batch run at seeded points, resume after each kill, and compare with one clean run.

A 50-series synthetic CT archive (``--series``) is segmented with the thresholding model (a short sleep per window
so that kills land mid-case). ``--kills`` times, a ``medseg segment`` process is started on the same output folder
and SIGKILLed after a seeded delay; a last run completes the folder. Printed: the number of kills that landed while
the run was computing, cases recomputed because a kill caught them in flight (ledger attempts beyond one, per kill),
temp files left after the final run, duplicate ledger rows, and whether every output's SHA-256 equals the clean
run's (label maps; reports carry timings).

Usage: ``python benchmarks/kill_resume.py [--series 50] [--kills 20] [--seed 0] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

RUN = """
import sys
sys.path.insert(0, {tests!r})
import test_batch_support as s
s.register_threshold()
from medseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _rows(out: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{out / 'medseg-ledger.sqlite'}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT key, status, attempts, checksums FROM items").fetchall()


def _segment(archive: Path, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN.format(tests=str(REPO / "tests")), "segment", str(archive), str(out),
         "--model", str(model), "--no-progress", "--formats", "nifti,report"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _labels(out: Path) -> dict[str, str]:
    from medseg.hashing import file_sha256

    return {p.parent.name: file_sha256(p) for p in out.glob("*/label.nii.gz")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from test_batch_support import save_threshold_checkpoint, write_archive

    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-kill-"))
    archive = write_archive(work / "archive", n_good=args.series, bad=False).root
    model = save_threshold_checkpoint(work / "model.pt", delay_s=0.05)
    clean_out, out = work / "clean", work / "killed"
    start = time.perf_counter()
    clean = _segment(archive, clean_out, model)
    clean.wait()
    clean_s = time.perf_counter() - start
    out.mkdir(parents=True)  # the same naming key, so that case folders are named alike in both outputs
    (out / ".medseg-name-key").write_bytes((clean_out / ".medseg-name-key").read_bytes())
    rng = np.random.default_rng(args.seed)
    landed, done_before = 0, []
    for _ in range(args.kills):
        proc = _segment(archive, out, model)
        time.sleep(float(rng.uniform(3.0, 3.0 + clean_s / 4)))  # past start-up (imports), somewhere in the run
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait()
        with contextlib.suppress(sqlite3.Error, FileNotFoundError):
            done_before.append(sum(1 for r in _rows(out) if r[1] == "DONE"))
    final = _segment(archive, out, model)
    final.wait()
    rows = _rows(out)
    recomputed = sum(max(0, r[2] - 1) for r in rows)
    temps = [p for p in out.rglob(".medseg-tmp*")]
    clean_labels, killed_labels = _labels(clean_out), _labels(out)
    print(json.dumps({
        "series": args.series, "kills": args.kills, "kills that landed mid-run": landed,
        "DONE after each kill": done_before,
        "final exit code": final.returncode,
        "ledger rows": len(rows), "duplicate rows": len(rows) - len({r[0] for r in rows}),
        "DONE": sum(1 for r in rows if r[1] == "DONE"),
        "cases recomputed (in flight at a kill)": recomputed,
        "recomputed per landed kill": round(recomputed / max(landed, 1), 2),
        "temp files left": len(temps),
        "label maps identical to the clean run": killed_labels == clean_labels,
        "clean run seconds": round(clean_s, 1),
        "workdir": str(work),
    }, indent=2))  # fmt: skip
    ok = final.returncode == 0 and not temps and killed_labels == clean_labels and len(rows) == len(killed_labels)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
