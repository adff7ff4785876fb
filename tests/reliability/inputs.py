"""Generators of good and broken inputs for the reliability battery (DICOM series and NIfTI files).

Everything is written from scratch in a few milliseconds: tiny CT series (16 x 16 pixels) with canary identifiers
in every identifying tag and in the folder name, and NIfTI files whose header bytes are patched afterwards. The
canaries must never appear in anything medseg prints or writes (:data:`CANARIES`).
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import io
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

# identifying values: none may show up in stdout, stderr, logs or outputs
CANARIES = {
    "PatientName": "ZQCANARY^PATNAME",
    "PatientID": "ZQCANARYPID",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ZQCANARYACC",
    "InstitutionName": "ZQCANARY INSTITUTE",
    "SeriesDescription": "ZQCANARY SERIESDESC",
}
CANARY_FOLDER = "ZQCANARYFOLDER_DOE^JOHN"
CANARY_STRINGS = (*CANARIES.values(), "ZQCANARY", "DOE^JOHN")

SIZE = 16  # pixels per side
STEP_MM = 2.0
SPACING = (0.7, 0.8, STEP_MM)


@dataclass
class Built:
    """What a battery case wrote: the path given to the command and, for OK cases, the truth to compare with."""

    path: Path
    volume: np.ndarray | None = None
    affine: np.ndarray | None = None


# UIDs of the series a case writes: fixed by default (seeded), unique per case inside a uid_namespace(case name),
# so that every case of a batch archive is its own series (a batch groups slices by SeriesInstanceUID archive-wide)
_UID_NAMESPACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("uid_namespace", default=None)


@contextlib.contextmanager
def uid_namespace(name: str) -> Iterator[None]:
    """Inputs written inside get UIDs of their own, derived from ``name`` (see :func:`case_uid`)."""
    token = _UID_NAMESPACE.set(name)
    try:
        yield
    finally:
        _UID_NAMESPACE.reset(token)


def in_uid_namespace() -> bool:
    return _UID_NAMESPACE.get() is not None


def case_uid(*parts: object) -> str:
    """A UID from ``parts``, and from the current :func:`uid_namespace` when one is set."""
    ns = _UID_NAMESPACE.get()
    return str(generate_uid(entropy_srcs=[*(() if ns is None else ("battery-case", ns)), *map(str, parts)]))


def ct_volume(n: int = 12, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Integer HU values (i, j, k) between air and bone."""
    return np.random.default_rng(seed).integers(-1000, 1500, size=(size, size, n)).astype(np.float32)


def ct_affine(n: int, size: int = SIZE, orientation: str = "axial") -> np.ndarray:
    return affine_for(orientation, SPACING, (size, size, n), origin=(10.0, -20.0, 30.0))


