"""Validation of network options: the valid modes and checks that raise a ConfigError naming the bad option.

UNet and UNet++ share their options; :func:`check_unet_options` checks them all before any layer is built, so a
typo in a config fails with one line that names the key and, for choices, lists the valid values.
"""

from __future__ import annotations

from collections.abc import Sequence

from medseg.errors import ConfigError

SPATIAL_DIMS = (2, 3)
UPSAMPLE_MODES = ("deconv", "linear")
DOWNSAMPLE_MODES = ("maxpool", "strided")


def check_choice(option: str, value: object, valid: Sequence[object]) -> None:
    """Raise :class:`~medseg.errors.ConfigError` (a ``ValueError``) naming ``option`` unless ``value`` is valid."""
    if isinstance(value, bool) or value not in valid:
        choices = ", ".join(repr(v) for v in valid)
        raise ConfigError(f"{option}={value!r} is not valid; choose one of: {choices}")


def check_positive_int(option: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ConfigError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")
    return value


def check_features(features: Sequence[int]) -> tuple[int, ...]:
    """Validate encoder widths (one per level, at least two levels) and return them as a tuple."""
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise ConfigError(f"features must be a sequence of positive integers, got {features!r}")
    if len(features) < 2:
        raise ConfigError(f"features needs at least 2 levels (one downsampling), got {list(features)!r}")
    for i, width in enumerate(features):
        check_positive_int(f"features[{i}]", width)
    return tuple(features)


def check_flag(option: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise a ConfigError naming ``option``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{option} must be true or false, got {value!r}")
    return value


def check_unet_options(
    spatial_dims: object,
    in_channels: object,
    out_channels: object,
    features: Sequence[int],
    upsample: object,
    downsample: object,
    residual: object,
    deep_supervision: object,
) -> tuple[int, ...]:
    """Validate the options UNet and UNet++ share; return the checked feature widths."""
    check_positive_int("spatial_dims", spatial_dims)
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    checked = check_features(features)
    check_choice("upsample", upsample, UPSAMPLE_MODES)
    check_choice("downsample", downsample, DOWNSAMPLE_MODES)
    check_flag("residual", residual)
    check_flag("deep_supervision", deep_supervision)
    return checked
