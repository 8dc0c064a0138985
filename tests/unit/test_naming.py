"""Bucket and object name validation."""

from __future__ import annotations

import pytest

from gcs_log_sink.errors import ConfigurationError
from gcs_log_sink.naming import validate_bucket_name, validate_object_name


@pytest.mark.parametrize("name", ["logs", "my-logs_2", "a.b.c", "x" * 63, "ci.builds.example"])
def test_good_bucket_names_pass(name: str) -> None:
    """Names GCS accepts come back unchanged."""
    assert name == validate_bucket_name(name)


@pytest.mark.parametrize(
    "name", ["ab", "x" * 64, "Logs", "-logs", "logs-", "lo gs", "192.168.5.4", "goog-logs", "a..b"]
)
def test_bad_bucket_names_fail(name: str) -> None:
    """Names GCS refuses fail here, with the name in the message."""
    with pytest.raises(ConfigurationError, match="bucket name"):
        validate_bucket_name(name)


@pytest.mark.parametrize("name", ["a", "logs/2026/11/26/x.log", "ünïcode/名前.log", "a" * 1024])
def test_good_object_names_pass(name: str) -> None:
    """Names GCS accepts come back unchanged."""
    assert name == validate_object_name(name)


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/../b", "a\nb", "a\x00", "\ud800", "é" * 513, ".well-known/acme-challenge/x"],
)
def test_bad_object_names_fail(name: str) -> None:
    """Names GCS refuses (or that walk out of a prefix) fail here."""
    with pytest.raises(ConfigurationError, match="object name"):
        validate_object_name(name)
