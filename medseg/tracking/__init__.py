"""MLflow tracking for medseg: run logging with an offline fallback, model registry, model URIs.

This package is the only place in medseg that imports MLflow, and it does so lazily (inside functions, or in
:mod:`medseg.tracking.registry`), so importing :mod:`medseg.tracking` (e.g. for :class:`TrackingConfig`) is cheap.
A registered model's pyfunc face is :mod:`medseg.inference.pyfunc`, which MLflow imports by name.
"""

from __future__ import annotations

from medseg.tracking.config import TrackingConfig
from medseg.tracking.errors import (
    ModelIntegrityError,
    ModelNotFoundError,
    ModelUriError,
    PatientDataError,
    SpoolError,
    TrackingError,
    TrackingUnavailableError,
)
from medseg.tracking.logger import RunLogger
from medseg.tracking.offline import read_spool, replay_offline
from medseg.tracking.params import flatten_params
from medseg.tracking.privacy import check_no_patient_identifiers, find_patient_identifiers, scrub_params
from medseg.tracking.registry import (
    ModelVersionInfo,
    ResolvedModel,
    promote,
    register_model,
    resolve_model_uri,
)
from medseg.tracking.store import check_tracking, redact_uri, resolve_tracking_uri
from medseg.tracking.sysinfo import system_info

__all__ = [
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelUriError",
    "ModelVersionInfo",
    "PatientDataError",
    "ResolvedModel",
    "RunLogger",
    "SpoolError",
    "TrackingConfig",
    "TrackingError",
    "TrackingUnavailableError",
    "check_no_patient_identifiers",
    "check_tracking",
    "find_patient_identifiers",
    "flatten_params",
    "promote",
    "read_spool",
    "redact_uri",
    "register_model",
    "replay_offline",
    "resolve_model_uri",
    "resolve_tracking_uri",
    "scrub_params",
    "system_info",
]
