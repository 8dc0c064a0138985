"""When a rotating writer starts a new object: pure, given a clock reading.

Windows are aligned to multiples of ``rotate_seconds`` since the epoch, so hourly objects
start on the hour whatever time the process started, and every process agrees on them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = [
    "FINISH",
    "Finish",
    "OpenState",
    "Roll",
    "RotationPolicy",
    "Step",
    "Write",
    "fits_whole",
    "plan_batch",
    "window_deadline",
    "window_over",
]


class Roll(enum.Enum):
    """Why the current object must be finalized before the next record."""

    WINDOW = "window"  # the wall-clock window changed
    SIZE = "size"  # the next record would pass max_bytes


@dataclass(frozen=True)
class RotationPolicy:
    """``rotate_seconds``: window length, or None for one window; ``max_bytes``: size cap."""

    rotate_seconds: float | None = 3600.0
    max_bytes: int | None = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        seconds = self.rotate_seconds
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 1
        ):
            raise ConfigurationError(
                f"rotate_seconds must be a number of seconds >= 1 or None, got {seconds!r}"
            )
        size = self.max_bytes
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigurationError(f"max_bytes must be a positive int or None, got {size!r}")

    def window_start(self, now: float) -> float:
        """The start (epoch seconds) of the window holding ``now``."""
        if self.rotate_seconds is None:
            return 0.0
        return math.floor(now / self.rotate_seconds) * self.rotate_seconds

    def window_end(self, start: float) -> float:
        """When the window that began at ``start`` ends (``inf`` without time rotation)."""
        if self.rotate_seconds is None:
            return math.inf
        return start + self.rotate_seconds

    def roll(self, *, window: float, size: int, now: float, incoming: int) -> Roll | None:
        """Whether the object of ``window`` holding ``size`` bytes must end before ``incoming``.

        A record is never split: one larger than ``max_bytes`` gets an object of its own.
        """
        if self.window_start(now) != window:
            return Roll.WINDOW
        if self.max_bytes is not None and size > 0 and size + incoming > self.max_bytes:
            return Roll.SIZE
        return None


# -- the shipper's decisions, as pure functions ---------------------------------------------


@dataclass(frozen=True)
class Finish:
    """End the open object here."""


@dataclass(frozen=True)
class Write:
    """Write records ``first`` to ``stop`` (batch indexes) into the open object of ``window``,
    opening one first if none is open."""

    window: float
    first: int
    stop: int


Step = Finish | Write
FINISH = Finish()


@dataclass(frozen=True)
class OpenState:
    """What the plan needs to know of the open object."""

    window: float
    size: int  # uncompressed bytes already in it


def plan_batch(
    policy: RotationPolicy,
    records: list[tuple[float, int] | None],
    *,
    current: OpenState | None,
    floor: float,
) -> tuple[list[Step], float]:
    """Where each record of a batch goes: the steps, and the new floor.

    ``records`` holds ``(created, size)`` per record, ``None`` for a ``rotate()`` marker.
    ``floor`` is the earliest time a record may be placed at: a record created before it
    (its clock stepped back, or it waited behind a newer one) goes into the window the
    floor is in, so objects never reopen a window left behind and records keep their
    order. The floor rises to each window opened.
    """
    steps: list[Step] = []
    window = current.window if current is not None else None
    size = current.size if current is not None else 0
    first: int | None = None

    def end_run(stop: int) -> None:
        nonlocal first
        if first is not None and window is not None:
            steps.append(Write(window, first, stop))
        first = None

    for index, record in enumerate(records):
        if record is None:  # rotate() marker
            end_run(index)
            if window is not None:
                steps.append(FINISH)
            window, size = None, 0
            continue
        created, incoming = record
        placed = max(created, floor)
        if window is not None and policy.roll(
            window=window, size=size, now=placed, incoming=incoming
        ):
            end_run(index)
            steps.append(FINISH)
            window, size = None, 0
        if window is None:
            window, size = policy.window_start(placed), 0
            floor = max(floor, window)
        if first is None:
            first = index
        size += incoming
    end_run(len(records))
    return steps, floor


def window_deadline(policy: RotationPolicy, window: float, *, wall: float, mono: float) -> float:
    """The monotonic time at which the object of ``window``, opened now, must be finalized.

    Measured on the monotonic clock from the opening, so a wall clock that steps back
    (NTP, a VM resumed) cannot keep an object open, unreadable, for hours.
    """
    end = policy.window_end(window)
    if math.isinf(end):
        return math.inf
    return mono + max(0.0, end - max(wall, window))


def window_over(
    policy: RotationPolicy,
    window: float,
    deadline: float,
    *,
    wall: float,
    mono: float,
    floor: float,
) -> bool:
    """Whether the open object of ``window`` must be finalized now: its time has run out on
    the monotonic clock, or the wall clock (never before ``floor``) is in a later window."""
    if policy.rotate_seconds is None:
        return False
    return mono >= deadline or policy.window_start(max(wall, floor)) != window


def fits_whole(
    policy: RotationPolicy,
    current: OpenState,
    *,
    newest: float,
    size: int,
    floor: float,
) -> bool:
    """Whether a batch without markers, whose latest record was created at ``newest`` and
    which holds ``size`` bytes, goes whole into the open object: the shipper's fast path,
    the same answer :func:`plan_batch` would give without a per-record loop."""
    if policy.window_start(max(newest, floor)) != current.window:
        return False
    return policy.max_bytes is None or current.size + size <= policy.max_bytes
