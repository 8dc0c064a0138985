"""Ship logs into Google Cloud Storage through resumable uploads.

Nothing lost, nothing doubled, memory bounded by configuration, and the program that logs
never waits on the network.
"""

from __future__ import annotations

from importlib import metadata

from .aio import AsyncGCSObjectStream
from .errors import (
    BucketNotFoundError,
    ConfigurationError,
    GCSLogSinkError,
    IntegrityError,
    PermissionDeniedError,
    PreconditionFailedError,
    RetryDeadlineExceededError,
    SessionLostError,
    UploadError,
)
from .formatters import JSONFormatter
from .handler import GCSHandler, HandlerStats
from .spool import SpoolLockedError
from .stream import GCSObjectStream

try:
    __version__ = metadata.version("gcs-log-sink")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncGCSObjectStream",
    "BucketNotFoundError",
    "ConfigurationError",
    "GCSHandler",
    "GCSLogSinkError",
    "GCSObjectStream",
    "HandlerStats",
    "IntegrityError",
    "JSONFormatter",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RetryDeadlineExceededError",
    "SessionLostError",
    "SpoolLockedError",
    "UploadError",
    "__version__",
]
