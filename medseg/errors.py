"""Errors with reason codes.

Every problem with a user's input is reported as a :class:`ReasonCode` plus the offending file (relative to the
input root where there is one) and a human sentence. Batch runs store the code; the CLI prints the message.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path


class ReasonCode(str, Enum):
    """Named reasons why an input file, series or case was refused or skipped."""

    # files
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    EMPTY_FILE = "EMPTY_FILE"
    NOT_DICOM = "NOT_DICOM"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    UNREADABLE = "UNREADABLE"
    TRUNCATED_HEADER = "TRUNCATED_HEADER"
    TRUNCATED_PIXEL_DATA = "TRUNCATED_PIXEL_DATA"
    TRUNCATED_FILE = "TRUNCATED_FILE"
    HEADER_SIZE_MISMATCH = "HEADER_SIZE_MISMATCH"
    NO_PIXEL_DATA = "NO_PIXEL_DATA"
    MISSING_GEOMETRY = "MISSING_GEOMETRY"
    # a header field contradicts its format (NIfTI dim[0], pixdim, scl_inter)
    INVALID_HEADER = "INVALID_HEADER"
    UNSUPPORTED_DTYPE = "UNSUPPORTED_DTYPE"  # complex, RGB or unknown voxel type
    # DICOM BitsStored / HighBit / PixelRepresentation impossible
    INVALID_PIXEL_FORMAT = "INVALID_PIXEL_FORMAT"
    INVALID_RESCALE = "INVALID_RESCALE"  # DICOM RescaleSlope/Intercept non-numeric, zero slope, half a pair
    # volume content / geometry
    NAN_VOXELS = "NAN_VOXELS"
    INTENSITY_RANGE = "INTENSITY_RANGE"  # values impossible for the modality (e.g. CT above 32767 HU)
    QFORM_SFORM_MISMATCH = "QFORM_SFORM_MISMATCH"
    WRONG_DIMENSIONS = "WRONG_DIMENSIONS"
    INVALID_AFFINE = "INVALID_AFFINE"
    # DICOM series geometry
    INCONSISTENT_SHAPE = "INCONSISTENT_SHAPE"
    INCONSISTENT_SPACING = "INCONSISTENT_SPACING"
    MIXED_ORIENTATION = "MIXED_ORIENTATION"
    NON_ORTHONORMAL_ORIENTATION = "NON_ORTHONORMAL_ORIENTATION"
    GANTRY_TILT = "GANTRY_TILT"
    MISSING_SLICE = "MISSING_SLICE"
    NONUNIFORM_SPACING = "NONUNIFORM_SPACING"
    DUPLICATE_SLICE = "DUPLICATE_SLICE"
    TOO_FEW_SLICES = "TOO_FEW_SLICES"
    # fewer slices than a 3D volume needs (medseg.data.dicom.geometry.MIN_VOLUME_SLICES)
    NOT_VOLUME = "NOT_VOLUME"
    # a slice of the stack's grid and folder split off into a stack of its own (damaged UID / orientation tag?)
    STRAY_SLICE = "STRAY_SLICE"
    INCONSISTENT_PIXEL_FORMAT = "INCONSISTENT_PIXEL_FORMAT"  # bits / sign / photometric differ between slices
    INCONSISTENT_RESCALE = "INCONSISTENT_RESCALE"  # some slices have RescaleSlope/Intercept, others not
    # an input file changed (size or modification time) while it was being segmented, e.g. still being copied
    INPUT_CHANGED = "INPUT_CHANGED"
    # selection
    NO_SERIES = "NO_SERIES"
    AMBIGUOUS_SERIES = "AMBIGUOUS_SERIES"
    WRONG_MODALITY = "WRONG_MODALITY"
    # multimodal cases / labels
    MISSING_CHANNEL = "MISSING_CHANNEL"
    CHANNEL_GEOMETRY_MISMATCH = "CHANNEL_GEOMETRY_MISMATCH"
    LABEL_GEOMETRY_MISMATCH = "LABEL_GEOMETRY_MISMATCH"
    LABEL_VALUES = "LABEL_VALUES"


class MedsegError(Exception):
    """Base class of medseg's own errors."""


class ConfigError(MedsegError, ValueError):
    """A configuration value is invalid; the message names the key."""


class InputError(MedsegError):
    """A user's input cannot be used.

    Args:
        code: the reason code.
        path: the offending file or folder (relative to the input root where known).
        detail: a sentence saying what is wrong.
    """

    def __init__(self, code: ReasonCode, path: str | Path | None, detail: str) -> None:
        self.code = ReasonCode(code)
        self.path = None if path is None else str(path)
        self.detail = detail
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"[{self.code.value}] {where}{detail}")

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code.value, "path": self.path, "detail": self.detail}

    def relative_to(self, root: str | Path, fallback: str | None = None) -> InputError:
        """The same error naming its file relative to ``root`` (absolute paths can hold patient folders).

        An absolute path (or one spelled from the current folder through ``root``) is made relative to ``root``
        (``root`` itself becomes ``"."``); a path outside ``root`` becomes ``fallback`` (default: its file name);
        other relative paths are taken as relative to ``root`` already. ``root`` is replaced by ``<input>`` in the
        detail.
        """
        root_path = Path(os.path.abspath(root))
        path = self.path
        if path is not None:
            p = Path(path)
            full = Path(os.path.abspath(p))
            if p.is_absolute() or full == root_path or full.is_relative_to(root_path) and p.parts[:1] == Path(
                root
            ).parts[:1]:
                try:
                    path = full.relative_to(root_path).as_posix() or "."
                except ValueError:
                    path = fallback if fallback is not None else p.name
        detail = self.detail.replace(str(root_path), "<input>")
        if str(root) not in (".", ""):
            detail = detail.replace(str(root), "<input>")
        return InputError(self.code, path, detail)


class Problem:
    """A non-fatal finding (e.g. a junk file skipped during discovery), same fields as :class:`InputError`."""

    __slots__ = ("code", "path", "detail")

    def __init__(self, code: ReasonCode, path: str | Path | None, detail: str) -> None:
        self.code = ReasonCode(code)
        self.path = None if path is None else str(path)
        self.detail = detail

    def __repr__(self) -> str:
        return f"Problem({self.code.value}, {self.path!r}, {self.detail!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.code, self.path, self.detail) == (
            other.code,
            other.path,
            other.detail,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.path, self.detail))

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code.value, "path": self.path, "detail": self.detail}

    def to_error(self) -> InputError:
        return InputError(self.code, self.path, self.detail)
