"""When to roll to a new object: pure, given a clock reading."""

from __future__ import annotations

import math

import pytest

from gcs_log_sink.errors import ConfigurationError
from gcs_log_sink.rotation import Roll, RotationPolicy

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def test_windows_align_to_the_epoch() -> None:
    """Hourly windows start on the hour, whatever the start time."""
    policy = RotationPolicy(rotate_seconds=3600)
    assert 1_789_999_200.0 == policy.window_start(T0)
    assert 1_789_999_200.0 + 3600 == policy.window_end(policy.window_start(T0))


def test_window_change_rolls() -> None:
    """A record in a later window rolls; one in the same window does not."""
    policy = RotationPolicy(rotate_seconds=3600, max_bytes=None)
    window = policy.window_start(T0)
    assert None is policy.roll(window=window, size=10, now=T0 + 60, incoming=5)
    assert Roll.WINDOW == policy.roll(window=window, size=10, now=window + 3600, incoming=5)


def test_size_rolls_before_passing_max_bytes_never_when_empty() -> None:
    """The next record must not pass max_bytes; an oversized record still gets an object."""
    policy = RotationPolicy(rotate_seconds=None, max_bytes=100)
    assert None is policy.roll(window=0.0, size=90, now=T0, incoming=10)
    assert Roll.SIZE == policy.roll(window=0.0, size=91, now=T0, incoming=10)
    assert None is policy.roll(window=0.0, size=0, now=T0, incoming=1000)


def test_no_time_rotation_is_one_window() -> None:
    """rotate_seconds=None: one window forever."""
    policy = RotationPolicy(rotate_seconds=None)
    assert 0.0 == policy.window_start(T0)
    assert math.inf == policy.window_end(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rotate_seconds": 0},
        {"rotate_seconds": math.nan},
        {"rotate_seconds": "1h"},
        {"max_bytes": 0},
        {"max_bytes": 1.5},
        {"max_bytes": True},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense fails at construction, naming the option."""
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        RotationPolicy(**kwargs)  # type: ignore[arg-type]
