"""How a handler tells the program about its own failures: one stderr line, never a loop.

Who runs this code: every thread of a handler (the caller's, on a refused option at log
time; the shipper, the finisher and the spool uploader on GCS failures). It is the
:class:`~gcs_log_sink.stream.UploadObserver` of every upload the handler opens, so it sees
each failed try and each answer and can tell when an outage starts and ends.

Why this shape: ``logging.Handler.handleError`` prints a traceback per record, which floods
stderr while GCS is away; ``QueueHandler`` does the same. Here each kind of failure is said
once; outages are said when they start and when they end (how long, how many retries), for
every outage in the process's life, at most one start line per ``OUTAGE_REPORT_INTERVAL``.
Nothing reported names a session URL or a credential: messages come from our own errors,
which carry neither.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._secrets import redact

__all__ = ["OUTAGE_REPORT_INTERVAL", "HandlerStats", "Reporter"]

# Flapping connectivity must not turn stderr into a log of its own.
OUTAGE_REPORT_INTERVAL = 30.0


class Reporter:
    """One handler's voice on stderr, and what ``stats()`` says of failures."""

    def __init__(self, label: str, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._label = label
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._said: set[str] = set()
        self.silenced = False  # the handler gave up at close: that report said it all
        self.retries = 0
        self.outages = 0
        self.last_error: str | None = None
        self._outage_since: float | None = None
        self._outage_retries = 0
        self._outage_announced = False
        self._last_announcement = -OUTAGE_REPORT_INTERVAL

    def say(self, message: str) -> None:
        """One line on stderr, whatever it is, secrets redacted; never raises."""
        try:
            sys.stderr.write(f"gcs_log_sink: {self._label}: {redact(message)}\n")
            sys.stderr.flush()
        except Exception:  # noqa: S110 - stderr itself is gone: nothing left to tell
            pass

    def report(self, kind: str, message: str, *, error: bool = True) -> None:
        """Say ``message`` the first time this ``kind`` happens; remember it as the last error."""
        with self._lock:
            if error:
                self.last_error = redact(message)
            if kind in self._said or (self.silenced and kind != "close-timeout"):
                return
            self._said.add(kind)
        self.say(message)

    # -- UploadObserver: every upload the handler opens reports here -------------------

    def retrying(self, reason: str) -> None:
        now = self._monotonic()
        announce = False
        with self._lock:
            self.retries += 1
            self.last_error = redact(f"retrying: {reason}")
            if self._outage_since is None:
                self._outage_since = now
                self._outage_retries = 0
                self.outages += 1
                if now - self._last_announcement >= OUTAGE_REPORT_INTERVAL and not self.silenced:
                    self._outage_announced = announce = True
                    self._last_announcement = now
                else:
                    self._outage_announced = False
            self._outage_retries += 1
        if announce:
            self.say(f"GCS is not answering ({reason}); retrying, records wait in the queue")

    def answered(self) -> None:
        if self._outage_since is None:  # the common case: no lock, nothing to say
            return
        now = self._monotonic()
        with self._lock:
            since, self._outage_since = self._outage_since, None
            if since is None or not self._outage_announced or self.silenced:
                return
            retries = self._outage_retries
        self.say(f"GCS answers again after {now - since:.1f} s ({retries} failed tries)")

    @property
    def outage_seconds(self) -> float | None:
        """How long the current outage has lasted, or None while GCS answers."""
        since = self._outage_since
        return None if since is None else self._monotonic() - since


@dataclass(frozen=True)
class HandlerStats:
    """A consistent snapshot of what a :class:`GCSHandler` has done (``handler.stats()``).

    Records: ``queued_records`` wait in memory (``queued_bytes``); ``in_flight`` are being
    written; ``unfinalized_records`` are in objects not yet finalized (or in the spool, not
    yet uploaded); ``shipped_*`` are in finalized objects; ``dropped`` were refused (queue or
    spool full, or logged after close); ``lost`` were given up on. ``retries`` and
    ``outages`` count failed tries and outages; ``last_error`` is the last failure said;
    ``lag_seconds`` is the age of the oldest record not yet in a finalized object. The
    handler's own notes of dropped records travel as records: ``notes`` says how many of
    the records counted were such notes.
    """

    queued_records: int
    queued_bytes: int
    in_flight: int
    unfinalized_records: int
    shipped_records: int
    shipped_bytes: int
    shipped_objects: int
    dropped: int
    lost: int
    retries: int
    outages: int
    outage_seconds: float | None
    last_error: str | None
    lag_seconds: float
    spool_bytes: int
    notes: int
