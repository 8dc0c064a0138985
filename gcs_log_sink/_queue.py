"""The handler's record queue: bounded, counted exactly, safe to re-enter from a signal handler.

Who runs this code: producers (any thread that logs, including a signal handler that
interrupts one of them) call :meth:`RecordQueue.put`; the one shipping thread calls
:meth:`RecordQueue.take` and :meth:`RecordQueue.settle`; ``flush()`` callers wait on
:class:`FlushRequest`. Every counter lives here, under one lock, so a snapshot
(:meth:`RecordQueue.ledger`) is consistent: every record accepted is, at any instant,
queued, taken, in an open object, shipped or lost; and every record refused is dropped.

Why an ``RLock`` and no ``Event``: a signal handler that logs runs on the main thread,
possibly while that thread is inside :meth:`put` (holding the lock, waiting for room, or
waking the shipper). With a plain ``Lock``, or an ``Event`` (whose ``set()`` takes a plain
lock), the process hangs. So there is one re-entrant lock, the shipper sleeps on a
condition of it (woken under the lock), and a ``put`` that finds its own thread already
inside ``put`` (holding the lock, or waiting for room) never waits for room and never wakes
the shipper (it may be interrupting the very wake-up); the
shipper looks at least once a second, so such a record waits at most that long.
"""

from __future__ import annotations

import collections
import math
import operator
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_get_ident = threading.get_ident
_created_of = operator.itemgetter(0)

__all__ = [
    "ROTATE",
    "Batch",
    "DropReason",
    "FlushRequest",
    "Ledger",
    "RecordQueue",
    "RotateMarker",
]


class RotateMarker:
    """A queue entry that means "finalize the open object here" (``rotate()``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ROTATE"


ROTATE = RotateMarker()

Entry = tuple[float, bytes] | RotateMarker


class DropReason:
    """Why records were refused; the words that go into the log stream's drop note."""

    QUEUE_FULL = "queue full"
    SPOOL_FULL = "spool full"
    AFTER_CLOSE = "logged after close"


@dataclass
class Batch:
    """Entries taken from the head of the queue at once."""

    entries: list[Entry] = field(default_factory=list)
    size: int = 0  # bytes of the records among them
    records: int = 0  # entries that are records (not markers)
    newest: float = -math.inf  # the latest creation time among the records
    final: bool = False  # the queue is closed and nothing is left behind this batch

    def __bool__(self) -> bool:
        return bool(self.entries)


@dataclass
class FlushRequest:
    """A ``flush()`` waiting until every entry accepted before it is settled and pushed."""

    target: int
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Ledger:
    """A consistent snapshot of the record counters (see :meth:`RecordQueue.ledger`)."""

    queued_records: int
    queued_bytes: int
    in_flight: int  # taken by the shipper, not yet written into an object
    open_records: int  # written into objects not yet finalized (or spooled, not yet shipped)
    shipped_records: int
    shipped_bytes: int
    shipped_objects: int
    dropped: int
    lost: int
    oldest_unshipped: float | None  # creation time (handler clock) of the oldest unshipped
    notes: int  # of the records, the handler's own notes of what it dropped


def _newest(records: list[Any]) -> float:
    """The latest creation time among ``records`` (no markers), counted in C; a NaN is
    skipped, as ``take()``'s loop skips it."""
    newest: float = max(map(_created_of, records))
    if newest != newest:  # a NaN came first: max() kept it
        newest = max((c for c in map(_created_of, records) if c == c), default=-math.inf)
    return newest


