"""Archive segmentation throughput: 1 and 2 local workers, Ray with 1 and 2 actors, and the work queue against the
old static split with one slow study.

Part 1 segments ``--studies`` synthetic CT studies (``--shape`` voxels, DICOM) with a small medseg UNet (random
weights: throughput only) and prints, per configuration, studies/min end to end (including worker / actor start-up,
which is paid once per run) and in the steady state (from the first to the last finished study, by the ledger's
timestamps). Configurations: ``local:1`` (one process), ``local:2`` (two worker processes), ``ray:1`` and ``ray:2``
(``--ray local:N``: a new local Ray instance with N CPUs and N actors).

Part 2 adds one study ``--slow-factor`` times bigger (about as many times slower) to ``--slow-studies`` small ones
and compares the wall time of two workers fed from the queue (largest study first) with the old static split
(``items[i::2]`` in key order), emulated by two single-worker runs on the two halves, started together (each its own
process, as the old workers were).

Usage: ``python benchmarks/scale.py [--workdir DIR] [--studies 16] [--shape 64 64 48] [--no-ray]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from model_specs import save_unet_checkpoint  # noqa: E402

from medseg.batch import LEDGER_FILE, ScaleOut, discover, segment_archive  # noqa: E402
from medseg.config import ChannelConfig  # noqa: E402
from medseg.inference.options import InferenceOptions  # noqa: E402

FORMATS = ("nifti", "report")


def _archive(root: Path, n: int, shape: tuple[int, ...], offset: int = 0) -> None:
    from medseg.synthetic.dataset import write_ct_study

    for i in range(n):
        write_ct_study(root / f"study{offset + i:03d}", shape=shape, seed=offset + i, n_organs=2)


def _finished(out: Path) -> list[float]:
    with contextlib.closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT finished_at FROM items WHERE status = 'DONE' ORDER BY finished_at"
        ).fetchall()
    return [r[0] for r in rows]


def _makespan(*outs: Path) -> float:
    """Seconds from the first study started to the last finished, over the ledgers of ``outs`` (no start-up)."""
    first, last = [], []
    for out in outs:
        with contextlib.closing(sqlite3.connect(f"file:{out / LEDGER_FILE}?mode=ro", uri=True)) as conn:
            a, b = conn.execute(
                "SELECT MIN(started_at), MAX(finished_at) FROM items WHERE status = 'DONE'"
            ).fetchone()
        first.append(a)
        last.append(b)
    return max(last) - min(first)


def _run(inp: Path, out: Path, ckpt: Path, workers: int, ray: str | None) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = segment_archive(
        inp,
        out,
        str(ckpt),
        InferenceOptions(device="cpu"),
        formats=FORMATS,
        workers=workers,
        progress=False,
        scale=ScaleOut(ray=ray),
    )
    wall = time.perf_counter() - start
    done = _finished(out)
    steady = (
        (len(done) - 1) / (done[-1] - done[0]) * 60 if len(done) > 1 and done[-1] > done[0] else float("nan")
    )
    return {
        "done": summary.counts()["DONE"],
        "wall_s": wall,
        "per_min": len(done) / wall * 60,
        "steady_per_min": steady,
    }


def _static_half(inp: Path, keys: list[str], half: Path) -> None:
    """A tree of hard links to the studies of ``keys`` (the items of one old static worker)."""
    found = discover(inp, [ChannelConfig("CT", series={"modality": "CT"})], b"\0" * 32)
    by_key = {it.key: Path(it.relative_path).parts[0] for it in found.items}
    half.mkdir(parents=True)
    for key in keys:
        # hard links (not symlinks: discovery does not follow links leaving the input folder)
        shutil.copytree(inp / by_key[key], half / by_key[key], copy_function=os.link)


def _static_split(inp: Path, work: Path, ckpt: Path) -> float:
    """Wall time of two single-worker runs on ``items[0::2]`` and ``items[1::2]`` (key order), run together."""
    found = discover(inp, [ChannelConfig("CT", series={"modality": "CT"})], b"\0" * 32)
    keys = [it.key for it in found.items]
    code = (
        "import sys; sys.path.insert(0, sys.argv[4]); from medseg.batch import segment_archive; "
        "from medseg.inference import InferenceOptions; "
        "segment_archive(sys.argv[1], sys.argv[2], sys.argv[3], InferenceOptions(device='cpu'), "
        "formats=('nifti', 'report'), progress=False)"
    )
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    for i in range(2):
        half = work / f"static-in{i}"
        shutil.rmtree(half, ignore_errors=True)
        _static_half(inp, keys[i::2], half)
        out = work / f"static-out{i}"
        shutil.rmtree(out, ignore_errors=True)
        root = str(Path(__file__).resolve().parents[1])
        procs.append(
            subprocess.Popen([sys.executable, "-c", code, str(half), str(out), str(ckpt), root], env=env)
        )
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a static-split run failed (exit {p.returncode})")
    wall = time.perf_counter() - start
    done = sum(len(_finished(work / f"static-out{i}")) for i in range(2))
    if done != len(keys):
        raise SystemExit(f"the static-split runs segmented {done} of {len(keys)} studies")
    return wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--studies", type=int, default=16)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48))
    ap.add_argument("--slow-studies", type=int, default=10)
    ap.add_argument(
        "--slow-factor", type=int, default=10, help="the slow study has about this many times the voxels"
    )
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--only-slow", action="store_true", help="part 2 only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="medseg-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = save_unet_checkpoint(work / "model.pt", features=(8, 16, 32), patch=32)
    print(f"machine: {os.cpu_count()} CPU(s), shared with other jobs; workdir {work}")

    inp = work / "archive"
    if not inp.exists():
        _archive(inp, args.studies, tuple(args.shape))
    configs = [] if args.only_slow else [("local:1", 1, None), ("local:2", 2, None)]
    if not args.no_ray and not args.only_slow:
        configs += [("ray:1", 1, "local:1"), ("ray:2", 2, "local:2")]
    results = {}
    print(
        f"\npart 1: {args.studies} studies of {tuple(args.shape)} voxels, UNet (8, 16, 32), outputs {FORMATS}"
    )
    print(f"{'config':<10}{'done':>6}{'wall s':>9}{'studies/min':>13}{'steady/min':>12}")
    for name, workers, ray in configs:
        r = _run(inp, work / f"out-{name.replace(':', '')}", ckpt, workers, ray)
        results[name] = r
        print(f"{name:<10}{r['done']:>6}{r['wall_s']:>9.1f}{r['per_min']:>13.1f}{r['steady_per_min']:>12.1f}")

    slow_inp = work / "slow-archive"
    if not slow_inp.exists():
        _archive(slow_inp, args.slow_studies, tuple(args.shape))
        f = args.slow_factor ** (1 / 3)
        big = tuple(int(round(s * f)) for s in args.shape)
        _archive(slow_inp, 1, big, offset=900)
    single = _run(slow_inp, work / "slow-single", ckpt, 1, None)
    with contextlib.closing(
        sqlite3.connect(f"file:{work / 'slow-single' / LEDGER_FILE}?mode=ro", uri=True)
    ) as c:
        times = sorted(r[0] for r in c.execute("SELECT seconds_total FROM items WHERE status = 'DONE'"))
    ratio = times[-1] / (sum(times[:-1]) / len(times[:-1]))
    dynamic = _run(slow_inp, work / "slow-queue", ckpt, 2, None)["wall_s"]
    dynamic_span = _makespan(work / "slow-queue")
    static = _static_split(slow_inp, work, ckpt)
    static_span = _makespan(work / "static-out0", work / "static-out1")
    print(
        f"\npart 2: {args.slow_studies} studies + 1 study {ratio:.1f}x slower (measured in one process: "
        f"{times[-1]:.2f} s vs {sum(times[:-1]) / len(times[:-1]):.2f} s)"
    )
    print("  (wall: whole run incl. start-up; span: first study started to last finished, from the ledgers)")
    print(f"  one process          wall {single['wall_s']:7.1f} s")
    print(f"  2 workers, queue     wall {dynamic:7.1f} s   span {dynamic_span:7.1f} s")
    print(f"  2 workers, static    wall {static:7.1f} s   span {static_span:7.1f} s")
    print(f"  static / queue: wall {static / dynamic:.2f}, span {static_span / dynamic_span:.2f}")
    results["slow"] = {
        "ratio": ratio,
        "single_s": single["wall_s"],
        "queue_s": dynamic,
        "static_s": static,
        "queue_span_s": dynamic_span,
        "static_span_s": static_span,
    }
    (work / "scale.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
