"""Errors raised by :mod:`medseg.tracking`; all derive from :class:`medseg.errors.MedsegError`."""

from __future__ import annotations

from medseg.errors import MedsegError


class TrackingError(MedsegError):
    """Base class of the tracking, registry and offline-spool errors."""


class TrackingUnavailableError(TrackingError):
    """The tracking server / store could not be reached within the configured timeout."""


class ModelUriError(TrackingError, ValueError):
    """A model URI is malformed or does not point at a medseg model."""


class ModelIntegrityError(TrackingError):
    """A downloaded model's checkpoint does not match the SHA-256 pinned when it was registered."""


class ModelNotFoundError(TrackingError, LookupError):
    """A registered model name, alias, version or run does not exist; the message lists what does."""


class PatientDataError(TrackingError, ValueError):
    """Data about to be sent to MLflow looks like it carries patient identifiers.

    The message names the offending keys and the reason, never the values themselves.
    """

    def __init__(self, where: str, findings: list[str]) -> None:
        self.findings = list(findings)
        shown = "; ".join(self.findings[:10])
        more = f" (and {len(self.findings) - 10} more)" if len(self.findings) > 10 else ""
        super().__init__(
            f"refusing to send {where} to MLflow: {shown}{more}. Patient identifiers must never reach the "
            "tracking server; remove these entries (see medseg.tracking.scrub_params)."
        )


class SpoolError(TrackingError):
    """An offline spool folder is missing, unreadable or was already replayed."""


class SpoolInUseError(SpoolError):
    """An offline spool's run is still alive (or another replay holds it): not replayed now."""
