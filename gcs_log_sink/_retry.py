"""Which failures are retried, and how long to wait: pure, no clock, no sleeping.

The policy is a frozen value (as urllib3's ``Retry``). The caller owns the clock and the
sleep, so tests need neither: they pass ``now`` and a seeded :class:`random.Random`.

The deadline runs from the first failure of the current operation and is reset whenever
GCS confirms progress, so a long upload over a flaky link is not cut off by the sum of
unrelated hiccups, while a server that is down for good is given up on after ``deadline``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, replace

__all__ = ["Attempt", "RetryPolicy", "Verdict", "classify_status"]

# GCS's own list (google-resumable-media common.RETRYABLE) plus 408 Request Timeout, which
# GCS sends when it gave up waiting for a slow request body.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Verdict(enum.Enum):
    """What an HTTP status on a resumable upload means for the caller."""

    OK = "ok"  # 200/201: finalized
    INCOMPLETE = "incomplete"  # 308: the session holds a prefix of the data
    RETRY = "retry"  # the server may or may not have taken the request: ask it
    SESSION_LOST = "session-lost"  # 404/410: the session is gone
    PERMISSION = "permission"  # 401/403
    PRECONDITION = "precondition"  # 412
    CANCELLED = "cancelled"  # 499: the session was cancelled
    FATAL = "fatal"  # anything else: retrying will not help


def classify_status(status: int) -> Verdict:
    """Map an HTTP status from the session URL to what to do about it."""
    if status in (200, 201):
        return Verdict.OK
    if status == 308:
        return Verdict.INCOMPLETE
    if status in RETRYABLE_STATUSES:
        return Verdict.RETRY
    if status in (404, 410):
        return Verdict.SESSION_LOST
    if status in (401, 403):
        return Verdict.PERMISSION
    if status == 412:
        return Verdict.PRECONDITION
    if status == 499:
        return Verdict.CANCELLED
    return Verdict.FATAL


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a wall-clock deadline (seconds)."""

    initial_delay: float = 0.25
    max_delay: float = 16.0
    multiplier: float = 2.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.deadline < 0:
            raise ValueError("deadline must be >= 0")

    def start(self, now: float) -> Attempt:
        """The state after the first failure of an operation, at monotonic time ``now``."""
        return Attempt(policy=self, started=now, failures=0)


@dataclass(frozen=True)
class Attempt:
    """How many times the current operation has failed, and since when."""

    policy: RetryPolicy
    started: float
    failures: int

    def next_delay(self, now: float, rng: random.Random) -> float | None:
        """Seconds to wait before the next try, or ``None`` when the deadline forbids one.

        The delay is "equal jitter": half the exponential step fixed, half random, so
        clients that failed together do not retry together, yet none retries instantly.
        """
        step = min(
            self.policy.max_delay,
            self.policy.initial_delay * self.policy.multiplier**self.failures,
        )
        delay = step / 2 + rng.uniform(0, step / 2)
        remaining = self.started + self.policy.deadline - now
        if remaining <= 0:
            return None
        return min(delay, remaining)

    def failed_again(self) -> Attempt:
        """The state after one more failure."""
        return replace(self, failures=self.failures + 1)
