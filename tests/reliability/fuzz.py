"""Seeded DICOM fuzzing: mutants of one slice of a valid series, each through `medseg convert`.

A mutant is the series with one slice (the first, middle or last, chosen per mutant) changed by a truncation or
a byte flip (XOR with a random non-zero byte). Half of the mutants are confined to the data elements of groups 0020
(geometry), 0028 (pixel format) and 7FE0 (pixel data); the other half hit any byte of the file.

Each mutant is classified by what its change hit:

* ``format``: a truncation; a tag, VR or length field of any element; the 'DICM' marker or file meta (group 0002);
  the value of a geometry element of group 0020 (ImagePositionPatient, ImageOrientationPatient, SeriesInstanceUID,
  ...) or of a pixel-format element of group 0028 other than the rescale pair (Rows, Columns, PixelSpacing, Bits*,
  HighBit, PixelRepresentation, SamplesPerPixel, PhotometricInterpretation);
* ``rescale``: the value of RescaleSlope / RescaleIntercept. A flipped digit that still makes a valid decimal
  string gives the slice another rescale, which DICOM allows per slice: it cannot be told from a real one;
* ``pixels``: a pixel value (no checksum in DICOM: undetectable by design);
* ``other``: the preamble or the value of any other element.

and by its outcome: ``refused`` (exit 2 with a reason code), ``same`` (converted, geometry and voxels equal to the
original conversion), ``changed`` (converted with another shape, an affine off by more than ``GEOMETRY_TOL_MM`` or
other voxel values), ``crash`` (exit other than 0 / 2, or a traceback) or ``hang`` (more than ``HANG_S``).

The promise: 0 crashes, 0 hangs, 0 ``format`` mutants ``changed``.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from inputs import canary_hits, element_map, run_cli, write_ct

N_SLICES = 20
GEOMETRY_TOL_MM = 0.02  # 2x the documented position tolerance (0.01 mm, DS rounding noise is accepted)
HANG_S = 20.0
TARGET_GROUPS = (0x0020, 0x0028, 0x7FE0)
RESCALE_TAGS = (0x00281052, 0x00281053)


@dataclass
class Mutant:
    index: int
    victim: int
    kind: str  # "truncate" or "flip"
    offset: int
    category: str
    tag: int | None
    outcome: str = "?"
    code: str = ""
    seconds: float = 0.0


@dataclass
class FuzzResult:
    mutants: list[Mutant] = field(default_factory=list)

    def count(self, **match: str) -> int:
        return sum(all(getattr(m, k) == v for k, v in match.items()) for m in self.mutants)

    @property
    def violations(self) -> list[Mutant]:
        return [m for m in self.mutants if m.category == "format" and m.outcome == "changed"]

    def summary(self) -> dict[str, object]:
        return {
            "mutants": len(self.mutants),
            "crashes (traceback or other exit)": self.count(outcome="crash"),
            "hangs": self.count(outcome="hang"),
            "refused": self.count(outcome="refused"),
            "converted unchanged": self.count(outcome="same"),
            "converted changed": self.count(outcome="changed"),
            "format mutants": self.count(category="format"),
            "format mutants converted changed (must be 0)": len(self.violations),
            "rescale mutants converted changed (valid per-slice rescale)": self.count(
                category="rescale", outcome="changed"
            ),
            "pixel-value mutants converted changed (no checksum in DICOM)": self.count(
                category="pixels", outcome="changed"
            ),
            "codes": dict(sorted(Counter(m.code for m in self.mutants if m.code).items())),
            "slowest mutant s": round(max((m.seconds for m in self.mutants), default=0.0), 3),
        }


def _category(data_len: int, elements: list, offset: int, truncate: bool) -> tuple[str, int | None]:
    if truncate:
        return "format", None
    if offset < 128:
        return "other", None
    if offset < 132:
        return "format", None  # the 'DICM' marker
    for e in elements:
        if e.start <= offset < e.value_start + e.length:
            if offset < e.value_start or e.group == 0x0002:
                return "format", e.tag
            if e.tag in RESCALE_TAGS:
                return "rescale", e.tag
            if e.group == 0x7FE0:
                return "pixels", e.tag
            if e.group in (0x0020, 0x0028):
                return "format", e.tag
            return "other", e.tag
    return "format", None  # past the last element: structure


def _plan(rng: np.random.Generator, original: bytes, elements: list, targeted: bool) -> tuple[str, int]:
    truncate = rng.random() < 0.25
    if targeted:
        chosen = [e for e in elements if e.group in TARGET_GROUPS]
        e = chosen[int(rng.integers(len(chosen)))]
        offset = int(rng.integers(e.start, e.value_start + e.length))
    else:
        offset = int(rng.integers(0, len(original)))
    return ("truncate" if truncate else "flip"), offset


def mutate(
    rng: np.random.Generator, original: bytes, elements: list, targeted: bool
) -> tuple[bytes, str, int, tuple[str, int | None]]:
    """One mutant of ``original``: (bytes, "truncate" | "flip", offset, (category, tag))."""
    kind, offset = _plan(rng, original, elements, targeted)
    if kind == "truncate":
        mutated = original[:offset]
    else:
        buf = bytearray(original)
        buf[offset] ^= int(rng.integers(1, 256))
        mutated = bytes(buf)
    return mutated, kind, offset, _category(len(original), elements, offset, kind == "truncate")


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _compare(out: Path, volume: np.ndarray, affine: np.ndarray) -> bool:
    img = nib.load(str(out))
    data = np.asarray(img.dataobj)
    return (
        data.shape == volume.shape
        and np.allclose(img.affine, affine, atol=GEOMETRY_TOL_MM, rtol=0)
        and np.array_equal(data.astype(np.float64), volume.astype(np.float64))
    )


def run_fuzz(
    workdir: Path, n_mutants: int, seed: int = 0, capfd: object = None, only: set[int] | None = None
) -> FuzzResult:
    """Write a 20-slice 16 x 16 CT series under ``workdir`` and run ``n_mutants`` mutants through convert
    (``only``: run just these mutant indices, e.g. to replay a failure; the others are drawn but not run)."""
    series = workdir / "series"
    volume, affine, files = write_ct(series, N_SLICES, seed=seed)
    originals = {k: files[k].read_bytes() for k in (0, N_SLICES // 2, N_SLICES - 1)}
    maps = {k: element_map(files[k]) for k in originals}
    rng = np.random.default_rng(seed)
    result = FuzzResult()
    out = workdir / "out.nii.gz"
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(n_mutants):
            victim = [0, N_SLICES // 2, N_SLICES - 1][int(rng.integers(3))]
            original, elements = originals[victim], maps[victim]
            mutated, kind, offset, (category, tag) = mutate(rng, original, elements, targeted=i % 2 == 1)
            m = Mutant(i, victim, kind, offset, category, tag)
            if only is not None and i not in only:
                continue
            files[victim].write_bytes(mutated)
            out.unlink(missing_ok=True)
            start = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, HANG_S)
            try:
                res = run_cli(["convert", str(series), str(out)], capfd)
                signal.setitimer(signal.ITIMER_REAL, 0)
                text = res.stdout + res.stderr
                if res.code not in (0, 2) or "Traceback" in text or canary_hits(text):
                    m.outcome = "crash"
                elif res.code == 2:
                    m.outcome = "refused"
                    m.code = res.stderr.split("[", 1)[-1].split("]", 1)[0]
                else:
                    m.outcome = "same" if _compare(out, volume, affine) else "changed"
            except _Timeout:
                m.outcome = "hang"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                m.seconds = time.perf_counter() - start
                files[victim].write_bytes(original)
            result.mutants.append(m)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return result


def describe(m: Mutant) -> str:
    tag = f"{m.tag:08X}" if m.tag is not None else "-"
    return (
        f"mutant {m.index}: {m.kind} slice {m.victim} at byte {m.offset} (element {tag}, {m.category}) -> "
        f"{m.outcome} {m.code}"
    )
