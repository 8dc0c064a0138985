"""When a rotating writer starts a new object: pure, given a clock reading.

Windows are aligned to multiples of ``rotate_seconds`` since the epoch, so hourly objects
start on the hour whatever time the process started, and every process agrees on them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["Roll", "RotationPolicy"]


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
