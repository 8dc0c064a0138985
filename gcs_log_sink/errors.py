"""The errors users catch.

One root, split by whose fault it is (as h11 splits Local/RemoteProtocolError):

- :class:`ConfigurationError` is the caller's mistake (a bad bucket name, a bad option). It is
  raised at once, at the call that made it, before anything is sent.
- :class:`UploadError` and its children come from GCS or the network. They carry the bucket,
  the object name and the HTTP status, and never the resumable session URL: that URL is a
  bearer capability, and error messages end up in logs.
"""

from __future__ import annotations

__all__ = [
    "BucketNotFoundError",
    "ConfigurationError",
    "GCSLogSinkError",
    "IntegrityError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RetryDeadlineExceededError",
    "SessionLostError",
    "UploadError",
]


class GCSLogSinkError(Exception):
    """The root of every error this library raises on purpose."""


class ConfigurationError(GCSLogSinkError, ValueError):
    """A bad argument: raised where the mistake is made, nothing sent."""


class UploadError(GCSLogSinkError):
    """GCS or the network failed an upload in a way retrying will not fix."""

    def __init__(self, message: str, *, bucket: str, name: str, status: int | None = None) -> None:
        self.bucket = bucket
        self.name = name
        self.status = status
        where = f"gs://{bucket}/{name}"
        suffix = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where}: {message}{suffix}")


class PermissionDeniedError(UploadError):
    """401 or 403: the credentials may not write this object."""


class BucketNotFoundError(UploadError):
    """404 when starting an upload: the bucket does not exist."""


class PreconditionFailedError(UploadError):
    """412: the object already exists (or changed) and ``if_generation_match`` forbade it."""


class SessionLostError(UploadError):
    """404 or 410 for the resumable session: it expired or was cancelled, data not finalized."""


class RetryDeadlineExceededError(UploadError):
    """Retryable failures went on past ``retry_deadline``."""


class IntegrityError(UploadError):
    """The finalized object's CRC32C or size differs from what was written."""
