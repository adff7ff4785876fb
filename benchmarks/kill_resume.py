"""SIGKILL a batch run at seeded points, resume after each kill, and compare with one clean run.

A 50-series synthetic CT archive (``--series``) is segmented with the thresholding model (a short sleep per window
so that kills land mid-case). ``--kills`` times, a ``medseg segment`` process is started on the same output folder
and SIGKILLed once it has finished a case of its own, after a seeded delay of up to one case's time (so the
kills land mid-run on fast and slow machines alike); a last run completes the folder. Printed: the number of kills that landed while
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


def _done_count(out: Path) -> int:
    """DONE items in the ledger so far (0 while it does not exist or is busy)."""
    try:
        return sum(1 for r in _rows(out) if r[1] == "DONE")
    except (sqlite3.Error, FileNotFoundError):
        return 0


def _segment(archive: Path, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN.format(tests=str(REPO / "tests")), "segment", str(archive), str(out),
         "--model", str(model), "--no-progress", "--formats", "nifti,report"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _labels(out: Path) -> dict[str, str]:
    from medseg.hashing import file_sha256

    return {p.parent.name: file_sha256(p) for p in out.glob("*/label.nii.gz")}


def kill_and_resume(series: int, kills: int, seed: int, work: Path) -> dict:
    """Segment ``series`` studies once cleanly and once through ``kills`` seeded SIGKILLs plus a last run; the
    figures printed by this benchmark (``tests/test_batch_kill_resume.py`` runs a smaller one in CI)."""
    from test_batch_support import save_threshold_checkpoint, write_archive

    archive = write_archive(work / "archive", n_good=series, bad=False).root
    model = save_threshold_checkpoint(work / "model.pt", delay_s=0.05)
    clean_out, out = work / "clean", work / "killed"
    start = time.perf_counter()
    clean = _segment(archive, clean_out, model)
    clean.wait()
    clean_s = time.perf_counter() - start
    out.mkdir(parents=True)  # the same naming key, so that case folders are named alike in both outputs
    (out / ".medseg-name-key").write_bytes((clean_out / ".medseg-name-key").read_bytes())
    rng = np.random.default_rng(seed)
    landed, done_before = 0, []
    with contextlib.closing(sqlite3.connect(f"file:{clean_out / 'medseg-ledger.sqlite'}?mode=ro", uri=True)) as conn:
        totals = [t for (t,) in conn.execute("SELECT seconds_total FROM items WHERE status = 'DONE'") if t]
    per_case_s = float(np.median(totals)) if totals else clean_s / series  # start-up excluded
    for _ in range(kills):
        proc = _segment(archive, out, model)
        # past start-up (imports, model) whatever this machine's speed: once the run finished a case of its own,
        # then a seeded delay of up to one case's time, so that the kill catches a case anywhere in its work
        target = (done_before[-1] if done_before else 0) + 1
        deadline = time.monotonic() + 300
        while proc.poll() is None and _done_count(out) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, per_case_s)))
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
    return {
        "series": series, "kills": kills, "kills that landed mid-run": landed,
        "DONE after each kill": done_before,
        "final exit code": final.returncode,
        "ledger rows": len(rows), "duplicate rows": len(rows) - len({r[0] for r in rows}),
        "DONE": sum(1 for r in rows if r[1] == "DONE"),
        "cases recomputed (in flight at a kill)": recomputed,
        "recomputed per landed kill": round(recomputed / max(landed, 1), 2),
        "temp files left": len(temps),
        "label maps": len(killed_labels),
        "label maps identical to the clean run": killed_labels == clean_labels and len(clean_labels) == series,
        "clean run seconds": round(clean_s, 1),
        "workdir": str(work),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-kill-"))
    result = kill_and_resume(args.series, args.kills, args.seed, work)
    print(json.dumps(result, indent=2))
    ok = (
        result["final exit code"] == 0 and result["temp files left"] == 0
        and result["label maps identical to the clean run"] and result["ledger rows"] == result["label maps"]
    )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
