"""The pixel-value tags of one slice, validated: rescale (slope / intercept), pixel format, padding value.

Each function returns the values as written together with what is impossible about them, so that the header reader
can keep the slice in its stack with a ``header_problem`` and the stack refuses to load naming that slice (a bad
value is never replaced by a default such as slope 1 / intercept 0).
"""

from __future__ import annotations

import math

from pydicom.multival import MultiValue

from medseg.data.dicom.elements import DS_PATTERN, MONOCHROME, TAGS, Elements

__all__ = ["padding_value", "pixel_format", "rescale"]


def rescale(el: Elements) -> tuple[float, float, bool, str | None]:
    """(slope, intercept, present, problem): both tags absent means 1 / 0 (e.g. MR); one without the other, a
    value that is not a DICOM decimal string, a non-finite value or a zero slope is a problem."""
    texts = {name: el.strings(name) for name in ("RescaleSlope", "RescaleIntercept")}
    present = [name for name, text in texts.items() if text]
    if not present:
        return 1.0, 0.0, False, None
    if len(present) == 1:
        other = "RescaleIntercept" if present[0] == "RescaleSlope" else "RescaleSlope"
        return 1.0, 0.0, True, f"{present[0]} is given but {other} is missing (they come as a pair)"
    values: dict[str, float] = {}
    for name, text in texts.items():
        shown = "\\".join(text)[:32]
        if len(text) != 1 or not DS_PATTERN.fullmatch(text[0]):
            return 1.0, 0.0, True, f"{name} {shown!r} is not a decimal number"
        values[name] = float(text[0])
        if not math.isfinite(values[name]):
            return 1.0, 0.0, True, f"{name} {shown!r} is not finite"
    if values["RescaleSlope"] == 0.0:
        return 1.0, 0.0, True, "RescaleSlope is 0 (every pixel would get the same value)"
    return values["RescaleSlope"], values["RescaleIntercept"], True, None


def pixel_format(
    el: Elements, bits: int
) -> tuple[tuple[int | None, int | None, int | None, int | None, str], str | None]:
    """The slice's pixel format as written, and what is impossible about it (None when it is consistent)."""
    stored, high, sign = el.us("BitsStored"), el.us("HighBit"), el.us("PixelRepresentation")
    photometric = el.text("PhotometricInterpretation").upper()
    fmt = (bits, stored, high, sign, photometric)
    if stored is not None and not 1 <= stored <= bits:
        return fmt, f"BitsStored {stored} is not between 1 and BitsAllocated {bits}"
    if high is not None and high != (stored if stored is not None else bits) - 1:
        return fmt, f"HighBit {high} is not BitsStored - 1 ({(stored if stored is not None else bits) - 1})"
    if sign not in (None, 0, 1):
        return fmt, f"PixelRepresentation {sign} is neither 0 (unsigned) nor 1 (signed)"
    if photometric and photometric not in MONOCHROME:
        return (
            fmt,
            f"PhotometricInterpretation {photometric[:20]!r} is not a grey-scale image (MONOCHROME1/2)",
        )
    return fmt, None


def padding_value(el: Elements) -> float | None:
    """PixelPaddingValue (US or SS) as a number, None when absent or unreadable."""
    tag = TAGS["PixelPaddingValue"]
    if tag not in el.raw:
        return None
    try:
        value = el.ds[tag].value
        return float(value[0] if isinstance(value, (list, MultiValue)) else value)
    except Exception:  # a damaged optional value only loses the padding exception of the range check
        return None