class RecordQueue:
    """A FIFO of ``(created, bytes)`` records bounded by count and bytes."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)  # producers wait here for room
        self._ready = threading.Condition(self._lock)  # the shipper sleeps here
        self._items: collections.deque[Entry] = collections.deque()
        self._markers = 0  # rotate markers among _items
        self._waiting: set[int] = set()  # threads waiting for room in put(), lock released
        self._consumer_idle = False  # the shipper sleeps on _ready until woken
        self._urgent = False  # someone waits on the shipper (flush, rotate, close)
        self._closed = False
        self._notes = 0  # the handler's own drop notes, counted among the records
        self._flushes: list[FlushRequest] = []
        # Counters (entries: records and markers; records: only records).
        self._queued_records = 0
        self._queued_bytes = 0
        self._accepted = 0  # entries, ever
        self._settled = 0  # entries written into an object or given up, ever
        self._in_flight = 0  # records taken, not settled
        self._in_flight_oldest: float | None = None
        self._open_records = 0
        self._open_oldest: list[float] = []  # creation time of each unfinished object's first
        self._shipped_records = 0
        self._shipped_bytes = 0
        self._shipped_objects = 0
        self._lost = 0
        self._dropped = 0
        # Drops not yet written into the stream: a count derived from two totals and a set
        # of reasons, so a signal handler's drop that interrupts another drop loses nothing
        # (a read-modify-write of a dict entry would: CPython runs handlers after a call).
        self._noted = 0
        self._unnoted_reasons: set[str] = set()

    # -- producers ---------------------------------------------------------------------

    def put(self, created: float, data: bytes, block_timeout: float) -> bool:
        """Queue one record; False (and counted as dropped) when it cannot be taken.

        Waits at most ``block_timeout`` seconds for room (0: drop at once; ``inf``: wait
        until there is room or the queue closes). Never blocks when re-entered.
        """
        size = len(data)
        lock = self._lock
        # Re-entered by a signal handler: while this thread holds the lock (inside put or
        # waking the shipper), or while it waits for room (the lock released meanwhile).
        nested = lock._is_owned() or (  # type: ignore[attr-defined]
            bool(self._waiting) and _get_ident() in self._waiting
        )
        # "with", not acquire()/try: CPython runs signal handlers after a C call returns,
        # so a KeyboardInterrupt between acquire() and the try would leave the lock held
        # for ever (the shipper then waits on it); "with" leaves no such gap.
        with lock:
            if self._closed:
                self._drop(DropReason.AFTER_CLOSE)
                return False
            if not self._has_room(size) and (
                nested or block_timeout <= 0 or not self._wait_for_room(size, block_timeout)
            ):
                self._drop(DropReason.AFTER_CLOSE if self._closed else DropReason.QUEUE_FULL)
                return False
            self._items.append((created, data))
            self._queued_records += 1
            self._queued_bytes += size
            self._accepted += 1
            if self._consumer_idle and not nested:
                self._consumer_idle = False  # once per wake-up, not once per record
                self._ready.notify()
        return True

    def held_here(self) -> bool:
        """Whether the calling thread holds the queue's lock: a signal handler running in a
        thread that was inside the queue. The shipper needs that lock to make progress, so
        nothing that waits for the shipper can finish here."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def put_marker(self) -> bool:
        """Queue a rotate marker behind everything queued so far."""
        with self._lock:
            if self._closed:
                return False
            self._items.append(ROTATE)
            self._markers += 1
            self._accepted += 1
            self._urgent = True
            self._ready.notify_all()
        return True

    def _has_room(self, size: int) -> bool:
        if self._queued_records >= self._max_records:
            return False
        # One record bigger than the byte cap still fits into an empty queue.
        return self._queued_records == 0 or self._queued_bytes + size <= self._max_bytes

    def _wait_for_room(self, size: int, timeout: float) -> bool:
        me = threading.get_ident()
        self._waiting.add(me)  # the lock is released while waiting: see put()
        try:
            deadline = time.monotonic() + timeout
            while not self._has_room(size):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._space.wait(None if math.isinf(remaining) else remaining)
            return True
        finally:
            self._waiting.discard(me)

    def _drop(self, reason: str) -> None:
        self._dropped += 1
        self._unnoted_reasons.add(reason)

    def _drop_many(self, records: int, reason: str) -> None:
        self._dropped += records
        self._unnoted_reasons.add(reason)

    # -- the shipper -------------------------------------------------------------------

    def take(self, max_bytes: int, max_records: int) -> Batch:
        """Up to ``max_bytes`` (or ``max_records``) entries from the head; never blocks."""
        batch = Batch()
        entries = batch.entries
        append = entries.append
        size = records = taken = 0
        newest = -math.inf
        with self._lock:
            items = self._items
            if (
                items
                and not self._markers
                and self._queued_records <= max_records
                and self._queued_bytes < max_bytes
            ):
                # All of it, and only records: the deque is handed over whole and counted in
                # C (the loop below costs ~0.3 us a record, under the lock and the GIL).
                self._items = collections.deque()
                entries.extend(items)
                records, size = len(entries), self._queued_bytes
                newest = _newest(entries)
                self._in_flight_oldest = entries[0][0]  # type: ignore[index]
                batch.size, batch.records, batch.newest = size, records, newest
                self._queued_records = 0
                self._queued_bytes = 0
                self._in_flight += records
                batch.final = self._closed
                self._space.notify_all()
                return batch
            popleft = items.popleft
            # Locals, not the batch's attributes, in the loop: it runs per record with the
            # queue's lock held, and callers wait on that lock.
            while items and size < max_bytes and taken < max_records:
                entry = popleft()
                append(entry)
                taken += 1
                if entry is ROTATE:
                    self._markers -= 1
                    continue
                created = entry[0]  # type: ignore[index]  # a record: no isinstance per record
                if not records:
                    self._in_flight_oldest = created
                if created > newest:
                    newest = created
                records += 1
                size += len(entry[1])  # type: ignore[index]
            batch.size, batch.records, batch.newest = size, records, newest
            self._queued_records -= records
            self._queued_bytes -= size
            self._in_flight += records
            batch.final = self._closed and not items
            if entries:
                self._space.notify_all()
        return batch

    def settle(
        self,
        entries: int,
        *,
        written: int = 0,
        lost: int = 0,
        first_created: float | None = None,
    ) -> None:
        """``entries`` taken entries are done: ``written`` records went into an open object
        (whose first record was created at ``first_created``, when it is a new object) and
        ``lost`` records were given up on."""
        with self._lock:
            self._settled += entries
            self._in_flight -= written + lost
            if self._in_flight == 0:
                self._in_flight_oldest = None
            self._open_records += written
            if first_created is not None:
                self._open_oldest.append(first_created)
            self._lost += lost

    def object_done(
        self,
        records: int,
        size: int,
        outcome: str,
        *,
        first_created: float | None,
        whole: bool = True,
    ) -> None:
        """An object (or spooled segment) holding ``records`` records is finished:
        ``outcome`` is ``"shipped"`` (finalized in GCS), ``"lost"`` (given up on) or
        ``"dropped"`` (a full spool made room by deleting it). ``whole=False``: only part
        of an object's records (the rest is told in another call)."""
        with self._lock:
            self._open_records -= records
            if first_created is not None and first_created in self._open_oldest:
                self._open_oldest.remove(first_created)
            if outcome == "shipped":
                self._shipped_records += records
                self._shipped_bytes += size
                self._shipped_objects += 1 if whole else 0
            elif outcome == "dropped":
                self._drop_many(records, DropReason.SPOOL_FULL)
            else:
                self._lost += records

    def has_items(self) -> bool:
        return bool(self._items)

    def wait_for_work(self, timeout: float) -> bool:
        """The shipper sleeps until records, a flush or close arrive, or ``timeout`` passes.

        Whether it was woken (rather than timed out or had work waiting already)."""
        with self._lock:
            if self._items or self._flushes or self._closed:
                return False
            self._consumer_idle = True
            woken = self._ready.wait(timeout)
            self._consumer_idle = False
            return woken

    def linger(self, timeout: float) -> None:
        """Let records gather for ``timeout`` unless someone waits on the shipper."""
        with self._lock:
            if not self._urgent and not self._closed:
                self._ready.wait(timeout)

    def clear_urgent(self) -> None:
        with self._lock:
            self._urgent = False

    def pop_drop_note(self) -> tuple[int, str] | None:
        """Drops not yet written into the stream: (count, reasons), once each."""
        with self._lock:
            count = self._dropped - self._noted
            if not count:
                return None
            reasons = ", ".join(sorted(self._unnoted_reasons))
            self._noted += count
            self._unnoted_reasons.clear()
            return count, reasons

    def put_note(self, created: float, data: bytes) -> bool:
        """Queue the handler's own note at the head (inside the bounds, never past them)."""
        with self._lock:
            if not self._has_room(len(data)):
                return False
            self._items.appendleft((created, data))
            self._queued_records += 1
            self._queued_bytes += len(data)
            self._accepted += 1
            self._notes += 1
            return True

    def restore_drop_note(self, count: int, reasons: str) -> None:
        """A note that found no room: keep its count for the next try."""
        with self._lock:
            self._noted -= count
            self._unnoted_reasons.update(reasons.split(", "))

    # -- flush and close ---------------------------------------------------------------

    def request_flush(self) -> FlushRequest:
        with self._lock:
            request = FlushRequest(self._accepted)
            self._flushes.append(request)
            self._urgent = True
            self._ready.notify_all()
        return request

    def ready_flushes(self) -> list[FlushRequest]:
        """Flush requests whose entries are all settled (the shipper then pushes and sets them)."""
        with self._lock:
            ready = [r for r in self._flushes if r.target <= self._settled]
            if ready:
                self._flushes = [r for r in self._flushes if r.target > self._settled]
            return ready

    def release_all_flushes(self) -> None:
        """The shipper is gone: nobody may wait on it any longer."""
        with self._lock:
            flushes, self._flushes = self._flushes, []
        for request in flushes:
            request.done.set()

    def close(self) -> None:
        """Refuse records from now on (counted as dropped); wake whoever waits."""
        with self._lock:
            self._closed = True
            self._urgent = True
            self._space.notify_all()
            self._ready.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what stats() shows --------------------------------------------------------------

    def ledger(self) -> Ledger:
        with self._lock:
            candidates = list(self._open_oldest)
            if self._in_flight_oldest is not None:
                candidates.append(self._in_flight_oldest)
            head = next((e for e in self._items if e is not ROTATE), None)
            if head is not None:
                assert not isinstance(head, RotateMarker)
                candidates.append(head[0])
            return Ledger(
                queued_records=self._queued_records,
                queued_bytes=self._queued_bytes,
                in_flight=self._in_flight,
                open_records=self._open_records,
                shipped_records=self._shipped_records,
                shipped_bytes=self._shipped_bytes,
                shipped_objects=self._shipped_objects,
                dropped=self._dropped,
                lost=self._lost,
                oldest_unshipped=min(candidates, default=None),
                notes=self._notes,
            )

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def lost(self) -> int:
        return self._lost

    @property
    def unsettled(self) -> int:
        """Records accepted but not yet in a finalized object or given up (for reports)."""
        with self._lock:
            return self._queued_records + self._in_flight + self._open_records
