"""The ``tracking:`` section of the configuration.

This module must stay importable without MLflow: the config loader imports it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from medseg.errors import ConfigError

# MLflow's own rules: alias names are word characters and dashes, "latest" and "v<digits>" are reserved;
# model names cannot contain "/" or ":" (we also refuse "@", which would break ``models:/NAME@ALIAS`` URIs).
_ALIAS_RE = re.compile(r"^[\w\-]+$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)
_URI_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
MAX_ALIAS_LENGTH = 255


def validate_model_name(name: str, key: str = "name") -> str:
    """Return ``name`` if it is usable as a registered model name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}: a registered model name must be non-empty text, got {name!r}")
    if name != name.strip():
        raise ConfigError(f"{key}: registered model name {name!r} has leading or trailing spaces")
    bad = sorted({c for c in name if c in "/:@"})
    if bad:
        raise ConfigError(
            f"{key}: registered model name {name!r} must not contain {', '.join(repr(c) for c in bad)}"
        )
    return name


def validate_alias(alias: str, key: str = "alias") -> str:
    """Return ``alias`` if it is a valid MLflow model alias, else raise :class:`ConfigError`."""
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or len(alias) > MAX_ALIAS_LENGTH:
        raise ConfigError(f"{key}: alias {alias!r} must be 1-255 letters, digits, '_' or '-'")
    if _RESERVED_ALIAS_RE.match(alias):
        raise ConfigError(f"{key}: alias {alias!r} is reserved by MLflow ('latest' and 'v<number>')")
    return alias


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how a training run is tracked.

    Attributes:
        uri: tracking URI (``sqlite:///...``, ``http://host:port``, ...). ``None`` means: the
            ``MLFLOW_TRACKING_URI`` environment variable if the CLI passes one, else an embedded SQLite store
            in the work folder (see :func:`medseg.tracking.resolve_tracking_uri`).
        experiment: MLflow experiment name.
        registered_model: registry name the trained model is registered under (``None``: not registered).
        alias: alias moved to the newly registered version.
        timeout_s: upper bound for a single call to the tracking server (connectivity probe, HTTP request);
            the first call of a run that takes longer sends the rest of the run to the offline spool.
        flush_timeout_s: how long the end of a run (and registering its model) waits for a tracking call still
            in flight before spooling it and everything after it. Training itself never waits for the server.
        enabled: ``False`` turns tracking off entirely (nothing is logged, nothing is spooled).
        log_qc_images: whether QC PNGs are logged.
    """

    uri: str | None = None
    experiment: str = "medseg"
    registered_model: str | None = None
    alias: str = "champion"
    timeout_s: float = 10.0
    flush_timeout_s: float = 2.0
    enabled: bool = True
    log_qc_images: bool = True

    def __post_init__(self) -> None:
        if self.uri is not None:
            if not isinstance(self.uri, str) or not self.uri.strip():
                raise ConfigError(f"tracking.uri: expected a tracking URI or null, got {self.uri!r}")
            if not _URI_SCHEME_RE.match(self.uri) and self.uri not in ("databricks", "databricks-uc"):
                raise ConfigError(
                    f"tracking.uri: {self.uri!r} has no scheme; use e.g. 'sqlite:///path/to/mlruns.db' "
                    "or 'http://host:5000'"
                )
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ConfigError(f"tracking.experiment: expected a non-empty name, got {self.experiment!r}")
        if self.registered_model is not None:
            validate_model_name(self.registered_model, "tracking.registered_model")
        validate_alias(self.alias, "tracking.alias")
        for key in ("timeout_s", "flush_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"tracking.{key}: expected a number of seconds, got {value!r}")
            if not math.isfinite(value) or not 0 < value <= 600:
                raise ConfigError(f"tracking.{key}: must be > 0 and <= 600 seconds, got {value!r}")
        for key in ("enabled", "log_qc_images"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"tracking.{key}: expected true or false, got {getattr(self, key)!r}")
