"""Choose exactly one series from a scan, by explicit rules; never "first series wins"."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medseg.data.dicom.series import DicomScan, SeriesInfo, describe_problems
from medseg.errors import ConfigError, InputError, ReasonCode

__all__ = ["SeriesRule", "select_series"]


@dataclass(frozen=True)
class SeriesRule:
    """Which series to take from a study.

    Attributes:
        modality: DICOM Modality (e.g. "CT", "MR"), case-insensitive; ``None`` accepts any.
        description: regular expression searched (``re.search``, case-insensitive) in SeriesDescription.
        image_type: tokens that must all appear in ImageType (case-insensitive), e.g. ``["ORIGINAL", "PRIMARY"]``.
        min_slices: minimum number of slices of the stack.
    """

    modality: str | None = None
    description: str | None = None
    image_type: tuple[str, ...] | None = None
    min_slices: int = 1

    def __post_init__(self) -> None:
        if self.modality is not None and (not isinstance(self.modality, str) or not self.modality.strip()):
            raise ConfigError(f"series rule 'modality' must be a non-empty string, got {self.modality!r}")
        if self.description is not None:
            if not isinstance(self.description, str):
                raise ConfigError(
                    f"series rule 'description' must be a regex string, got {self.description!r}"
                )
            try:
                re.compile(self.description)
            except re.error as exc:
                raise ConfigError(
                    f"series rule 'description' is not a valid regex ({exc}): {self.description!r}"
                ) from exc
        if self.image_type is not None:
            tokens = (self.image_type,) if isinstance(self.image_type, str) else self.image_type
            if not isinstance(tokens, Sequence) or not all(isinstance(t, str) and t.strip() for t in tokens):
                raise ConfigError(
                    f"series rule 'image_type' must be a list of strings, got {self.image_type!r}"
                )
            object.__setattr__(self, "image_type", tuple(t.strip().upper() for t in tokens))
        if isinstance(self.min_slices, bool) or not isinstance(self.min_slices, int) or self.min_slices < 1:
            raise ConfigError(f"series rule 'min_slices' must be an integer >= 1, got {self.min_slices!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeriesRule:
        """Build a rule from a config mapping; unknown keys raise ConfigError naming them."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"series rule must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown series rule key(s) {', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**dict(d))

    def matches_modality(self, series: SeriesInfo) -> bool:
        return self.modality is None or series.modality.upper() == self.modality.strip().upper()

    def matches(self, series: SeriesInfo) -> bool:
        if not self.matches_modality(series):
            return False
        if self.description is not None and not re.search(
            self.description, series.series_description, re.IGNORECASE
        ):
            return False
        if self.image_type is not None and not set(self.image_type) <= {t.upper() for t in series.image_type}:
            return False
        return series.n_slices >= self.min_slices

    def describe(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) is not None
        ]
        return "SeriesRule(" + ", ".join(parts) + ")"


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "\n".join(f"  - {s.summary()}" for s in series)


def select_series(
    scan: DicomScan, rule: SeriesRule | Mapping[str, Any] | None = None, root: str | Path | None = None
) -> SeriesInfo:
    """Return the one series of ``scan`` that ``rule`` selects.

    Args:
        scan: result of :func:`medseg.data.dicom.scan.scan_dicom_tree`.
        rule: a :class:`SeriesRule`, a mapping for :meth:`SeriesRule.from_dict`, or ``None`` (then the scan must
            hold exactly one series).
        root: path named in errors (defaults to ``scan.root``).

    Raises:
        InputError: NO_SERIES (nothing found / nothing matches), WRONG_MODALITY (series exist but none has the
            rule's modality), AMBIGUOUS_SERIES (several candidates; the message lists them and asks for a rule).
    """
    if rule is not None and not isinstance(rule, SeriesRule):
        rule = SeriesRule.from_dict(rule)
    where = str(root if root is not None else scan.root)
    if not scan.series:
        skipped = (
            f"; {len(scan.problems)} file(s) skipped: {describe_problems(scan.problems)}"
            if scan.problems
            else ""
        )
        raise InputError(ReasonCode.NO_SERIES, where, f"no DICOM image series found{skipped}")
    candidates = [s for s in scan.series if rule is None or rule.matches(s)]
    if len(candidates) == 1:
        return candidates[0]
    if rule is not None and not candidates:
        code = ReasonCode.NO_SERIES
        if not any(rule.matches_modality(s) for s in scan.series):
            code = ReasonCode.WRONG_MODALITY
        raise InputError(code, where, f"no series matches {rule.describe()}; found:\n{_listing(scan.series)}")
    how = (
        "no series rule was given" if rule is None else f"{rule.describe()} matches {len(candidates)} of them"
    )
    raise InputError(
        ReasonCode.AMBIGUOUS_SERIES,
        where,
        f"{len(candidates)} candidate series and {how}; choose one with a series rule "
        f"(modality / description / image_type / min_slices):\n{_listing(candidates)}",
    )
