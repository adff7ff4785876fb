"""MLflow tracking for medseg: run logging with an offline fallback, model registry, model URIs.

This package is the only place in medseg that imports MLflow, and it does so lazily (inside functions), so
importing :mod:`medseg.tracking` (e.g. for :class:`TrackingConfig`) is cheap. Every MLflow call goes through an
``MlflowClient`` bound to the store it is meant for; MLflow's process-wide tracking URI is never set.

Modules: ``config`` (the ``tracking:`` section), ``store`` (URIs, probes, clients), ``logger`` (a run's API),
``calls`` and ``sender`` (its MLflow calls, sent by one background thread), ``journal`` (a run's write-ahead
journal, its offline spool), ``offline`` (replay of a spool), ``spools`` (a workdir's spools, ``medseg replay``),
``model_format`` (what a medseg model is in MLflow), ``registry`` (log and register a model), ``lookup`` (find
runs, models, versions), ``resolve`` (model URI -> checkpoint), ``observer`` (training hooks).
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
from medseg.tracking.journal import read_spool
from medseg.tracking.logger import RunLogger
from medseg.tracking.offline import replay_offline
from medseg.tracking.params import flatten_params
from medseg.tracking.privacy import check_no_patient_identifiers, find_patient_identifiers, scrub_params
from medseg.tracking.registry import ModelVersionInfo, promote, register_model
from medseg.tracking.resolve import ResolvedModel, resolve_model_uri
from medseg.tracking.spools import replay_spools
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
    "replay_spools",
    "resolve_model_uri",
    "resolve_tracking_uri",
    "scrub_params",
    "system_info",
]
