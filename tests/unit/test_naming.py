"""Bucket and object name validation."""

from __future__ import annotations

import re

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


def test_default_template_renders_window_host_pid_seq() -> None:
    """The default name shows the window start, host, pid, instance token and a padded seq."""
    from datetime import datetime, timezone

    from gcs_log_sink.naming import DEFAULT_TEMPLATE, ObjectNameTemplate

    template = ObjectNameTemplate.parse(DEFAULT_TEMPLATE, prefix="api/")
    start = datetime(2026, 11, 26, 14, 0, tzinfo=timezone.utc)
    name = template.render(
        start=start, seq=7, host="web/1\n", pid=42, stream="x", instance="a1b2c3"
    )
    assert "api/2026/11/26/140000-web-1--42-a1b2c3-00007.log" == name


@pytest.mark.parametrize(
    ("template", "prefix", "message"),
    [
        ("{prefix}{start}.log", "", "lacks {seq}"),
        ("{prefix}{seq}.log", "", "lacks {start}"),
        ("{prefix}{start}{seq}{user}", "", "uses {user}"),
        ("{prefix}{start.year}{seq}", "", "uses {start.year}"),
        ("{prefix}{start}{seq", "", "malformed"),
        ("{prefix}{start:%Y}{seq:%Q}", "", "cannot be rendered"),
        ("{prefix}{start}-{seq}", "../", "'..'"),
        ("{prefix}{start}-{seq}", "a\tb/", "control character"),
        ("", "", "non-empty"),
    ],
)
def test_bad_templates_are_refused(template: str, prefix: str, message: str) -> None:
    """A template that could make a bad or colliding name fails when parsed."""
    from gcs_log_sink.naming import ObjectNameTemplate

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        ObjectNameTemplate.parse(template, prefix=prefix)


def test_start_is_optional_without_time_rotation() -> None:
    """With rotate_seconds=None the window is the whole run: {seq} alone suffices."""
    from datetime import datetime, timezone

    from gcs_log_sink.naming import ObjectNameTemplate

    template = ObjectNameTemplate.parse(
        "{prefix}{stream}-{seq}.log", prefix="p/", needs_start=False
    )
    start = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert "p/build-3.log" == template.render(
        start=start, seq=3, host="h", pid=1, stream="build", instance="x"
    )
