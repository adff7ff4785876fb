"""Read-speed benchmark: medseg's DICOM reader vs SimpleITK, and medseg's NIfTI loading vs plain nibabel.

Writes a synthetic CT series (default 200 slices of 512x512) and a 256^3 .nii.gz into a temporary folder (or
``--workdir``), then times, after one warm-up read each, the median of ``--repeats`` reads, interleaving the two
readers of a pair:

* DICOM: ``medseg.data.dicom.read_dicom(folder)`` (scan + select + read, float32 HU) against SimpleITK
  ``ImageSeriesReader`` (``GetGDCMSeriesFileNames`` + ``Execute`` + ``GetArrayFromImage``);
* NIfTI: ``medseg.data.io.load_volume(path)`` (channel-first MetaTensor) against
  ``nib.load(path).get_fdata(dtype=np.float32)``.

Both readers of a pair are checked to return the same voxels. Ratios are medseg / reference (goal <= 1.0).
Timings include the OS page cache state left by the warm-up (files are hot), which is the common case in training.

Usage: ``python benchmarks/io_read.py [--slices 200] [--size 512] [--nifti-size 256] [--repeats 5] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _median_times(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, object]]:
    """Warm each reader up once, then time them interleaved (A, B, A, B, ...) so that load from other processes
    on the machine affects both alike; return the median seconds and the last result of each."""
    results = {name: fn() for name, fn in fns.items()}  # warm-up (also fills the page cache)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def _write_ct(folder: Path, slices: int, size: int) -> None:
    from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 2000, size=(size, size, slices)).astype(np.float32)
    write_dicom_series(
        vol, affine_for("axial", (0.7, 0.7, 1.25), vol.shape), folder, series_description="bench"
    )


def _write_nifti(path: Path, size: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 2000, size=(size, size, size), dtype=np.int16)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.0, 1.0]))
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)


def bench_dicom(workdir: Path, slices: int, size: int, repeats: int) -> list[tuple[str, float]]:
    import SimpleITK as sitk

    from medseg.data.dicom import read_dicom

    folder = workdir / "ct"
    if not folder.exists():
        print(f"writing {slices} x {size}x{size} CT slices to {folder} ...", flush=True)
        _write_ct(folder, slices, size)

    def medseg_read() -> np.ndarray:
        return read_dicom(folder)[0]

    def sitk_read() -> np.ndarray:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return sitk.GetArrayFromImage(reader.Execute())

    names = ("DICOM medseg read_dicom", "DICOM SimpleITK ImageSeriesReader")
    times, results = _median_times({names[0]: medseg_read, names[1]: sitk_read}, repeats)
    if not np.array_equal(np.asarray(results[names[0]]), np.asarray(results[names[1]]).transpose(2, 1, 0)):
        raise SystemExit("DICOM benchmark: medseg and SimpleITK returned different voxels")
    return [(name, times[name]) for name in names]


def bench_nifti(workdir: Path, size: int, repeats: int) -> list[tuple[str, float]] | None:
    import nibabel as nib

    try:
        from medseg.data.io import load_volume
    except ImportError as exc:  # the lead's io module may not exist yet
        print(f"NIfTI part skipped: medseg.data.io.load_volume not importable ({exc})")
        return None
    path = workdir / f"vol{size}.nii.gz"
    if not path.exists():
        print(f"writing {size}^3 NIfTI to {path} ...", flush=True)
        _write_nifti(path, size)

    names = ("NIfTI medseg load_volume", "NIfTI nibabel get_fdata(float32)")
    times, results = _median_times(
        {names[0]: lambda: load_volume(path), names[1]: lambda: nib.load(path).get_fdata(dtype=np.float32)},
        repeats,
    )
    if not np.array_equal(np.asarray(results[names[0]][0]), results[names[1]]):
        raise SystemExit("NIfTI benchmark: medseg and nibabel returned different voxels")
    return [(name, times[name]) for name in names]


def _print_table(rows: list[tuple[str, float]], pairs: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    times = dict(rows)
    print(f"\n{'reader':<{width}}  median s")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.3f}")
    print()
    for ours, ref in pairs:
        if ours in times and ref in times:
            ratio = times[ours] / times[ref]
            verdict = "ok" if ratio <= 1.0 else "SLOWER"
            print(f"ratio {ours} / {ref.split(' ', 1)[1]}: {ratio:.2f} ({verdict}, goal <= 1.0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200, help="DICOM slices (default 200)")
    parser.add_argument("--size", type=int, default=512, help="DICOM rows = columns (default 512)")
    parser.add_argument("--nifti-size", type=int, default=256, help="NIfTI cube edge (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (default 5)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the test data here (default: temp dir)"
    )
    parser.add_argument("--skip-nifti", action="store_true", help="only run the DICOM part")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    with tempfile.TemporaryDirectory(prefix="medseg-io-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = bench_dicom(workdir, args.slices, args.size, args.repeats)
        pairs = [("DICOM medseg read_dicom", "DICOM SimpleITK ImageSeriesReader")]
        if not args.skip_nifti:
            nifti = bench_nifti(workdir, args.nifti_size, args.repeats)
            if nifti:
                rows += nifti
                pairs.append(("NIfTI medseg load_volume", "NIfTI nibabel get_fdata(float32)"))
        _print_table(rows, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
