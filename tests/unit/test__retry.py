"""The retry policy: classification, backoff and deadline, with no clock and no sleep."""

from __future__ import annotations

import random

import pytest

from gcs_log_sink._retry import RetryPolicy, Verdict, classify_status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    """GCS's transient statuses, and 408, mean: ask the server, then go on."""
    assert Verdict.RETRY == classify_status(status)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (201, Verdict.OK),
        (308, Verdict.INCOMPLETE),
        (400, Verdict.FATAL),
        (401, Verdict.PERMISSION),
        (403, Verdict.PERMISSION),
        (404, Verdict.SESSION_LOST),
        (410, Verdict.SESSION_LOST),
        (412, Verdict.PRECONDITION),
        (499, Verdict.CANCELLED),
        (501, Verdict.FATAL),
    ],
)
def test_other_statuses_are_not_retried(status: int, verdict: Verdict) -> None:
    """Everything else is final, each kind of its own."""
    assert verdict == classify_status(status)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    """Each delay lies in [step/2, step], step doubling up to max_delay."""
    policy = RetryPolicy(initial_delay=1.0, max_delay=8.0, multiplier=2.0, deadline=1e9)
    rng = random.Random(7)
    attempt = policy.start(now=0.0)
    for step in [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]:
        delay = attempt.next_delay(0.0, rng)
        assert delay is not None
        assert step / 2 <= delay <= step
        attempt = attempt.failed_again()


def test_same_seed_same_delays() -> None:
    """Jitter comes from the passed-in Random, so runs reproduce."""
    policy = RetryPolicy()
    first = [policy.start(0.0).next_delay(0.0, random.Random(3)) for _ in range(3)]
    assert first == [policy.start(0.0).next_delay(0.0, random.Random(3)) for _ in range(3)]


def test_deadline_stops_retries_and_clips_the_last_wait() -> None:
    """No delay past the deadline; the last wait ends at the deadline."""
    policy = RetryPolicy(initial_delay=4.0, max_delay=4.0, deadline=10.0)
    attempt = policy.start(now=100.0)
    rng = random.Random(1)
    assert 1.0 == attempt.next_delay(109.0, rng)
    assert None is attempt.next_delay(110.0, rng)


def test_bad_policies_are_refused() -> None:
    """Nonsense settings fail at construction."""
    with pytest.raises(ValueError, match="initial_delay"):
        RetryPolicy(initial_delay=2.0, max_delay=1.0)
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=-1)