def write_ct(
    folder: Path,
    n: int = 12,
    *,
    seed: int = 0,
    size: int = SIZE,
    orientation: str = "axial",
    extra_tags: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """A CT series with canary identifiers; returns (volume, affine, files in slice order)."""
    vol = ct_volume(n, seed, size)
    affine = ct_affine(n, size, orientation)
    tags = {k: v for k, v in CANARIES.items() if k not in ("PatientName", "PatientID", "SeriesDescription")}
    tags.update(extra_tags or {})
    kwargs.setdefault("series_description", CANARIES["SeriesDescription"])
    if in_uid_namespace():
        kwargs.setdefault("study_uid", case_uid("study", seed))
        kwargs.setdefault("frame_of_reference_uid", case_uid("frame-of-reference", seed))
        number = kwargs.get("series_number", 1)
        kwargs.setdefault("series_uid", case_uid("series", seed, number, orientation, n))
    files = write_dicom_series(
        vol,
        affine,
        folder,
        patient_name=CANARIES["PatientName"],
        patient_id=CANARIES["PatientID"],
        seed=seed,
        extra_tags=tags,
        **kwargs,
    )
    return vol, affine, files


def edit(path: Path, change: Callable[[pydicom.Dataset], Any]) -> None:
    """Change one DICOM file through pydicom (and save it back)."""
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def edit_all(files: Sequence[Path], change: Callable[[pydicom.Dataset], Any]) -> None:
    for f in files:
        edit(f, change)


@dataclass(frozen=True)
class Element:
    """Where one data element sits in a file: tag, start of its header, start and length of its value."""

    tag: int
    start: int
    value_start: int
    length: int

    @property
    def group(self) -> int:
        return self.tag >> 16


def element_map(path: Path) -> list[Element]:
    """Top-level elements of an explicit VR little endian file (file meta included), in file order."""
    data = path.read_bytes()
    out: list[Element] = []
    pos = 132
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
    while pos + 8 <= len(data):
        group, elem = np.frombuffer(data[pos : pos + 4], "<u2")
        vr = data[pos + 4 : pos + 6]
        if vr in long_vrs:
            length = int(np.frombuffer(data[pos + 8 : pos + 12], "<u4")[0])
            value = pos + 12
        else:
            length = int(np.frombuffer(data[pos + 6 : pos + 8], "<u2")[0])
            value = pos + 8
        out.append(Element(int(group) << 16 | int(elem), pos, value, length))
        pos = value + length
    return out


def find_element(path: Path, tag: int) -> Element:
    for e in element_map(path):
        if e.tag == tag:
            return e
    raise KeyError(f"{tag:08X} not in {path.name}")


def cut_at(path: Path, offset: int) -> None:
    path.write_bytes(path.read_bytes()[:offset])


def set_raw_value(path: Path, tag: int, value: bytes) -> None:
    """Overwrite an element's value bytes in place (same length, e.g. '1.0 ' -> 'ab  ')."""
    e = find_element(path, tag)
    if len(value) != e.length:
        raise ValueError(f"value of {tag:08X} has {e.length} bytes, got {len(value)}")
    data = bytearray(path.read_bytes())
    data[e.value_start : e.value_start + e.length] = value
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------------ NIfTI
def nifti_volume(shape: Sequence[int] = (12, 10, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 100, size=tuple(shape)).astype(np.float32)


NIFTI_AFFINE = np.array(
    [[-0.8, 0, 0, 40.0], [0, 0.9, 0, -30.0], [0, 0, 2.5, 12.0], [0, 0, 0, 1]], dtype=np.float64
)


def write_nifti(
    path: Path,
    data: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
    dtype: Any = None,
) -> Path:
    """A NIfTI-1 file with both transforms set (codes as given)."""
    data = nifti_volume() if data is None else data
    affine = NIFTI_AFFINE if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _field_offset(name: str) -> tuple[int, np.dtype]:
    dt = nib.Nifti1Header.template_dtype
    sub, offset = dt.fields[name][:2]
    return offset, sub


def patch_nifti(path: Path, name: str, value: Any, index: int | None = None) -> None:
    """Overwrite one NIfTI-1 header field (or one entry of an array field) in the file's bytes."""
    offset, sub = _field_offset(name)
    if index is not None:
        base = sub.base
        offset += index * base.itemsize
        raw = np.asarray(value, dtype=base).tobytes()
    else:
        raw = np.asarray(value, dtype=sub).tobytes() if not isinstance(value, bytes) else value
    gz = path.name.endswith(".gz")
    data = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    data[offset : offset + len(raw)] = raw
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if gz else bytes(data))


# ------------------------------------------------------------------------------------------------------ CLI
@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    outputs: list[Path] = field(default_factory=list)


def run_cli(argv: list[str], capfd: Any = None) -> CliResult:
    """``medseg.cli.main(argv)`` in-process. With pytest's ``capfd`` everything written to the process's stdout /
    stderr is captured (third-party handlers included); without it, ``sys.stdout`` / ``sys.stderr`` are."""
    import contextlib
    import logging

    from medseg.cli import main

    root_logger = logging.getLogger()
    saved = root_logger.handlers[:]
    # main() configures logging for a process (root and "medseg" levels, noisy libraries): put it all back so
    # that in-process runs leave no trace on the tests that follow
    levels = {
        name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    }
    root_level = root_logger.level
    for h in saved:  # basicConfig only installs its stderr handler when the root logger has none
        root_logger.removeHandler(h)
    out, err = io.StringIO(), io.StringIO()
    redirect = (
        contextlib.nullcontext()
        if capfd is not None
        else contextlib.ExitStack()
    )
    try:
        with redirect as stack:
            if stack is not None:
                stack.enter_context(contextlib.redirect_stdout(out))
                stack.enter_context(contextlib.redirect_stderr(err))
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
            except Exception:  # a crash is a finding: record its traceback as the user would see it
                import traceback

                traceback.print_exc()
                code = -1
    finally:
        for h in root_logger.handlers[:]:
            root_logger.removeHandler(h)
        for h in saved:
            root_logger.addHandler(h)
        root_logger.setLevel(root_level)
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
    if capfd is not None:
        captured = capfd.readouterr()
        return CliResult(code, captured.out, captured.err)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_cli_subprocess(argv: list[str], cwd: Path, timeout: float = 120.0) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "medseg.cli", *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


REASON_LINE = re.compile(r"^medseg (info|convert): \[([A-Z_]+)\] ([^:\n]+): (.+)$")


def canary_hits(text: str) -> list[str]:
    return [c for c in CANARY_STRINGS if c in text]


def buffer_of(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
