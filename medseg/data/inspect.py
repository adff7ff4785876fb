"""Human-readable listings of what a path holds (``medseg info``): series and volumes, never patient identifiers.

Only geometry and acquisition descriptors are shown (modality, shape, spacing, orientation codes, UID tails);
PatientName, PatientID, birth dates and the like are never read into the listing. SeriesDescription is free text
that can hold identifiers (DICOM PS3.15 Annex E lists it for removal), so it is shown only when asked for
(``show_descriptions=True``, ``medseg info --show-descriptions``). Errors name files relative to the listed path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.data.nifti import is_nifti
from medseg.data.sitk_reader import is_sitk_volume
from medseg.errors import InputError

logger = logging.getLogger(__name__)


def _spacing(values) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)


def orientation_codes(affine: np.ndarray) -> str:
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, dtype=np.float64)))


def describe_volume(path: Path) -> str:
    """One line for a volume file: shape, spacing, orientation codes, dtype."""
    from medseg.data.io import load_volume

    img = load_volume(path, dtype=None, allow_channels=True, allow_nan=True)
    aff = img.affine.numpy()
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    chans = f" channels={img.shape[0]}" if img.shape[0] > 1 else ""
    return (
        f"{path.name}: shape={'x'.join(map(str, img.shape[1:]))}{chans} spacing={_spacing(spacing)} mm "
        f"orientation={orientation_codes(aff)} dtype={str(img.dtype).replace('torch.', '')}"
    )


def _description(text: str, show: bool) -> str:
    return f"{text!r} " if show else ""


def _series_lines(root: Path, show_descriptions: bool = False) -> Iterator[str]:
    from medseg.data.dicom import scan_dicom_tree
    from medseg.data.dicom.geometry import MIN_VOLUME_SLICES

    scan = scan_dicom_tree(root)
    yield f"DICOM: {len(scan.series)} series/stack(s), {len(scan.problems)} skipped file(s)"
    for i, s in enumerate(scan.series, 1):
        spacing = _spacing(s.spacing) if s.spacing else "?"
        status = "ok" if s.ok else "PROBLEMS"
        if s.ok and s.n_slices < MIN_VOLUME_SLICES:
            status = f"ok as 2D only (NOT_VOLUME: fewer than {MIN_VOLUME_SLICES} slices)"
        yield (
            f"  [{i}] {s.modality or '?':<3} {_description(s.series_description, show_descriptions)}"
            f"{'frames' if s.multiframe else 'slices'}={s.n_slices}{' (multi-frame)' if s.multiframe else ''} "
            f"shape={'x'.join(map(str, s.shape))} spacing={spacing} mm orientation={s.orientation or '?'} "
            f"image_type={'/'.join(s.image_type)} uid=...{s.stack_id[-20:]} {status}"
        )
        for p in s.problems:
            yield f"      {p.code.value}: {p.path}: {p.detail}"
    for p in scan.problems:
        if not (is_nifti(p.path) or is_sitk_volume(p.path) or str(p.path).endswith((".json", ".csv", ".yaml"))):
            yield f"  skipped {p.path}: {p.code.value}: {p.detail}"


def describe_path(path: Path, *, show_descriptions: bool = False) -> Iterator[str]:
    """Lines describing ``path``: a volume file, or a folder of DICOM series and/or volume files.

    Args:
        path: a file or folder.
        show_descriptions: include SeriesDescription (free text that may hold identifiers).

    Raises:
        InputError: ``path`` (a volume file) is refused; the error names it relative to its folder.
    """
    path = Path(path)
    if not path.exists():
        from medseg.errors import ReasonCode

        raise InputError(ReasonCode.FILE_NOT_FOUND, path.name, "no such file or folder")
    if path.is_file():
        try:
            if is_nifti(path) or is_sitk_volume(path):
                yield describe_volume(path)
            else:
                yield from _dicom_file_lines(path, show_descriptions)
        except InputError as exc:
            raise exc.relative_to(path.parent) from None
        return
    volumes = sorted(p for p in path.rglob("*") if p.is_file() and (is_nifti(p) or is_sitk_volume(p)))
    for v in volumes:
        try:
            yield describe_volume(v).replace(v.name, os.path.relpath(v, path), 1)
        except InputError as exc:
            detail = exc.relative_to(path).detail
            yield f"{os.path.relpath(v, path)}: refused: {exc.code.value}: {detail}"
    yield from _series_lines(path, show_descriptions)


def _dicom_file_lines(path: Path, show_descriptions: bool = False) -> Iterator[str]:
    from medseg.data.dicom import scan_dicom_files

    scan = scan_dicom_files([path], path.parent)
    for s in scan.series:
        yield (
            f"{path.name}: DICOM {s.modality or '?'} {_description(s.series_description, show_descriptions)}"
            f"{s.columns}x{s.rows} orientation={s.orientation or '?'}"
        )
    for p in scan.problems:
        yield f"{path.name}: {p.code.value}: {p.detail}"
