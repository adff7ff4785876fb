"""Run one case of the table through `medseg info` and `medseg convert` and judge what the user got."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from cases import Built, Case
from inputs import CANARY_FOLDER, REASON_LINE, canary_hits, run_cli

from medseg.errors import ReasonCode

CODES = {c.value for c in ReasonCode}
_WORD = re.compile(r"\b[A-Z][A-Z_]{3,}\b")


@dataclass
class Outcome:
    info: str = "?"
    convert: str = "?"
    errors: list[str] = field(default_factory=list)


def _common(what: str, text: str, errors: list[str]) -> None:
    if "Traceback" in text:
        errors.append(f"{what}: a traceback reached the user:\n{text[-2000:]}")
    hits = canary_hits(text)
    if hits:
        errors.append(f"{what}: identifiers {hits} in the output:\n{text[-1000:]}")


def _reason(what: str, res: Any, errors: list[str], expected_path: str | None) -> str:
    lines = res.stderr.rstrip("\n").split("\n")
    m = REASON_LINE.match(lines[0])
    if not m:
        errors.append(f"{what}: exit 2 without a reason line first: {res.stderr[-600:]!r}")
        return "?"
    extra = [ln for ln in lines[1:] if not ln.startswith("  - ")]  # AMBIGUOUS_SERIES lists the candidates
    if extra:
        errors.append(f"{what}: more than one line on stderr: {res.stderr[-800:]!r}")
    if expected_path is not None and m.group(3) != expected_path:
        errors.append(f"{what}: reason line names {m.group(3)!r}, expected {expected_path!r}")
    return m.group(2)


def _check_output(out: Path, built: Built, errors: list[str]) -> None:
    img = nib.load(str(out))
    data = np.asarray(img.dataobj)
    if built.volume is not None:
        if data.shape != built.volume.shape:
            errors.append(f"convert: shape {data.shape}, expected {built.volume.shape}")
        elif not np.array_equal(data.astype(np.float64), built.volume.astype(np.float64)):
            diff = np.abs(data.astype(np.float64) - built.volume.astype(np.float64)).max()
            errors.append(f"convert: voxel values differ from the truth by up to {diff}")
    if built.affine is not None and not np.allclose(img.affine, built.affine, atol=1e-4):
        errors.append(f"convert: affine {img.affine.tolist()} differs from {built.affine.tolist()}")
    raw = out.read_bytes()
    raw = gzip.decompress(raw) if out.name.endswith(".gz") else raw
    hits = canary_hits(raw.decode("latin-1"))
    if hits:
        errors.append(f"convert: identifiers {hits} inside the written NIfTI")


def run_case(case: Case, workdir: Path, capfd: Any = None) -> Outcome:
    """Build ``case`` under ``workdir/<name>/<CANARY_FOLDER>`` and run both commands on it."""
    root = workdir / case.name / CANARY_FOLDER
    built = case.build(root)
    outcome = Outcome()
    errors = outcome.errors

    res = run_cli(["info", str(built.path)], capfd)
    _common("info", res.stdout + res.stderr, errors)
    if res.code == 2:
        outcome.info = _reason("info", res, errors, None)
    elif res.code == 0:
        found = [w for w in _WORD.findall(res.stdout) if w in CODES]
        outcome.info = case.info if case.info in found else (found[0] if found else "OK")
    else:
        errors.append(f"info: exit {res.code}: {res.stderr[-800:]!r}")

    out = workdir / case.name / "out.nii.gz"
    res = run_cli(["convert", str(built.path), str(out), *case.args], capfd)
    _common("convert", res.stdout + res.stderr, errors)
    if res.code == 0:
        outcome.convert = "OK"
        _check_output(out, built, errors)
    elif res.code == 2:
        outcome.convert = _reason("convert", res, errors, case.path)
        if out.exists():
            errors.append("convert: refused but wrote its output")
    else:
        errors.append(f"convert: exit {res.code}: {res.stderr[-800:]!r}")
    return outcome
