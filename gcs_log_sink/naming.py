"""Validation of bucket and object names, before anything is sent.

GCS answers a bad name with a 400 that says little, after a round trip; a log handler would
meet it only at its first upload, on a background thread. Checking here moves the error to
the line of code that made it. Rules: https://cloud.google.com/storage/docs/buckets#naming and
https://cloud.google.com/storage/docs/objects#naming
"""

from __future__ import annotations

import re

from .errors import ConfigurationError

__all__ = ["validate_bucket_name", "validate_object_name"]

_BUCKET_COMPONENT = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_OBJECT_NAME_BYTES = 1024


def validate_bucket_name(bucket: str) -> str:
    """Return ``bucket`` unchanged, or raise :class:`ConfigurationError` saying what is wrong."""
    if not isinstance(bucket, str):
        raise ConfigurationError(f"bucket name must be a str, not {type(bucket).__name__}")
    if bucket.startswith("gs://"):
        raise ConfigurationError(
            f"bucket name {bucket!r} includes the gs:// scheme; pass the bare bucket name"
        )
    too_long = len(bucket) > 222 or (len(bucket) > 63 and "." not in bucket)
    if len(bucket) < 3 or too_long:
        raise ConfigurationError(
            f"bucket name {bucket!r} must be 3 to 63 characters (222 with dots)"
        )
    components = bucket.split(".")
    if any(len(part) > 63 or not _BUCKET_COMPONENT.fullmatch(part) for part in components):
        raise ConfigurationError(
            f"bucket name {bucket!r} may hold only lowercase letters, digits, '-', '_' and "
            "'.', and must start and end with a letter or digit"
        )
    if _IPV4.fullmatch(bucket):
        raise ConfigurationError(f"bucket name {bucket!r} must not look like an IP address")
    if bucket.startswith("goog") or "google" in bucket or "g00gle" in bucket:
        raise ConfigurationError(
            f"bucket name {bucket!r} must not start with 'goog' or contain 'google'"
        )
    return bucket


def validate_object_name(name: str) -> str:
    """Return ``name`` unchanged, or raise :class:`ConfigurationError` saying what is wrong."""
    if not isinstance(name, str):
        raise ConfigurationError(f"object name must be a str, not {type(name).__name__}")
    if not name:
        raise ConfigurationError("object name must not be empty")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"object name {name!r} is not valid Unicode (it holds a lone surrogate)"
        ) from None
    if len(encoded) > _MAX_OBJECT_NAME_BYTES:
        raise ConfigurationError(
            f"object name is {len(encoded)} bytes in UTF-8; GCS allows at most "
            f"{_MAX_OBJECT_NAME_BYTES}"
        )
    if _CONTROL.search(name):
        raise ConfigurationError(
            f"object name {name!r} holds a control character (such as a newline)"
        )
    if name in (".", "..") or any(part in (".", "..") for part in name.split("/")):
        raise ConfigurationError(f"object name {name!r} must not have '.' or '..' segments")
    if name.startswith(".well-known/acme-challenge/"):
        raise ConfigurationError(
            f"object name {name!r} may not start with '.well-known/acme-challenge/'"
        )
    return name
