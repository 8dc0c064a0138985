"""GCSHandler: a logging handler that ships records through rotating resumable uploads.

The caller's thread only formats and enqueues bytes (as ``QueueHandler.prepare`` formats,
so ``%``-args and exception text are captured at the call); one background thread per
handler writes them into the current :class:`~gcs_log_sink.GCSObjectStream` and rolls to a
new object when the time window changes or the size cap would be passed
(:mod:`.rotation`), naming objects by :mod:`.naming`.

What the handler owes the program it lives in (CPython ``logging`` and ``QueueListener``
are the models):

- ``emit()`` never does network I/O and never raises; the queue is bounded by records and by
  bytes, and on overflow it blocks for at most ``block_timeout`` or drops (``overflow``),
  counting drops and writing the count into the log stream when space returns.
- The worker never takes ``self.lock`` and drops records logged from its own thread
  (urllib3 and google-auth log while it uploads): otherwise ``close()`` under
  ``logging.shutdown`` could deadlock, or the handler could feed on its own records.
- The worker is a daemon thread, joined with a deadline: an atexit hook closes every live
  handler within ``close_timeout`` in total and says on stderr what it could not ship.
- Failures of GCS are reported once per kind on stderr, never raised into the application.
- After ``os.fork()`` the child starts afresh (its own queue, thread and objects, named
  with its pid) and never touches the parent's upload.
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import socket
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import errors
from .naming import DEFAULT_TEMPLATE, ObjectNameTemplate, validate_bucket_name
from .recovery import ship_segment
from .rotation import RotationPolicy
from .spool import Segment, Spool, dead_spools
from .stream import (
    DEFAULT_CHUNK_SIZE,
    GCSObjectStream,
    _positive_seconds,
    _validate_metadata,
    validate_chunk_size,
)

__all__ = ["GCSHandler"]

_OVERFLOW_POLICIES = ("block", "drop")
_COMPRESSIONS = (None, "gzip")
# How many times a taken name (another process got there first) is skipped before giving up.
_NAME_ATTEMPTS = 100
# After GCS refused to open an object, records are dropped without asking again for this long.
_OPEN_COOLDOWN = 5.0
# How long the worker sleeps at most while an object is open: the window-end check.
_MAX_IDLE_WAIT = 1.0
# After a small batch, the worker waits this long for more records unless someone waits on
# it (flush, rotate, close). Waking per record would make it fight the callers for the GIL.
_LINGER = 0.02
_SMALL_BATCH = 512
# What the worker takes from the queue at a time, and how much it joins into one write.
_BATCH_BYTES = 1024 * 1024
_BATCH_RECORDS = 8192
_WRITE_BYTES = 256 * 1024


@dataclass
class _OpenObject:
    """The object being written: its stream, window and what went into it."""

    stream: GCSObjectStream | Segment  # straight to GCS, or to the spool's segment
    window: float
    size: int = 0  # uncompressed bytes, what max_bytes limits
    records: int = 0
    compressor: Any = None

    def _put(self, data: bytes, records: int) -> None:
        if isinstance(self.stream, Segment):
            self.stream.write(data, records)
        else:
            self.stream.write(data)

    def write(self, data: bytes, records: int) -> None:
        self.size += len(data)
        self.records += records
        if self.compressor is not None:
            data = self.compressor.compress(data)
        self._put(data, records)

    def flush(self) -> None:
        if self.compressor is not None:
            # Everything so far becomes decodable from the object's prefix.
            self._put(self.compressor.flush(zlib.Z_SYNC_FLUSH), 0)
        if isinstance(self.stream, Segment):
            self.stream.sync()  # flush() acknowledges records once they are on disk
        else:
            self.stream.flush()

    def finish(self) -> None:
        if self.compressor is not None:
            self._put(self.compressor.flush(zlib.Z_FINISH), 0)
        if isinstance(self.stream, Segment):
            self.stream.state["records"] = self.records
            self.stream.seal()
        else:
            self.stream.close()


@dataclass
class _Batch:
    """Records taken from the queue at once, with what rotation needs to know of them."""

    records: list[tuple[float, bytes]] = field(default_factory=list)
    size: int = 0
    newest: float = 0.0
    has_marker: bool = False  # a rotate() marker is among the records

    def __bool__(self) -> bool:
        return bool(self.records)


@dataclass
class _FlushRequest:
    target: int  # records accepted before the flush() call
    done: threading.Event = field(default_factory=threading.Event)


class GCSHandler(logging.Handler):
    """Ship log records into GCS objects, one per time window or size limit.

    Objects are named by ``name_template`` (fields ``prefix``, ``start``, ``host``, ``pid``,
    ``seq``, ``stream``) and finalized, so readable, within about a second of their window's
    end, at ``rotate()``, or at ``close()``.

    ``flush()`` returns once every record emitted before it is persisted in GCS, except the
    tail of the open object that is not yet a whole 256 KiB unit: GCS takes nothing smaller
    before an upload ends, and an unfinalized object is invisible to readers anyway. Only
    finalization (window end, ``max_bytes``, ``rotate()``, ``close()``) makes records
    readable. ``flush()`` and ``close()`` each wait at most ``close_timeout`` seconds.

    While GCS is unreachable, uploads are retried until ``retry_deadline`` (default: until
    the handler closes); memory stays bounded by ``queue_size``/``max_queue_bytes`` plus
    about one ``chunk_size``.

    ``clock`` is the wall clock that places records in windows (tests inject one);
    ``on_finalize(name, generation, size)`` is called on the shipping thread after each
    object is finalized (the CLI composes its parts from these).
    """

    # A constructor that raised leaves a half-built handler that logging.shutdown() will
    # still flush and close: both must then do nothing.
    _constructed = False

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        name_template: str = DEFAULT_TEMPLATE,
        rotate_seconds: float | None = 3600,
        max_bytes: int | None = 64 * 1024 * 1024,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        queue_size: int = 10_000,
        max_queue_bytes: int = 64 * 1024 * 1024,
        overflow: str = "block",
        block_timeout: float = 5.0,
        close_timeout: float = 10.0,
        compression: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        client: Any = None,
        stream: str | None = None,
        timeout: float = 30.0,
        retry_deadline: float | None = None,
        level: int | str = logging.NOTSET,
        clock: Callable[[], float] = time.time,
        on_finalize: Callable[[str, int, int], None] | None = None,
        spool_dir: str | None = None,
        max_spool_bytes: int = 1024 * 1024 * 1024,
    ) -> None:
        super().__init__(level)
        self.bucket = validate_bucket_name(bucket)
        self._policy = RotationPolicy(rotate_seconds=rotate_seconds, max_bytes=max_bytes)
        self._template = ObjectNameTemplate.parse(
            name_template, prefix=prefix, needs_start=rotate_seconds is not None
        )
        if compression not in _COMPRESSIONS:
            raise errors.ConfigurationError(
                f"compression must be None or 'gzip', got {compression!r}"
            )
        if overflow not in _OVERFLOW_POLICIES:
            raise errors.ConfigurationError(f"overflow must be 'block' or 'drop', got {overflow!r}")
        for option, value in (("queue_size", queue_size), ("max_queue_bytes", max_queue_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise errors.ConfigurationError(f"{option} must be a positive int, got {value!r}")
        if stream is not None and (not isinstance(stream, str) or not stream):
            raise errors.ConfigurationError("stream must be a non-empty str or None")
        if content_type is not None and (not isinstance(content_type, str) or not content_type):
            raise errors.ConfigurationError("content_type must be a non-empty str or None")
        self._stream_options: dict[str, Any] = {
            "chunk_size": validate_chunk_size(chunk_size),
            "content_type": content_type
            or ("application/gzip" if compression else "text/plain; charset=utf-8"),
            "metadata": _validate_metadata(metadata),
            "timeout": _positive_seconds("timeout", timeout),
            "retry_deadline": float("inf")
            if retry_deadline is None
            else _positive_seconds("retry_deadline", retry_deadline, zero_ok=True),
        }
        self._compression = compression
        self._queue_size = queue_size
        self._max_queue_bytes = max_queue_bytes
        self._overflow = overflow
        self._block_timeout = _positive_seconds("block_timeout", block_timeout, zero_ok=True)
        self._close_timeout = _positive_seconds("close_timeout", close_timeout, zero_ok=True)
        self._client = client
        if client is None:
            # Import now, on the configuring thread: a fork while the worker is halfway
            # through this import would leave the child a half-initialized module.
            # The client itself is made later, by the worker: finding credentials can be slow.
            from google.cloud import storage  # noqa: F401
        self._stream_name = stream
        self._clock = clock
        self._on_finalize = on_finalize
        self._host = socket.gethostname()
        self._closed = False
        self._reported: set[str] = set()
        if (
            isinstance(max_spool_bytes, bool)
            or not isinstance(max_spool_bytes, int)
            or (max_spool_bytes < 1)
        ):
            raise errors.ConfigurationError(
                f"max_spool_bytes must be a positive int, got {max_spool_bytes!r}"
            )
        self._spool_root = spool_dir
        self._max_spool_bytes = max_spool_bytes
        self._spool: Spool | None = None
        self._start_fresh()
        _live_handlers.add(self)
        _install_process_hooks()
        self._constructed = True
        if self._spool is not None:
            # Ship what a dead process left in the spool now, not at the first record.
            self._start_worker()

    # -- state that a forked child must not share with its parent ------------------------

    def _start_fresh(self) -> None:
        """(Re)create everything per-process: queue, counters, worker, open object."""
        self._pid = os.getpid()
        self._queue_lock = threading.Lock()
        self._space = threading.Condition(self._queue_lock)
        self._items: collections.deque[tuple[float, bytes]] = collections.deque()
        self._pending_records = 0
        self._pending_bytes = 0
        self._accepted = 0  # records taken into the queue, ever
        self._written = 0  # records handed to an object (or given up on), ever
        self._in_flight = 0  # records the worker took but has not written yet
        self._dropped = 0
        self._dropped_reported = 0
        self._drop_reason = "queue full"
        self._flush_requests: list[_FlushRequest] = []
        self._wake = threading.Event()
        self._urgent = threading.Event()  # someone waits on the worker: no lingering
        self._worker_idle = False
        self._stopping = False
        self._cancel = threading.Event()
        self._worker: threading.Thread | None = None
        # The shipping and upload threads: records they cause (urllib3, google-auth) are dropped.
        self._own_threads: set[int] = set()
        self._start_lock = threading.Lock()
        self._current: _OpenObject | None = None
        self._finisher: threading.Thread | None = None
        self._finishing: _OpenObject | None = None
        self._seq = 0
        self._latest_window = 0.0
        self._lost = 0
        self._open_refused_until = 0.0
        # The spool (spool_dir): the worker writes segments, the uploader ships them.
        if self._spool_root is not None:
            stream = self._stream_name or "log"
            if self._spool is not None:  # a forked child: a spool directory of its own
                self._spool.release()  # our copy of the parent's lock; the parent keeps it
                stream = f"{stream}.{os.getpid()}"
            self._spool = Spool(self._spool_root, stream)
        # Segments on disk before this process wrote any: a dead process's, complete.
        self._leftovers = self._spool.segments() if self._spool is not None else []
        self._to_upload: collections.deque[Segment] = collections.deque()
        self._spool_changed = threading.Condition()
        self._spooling_done = False
        self._uploader: threading.Thread | None = None
        self._spooled_records = 0
        self._shipped_records = 0
        self._spool_checked_at = 0

    # -- the caller's side ---------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        # Records the worker itself causes (urllib3, google-auth) are dropped before
        # self.lock: taking it here could deadlock close() under logging.shutdown.
        if threading.get_ident() in self._own_threads:
            return False
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Format on the caller's thread and enqueue the bytes. Never raises, never does I/O."""
        try:
            if self._stream_name is None:
                self._stream_name = record.name or "log"
            line = self.format(record)
            created = record.created if self._clock is time.time else self._clock()
            self._enqueue(created, (line + "\n").encode("utf-8", "backslashreplace"))
        except Exception:
            self.handleError(record)

    def enqueue(self, line: bytes) -> None:
        """Queue one already formatted record, a complete line (structlog's path).

        Like ``emit()``: never raises, never does I/O, blocks at most ``block_timeout``.
        """
        if threading.get_ident() in self._own_threads:
            return
        try:
            self._enqueue(self._clock(), line)
        except Exception:
            self._report("enqueue", "enqueue() failed; the record was dropped")

    def _enqueue(self, created: float, data: bytes) -> None:
        if self._closed:
            self._dropped += 1
            return
        size = len(data)
        with self._queue_lock:
            if not self._has_room(size) and (
                self._overflow == "drop" or not self._wait_for_room(size)
            ):
                self._dropped += 1
                return
            self._items.append((created, data))
            self._pending_records += 1
            self._pending_bytes += size
            self._accepted += 1
        if self._worker is None:
            self._start_worker()
        elif self._worker_idle and not self._wake.is_set():
            self._wake.set()  # once per wake-up, not once per record until the worker runs

    def _has_room(self, size: int) -> bool:
        if self._pending_records >= self._queue_size:
            return False
        # One record bigger than the byte cap still fits into an empty queue.
        return self._pending_records == 0 or self._pending_bytes + size <= self._max_queue_bytes

    def _wait_for_room(self, size: int) -> bool:
        deadline = time.monotonic() + self._block_timeout
        while not self._has_room(size):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            # An infinite block_timeout (the CLI's tee: backpressure, never drop) waits unbounded.
            self._space.wait(None if math.isinf(remaining) else remaining)
        return True

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full (or the handler closed)."""
        return self._dropped

    @property
    def lost(self) -> int:
        """Records handed to GCS that it refused or that could not be finalized."""
        return self._lost

    def flush(self) -> None:
        """Return once every record emitted before the call is in GCS (see the class doc)."""
        if (
            not self._constructed
            or self._closed
            or self._worker is None
            or threading.get_ident() in self._own_threads
        ):
            return
        with self._queue_lock:
            request = _FlushRequest(self._accepted)
            self._flush_requests.append(request)
        self._urgent.set()
        self._wake.set()
        if not request.done.wait(self._close_timeout):
            self._report(
                "flush-timeout",
                f"flush() gave up after close_timeout={self._close_timeout} s; "
                "records stay queued and are shipped when GCS answers",
            )

    def rotate(self) -> None:
        """Finalize the open object now (after what was emitted before the call)."""
        if not self._constructed or self._closed or self._worker is None:
            return
        with self._queue_lock:
            self._items.append((-1.0, b""))  # a marker: roll here
            self._pending_records += 1
            self._accepted += 1
        self.flush()

    def close(self) -> None:
        """Ship what is queued, finalize, stop the thread. Idempotent; bounded by close_timeout."""
        if not self._constructed:
            super().close()
            return
        deadline = self._begin_close()
        self._finish_close(deadline)

    def _begin_close(self) -> float:
        with self._queue_lock:
            already = self._closed
            self._closed = True
            self._space.notify_all()
        if not already and self._worker is not None:
            self._stopping = True
            self._urgent.set()
            self._wake.set()
        return time.monotonic() + self._close_timeout

    def _finish_close(self, deadline: float) -> None:
        worker = self._worker
        if worker is not None and worker.is_alive() and os.getpid() == self._pid:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self._cancel.set()  # stop retrying; the daemon thread ends on its own
                unshipped = self._pending_records + self._in_flight + self._open_records()
                self._report(
                    "close-timeout",
                    f"could not ship {unshipped} records to gs://{self.bucket} within "
                    f"close_timeout={self._close_timeout} s",
                )
        uploader = self._uploader
        if uploader is not None and uploader.is_alive() and os.getpid() == self._pid:
            uploader.join(max(0.0, deadline - time.monotonic()))
            if uploader.is_alive():
                self._cancel.set()
                assert self._spool is not None
                left = len(self._spool.segments())
                self._report(
                    "close-timeout",
                    f"{left} objects' worth of records wait in the spool "
                    f"{self._spool.directory}; they are shipped at the next start or by "
                    "'gcs-log-sink recover'",
                )
        if self._spool is not None and (uploader is None or not uploader.is_alive()):
            self._spool.release()
        _live_handlers.discard(self)
        super().close()

    def _open_records(self) -> int:
        """Records in objects not yet finalized: the open one and the one finalizing."""
        return sum(obj.records for obj in (self._current, self._finishing) if obj is not None)

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<GCSHandler gs://{self.bucket}/{self._template.prefix} ({level})>"

    # -- the worker's side ---------------------------------------------------------------

    def _start_worker(self) -> None:
        with self._start_lock:
            if self._worker is not None:
                return
            worker = threading.Thread(
                target=self._run, name=f"gcs_log_sink:{self.bucket}", daemon=True
            )
            self._worker = worker
            worker.start()
            if self._spool is not None:
                self._uploader = threading.Thread(
                    target=self._upload_run, name=f"gcs_log_sink:{self.bucket}:up", daemon=True
                )
                self._uploader.start()

    def _run(self) -> None:
        self._own_threads.add(threading.get_ident())
        try:
            while True:
                self._wake.clear()
                self._worker_idle = False
                batch = self._take_batch()
                if batch.records:
                    try:
                        self._write_batch(batch)
                    except Exception as exc:  # a bug or a surprise: lose the batch, not the app
                        self._lost += self._in_flight
                        self._written += self._in_flight
                        self._in_flight = 0
                        self._current = None
                        self._report(
                            "worker-error", f"records lost to an unexpected error: {exc!r}"
                        )
                    if len(batch.records) < _SMALL_BATCH and not self._items:
                        self._urgent.wait(_LINGER)  # a trickle: let records gather
                    continue
                self._urgent.clear()
                self._serve_flush_requests()
                now = self._clock()
                current = self._current
                if current is not None and self._policy.window_start(now) != current.window:
                    self._finish_current()  # the window ended: make it readable now
                if self._stopping and self._dropped != self._dropped_reported:
                    self._note_drops()  # the last word in the stream: what was dropped
                    continue
                if self._stopping:
                    self._finish_current()
                    self._wait_for_finisher()
                    self._serve_flush_requests()
                    return
                self._worker_idle = True
                if self._items or self._flush_requests:
                    continue
                if self._wake.wait(_MAX_IDLE_WAIT if self._current is not None else None):
                    self._urgent.wait(_LINGER)
        except BaseException as exc:  # pragma: no cover - a bug; never take the app down
            self._report("worker-crash", f"the shipping thread stopped: {exc!r}")
        finally:
            self._worker_idle = True
            for request in self._flush_requests:
                request.done.set()
            with self._spool_changed:
                self._spooling_done = True
                self._spool_changed.notify_all()

    def _take_batch(self) -> _Batch:
        """Up to ``_BATCH_BYTES`` (or ``_BATCH_RECORDS``) from the queue's head.

        A bounded batch keeps what is out of the queue but not yet written small: memory stays
        near ``max_queue_bytes`` plus one chunk, not twice the queue.
        """
        batch = _Batch()
        records = batch.records
        with self._queue_lock:
            items = self._items
            while items and batch.size < _BATCH_BYTES and len(records) < _BATCH_RECORDS:
                item = items.popleft()
                records.append(item)
                batch.size += len(item[1])
            self._in_flight = len(records)
            self._pending_records -= len(records)
            self._pending_bytes -= batch.size
            if records:
                self._space.notify_all()
        if records:
            batch.newest = max(created for created, _ in records)
            batch.has_marker = min(created for created, _ in records) < 0
        return batch

    def _write_batch(self, batch: _Batch) -> None:
        """Write records in order, rolling between them where the policy says."""
        self._note_drops()
        pending = _Joiner(self._write_parts)
        current = self._current
        if current is not None and self._fits(current, batch):
            # The common case: the whole batch belongs in the open object. No per-record
            # rotation checks, just writes of up to _WRITE_BYTES at a time.
            for _, data in batch.records:
                pending.add(data)
            pending.drain()
            return
        for created, data in batch.records:
            if created < 0:  # rotate() marker
                pending.drain()
                self._written += 1
                self._in_flight -= 1
                self._finish_current()
                continue
            # A record created just before a newer one that got queued first must not
            # reopen the window already left behind.
            created = max(created, self._latest_window)
            current = self._current
            if current is not None:
                roll = self._policy.roll(
                    window=current.window,
                    size=current.size + pending.size,
                    now=created,
                    incoming=len(data),
                )
                if roll is not None:
                    pending.drain()
                    self._finish_current()
            if self._current is None:
                self._open(created)
            pending.add(data)
        pending.drain()

    def _fits(self, current: _OpenObject, batch: _Batch) -> bool:
        """Whether every record of ``batch`` goes into ``current`` (no roll on the way)."""
        if batch.has_marker:
            return False
        newest = max(batch.newest, self._latest_window)
        if self._policy.window_start(newest) != current.window:
            return False
        max_bytes = self._policy.max_bytes
        return max_bytes is None or current.size + batch.size <= max_bytes

    def _write_parts(self, parts: list[bytes], size: int) -> None:
        if not parts:
            return
        current = self._current
        count = len(parts)
        try:
            if current is None:  # the open failed: these records cannot be shipped
                self._lost += count
                return
            current.write(b"".join(parts), count)
            if self._spool is not None:
                self._spooled_records += count
                with self._spool_changed:
                    self._spool_changed.notify_all()
        except OSError as exc:  # the spool's disk
            self._report("spool", f"cannot write the spool: {exc}")
            self._lost += count
        except errors.UploadError as exc:
            self._fail_current(exc)
            self._lost += count
        finally:
            self._written += count
            self._in_flight -= count

    def _note_drops(self) -> None:
        dropped = self._dropped
        if dropped == self._dropped_reported:
            return
        count = dropped - self._dropped_reported
        self._dropped_reported = dropped
        record = logging.LogRecord(
            "gcs_log_sink", logging.WARNING, __file__, 0,
            "gcs_log_sink dropped %d records (%s)", (count, self._drop_reason), None,
        )  # fmt: skip
        try:
            line = self.format(record)
        except Exception:
            line = record.getMessage()
        if self._drop_reason == "queue full":
            self._report("dropped", f"queue full: dropping records (overflow={self._overflow!r})")
        with self._queue_lock:
            self._items.appendleft(
                (self._clock(), (line + "\n").encode("utf-8", "backslashreplace"))
            )
            self._pending_records += 1
            self._accepted += 1

    def _open(self, created: float) -> None:
        now = time.monotonic()
        if now < self._open_refused_until:
            return
        window = self._policy.window_start(created)
        self._latest_window = max(self._latest_window, window)
        start = datetime.fromtimestamp(window, timezone.utc)
        options = dict(self._stream_options)
        if self._client is None:
            from .stream import default_client

            self._client = default_client()
        for _ in range(_NAME_ATTEMPTS):
            name = self._template.render(
                start=start,
                seq=self._seq,
                host=self._host,
                pid=self._pid,
                stream=self._stream_name or "log",
            )
            self._seq += 1
            if self._compression == "gzip" and not name.endswith(".gz"):
                name += ".gz"
            if self._spool is not None:
                self._open_segment(name, window)
                return
            try:
                stream = GCSObjectStream(
                    self.bucket, name, client=self._client, _cancel=self._cancel, **options
                )
            except errors.PreconditionFailedError:
                continue  # another process has this name: take the next seq
            except errors.GCSLogSinkError as exc:
                self._open_refused_until = now + _OPEN_COOLDOWN
                self._report(type(exc).__name__, f"cannot open an object: {exc}")
                return
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if self._compression else None
            self._current = _OpenObject(stream, window, compressor=compressor)
            return
        self._open_refused_until = now + _OPEN_COOLDOWN
        self._report("names", f"{_NAME_ATTEMPTS} object names in a row were taken")

    def _open_segment(self, name: str, window: float) -> None:
        assert self._spool is not None
        self._make_spool_room()
        try:
            segment = self._spool.create(self.bucket, name)
        except OSError as exc:
            self._report("spool", f"cannot write the spool: {exc}")
            return
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if self._compression else None
        self._current = _OpenObject(segment, window, compressor=compressor)
        with self._spool_changed:
            self._to_upload.append(segment)
            self._spool_changed.notify_all()

    def _make_spool_room(self) -> None:
        """Past max_spool_bytes, drop the oldest segments not being uploaded, counted."""
        assert self._spool is not None
        segments = self._spool.segments()
        total = sum(segment.size() for segment in segments)
        for old in segments[1:]:  # the oldest is the one the uploader is on
            if total <= self._max_spool_bytes:
                return
            if not old.sealed:
                continue
            total -= old.size()
            records = int(old.state.get("records", 0))
            with self._spool_changed:
                self._to_upload = collections.deque(s for s in self._to_upload if s.id != old.id)
            old.remove()
            self._dropped += records
            self._drop_reason = "spool full"
            self._spooled_records -= records
            self._report("spool-full", "spool past max_spool_bytes: dropped the oldest records")

    def _upload_run(self) -> None:
        """Ship spooled segments, oldest first: a dead process's, then this one's."""
        self._own_threads.add(threading.get_ident())
        options = {**self._stream_options, "_cancel": self._cancel}
        try:
            if self._client is None:
                from .stream import default_client

                self._client = default_client()
            assert self._spool_root is not None
            with dead_spools(self._spool_root) as spools:
                dead = [segment for _, segments in spools for segment in segments]
                for segment in [*self._leftovers, *dead]:
                    if self._cancel.is_set():
                        return
                    self._ship(segment, options, wait=False)
            while not self._cancel.is_set():
                with self._spool_changed:
                    while not self._to_upload and not self._spooling_done:
                        self._spool_changed.wait()
                    if not self._to_upload:
                        return
                    segment = self._to_upload[0]
                self._ship(segment, options, wait=True)
                with self._spool_changed:
                    if self._to_upload and self._to_upload[0] is segment:
                        self._to_upload.popleft()
        except Exception as exc:  # pragma: no cover - a bug; the spool keeps the data
            self._report("uploader-crash", f"the upload thread stopped: {exc!r}")

    def _ship(self, segment: Segment, options: dict[str, Any], *, wait: bool) -> None:
        def wait_for_more() -> bool:
            with self._spool_changed:
                if not segment.sealed and not self._cancel.is_set():
                    self._spool_changed.wait(0.5)
            return not self._cancel.is_set()

        while not self._cancel.is_set():
            try:
                shipped = ship_segment(
                    segment,
                    client=self._client,
                    options=options,
                    report=self._report,
                    wait_for_more=wait_for_more if wait else None,
                )
            except errors.IntegrityError as exc:
                # Retrying cannot change what GCS holds: keep the segment, report, go on.
                self._report("IntegrityError", f"a spooled object does not verify: {exc}")
                return
            except (errors.UploadError, OSError) as exc:
                if self._cancel.is_set():
                    return
                self._report(type(exc).__name__, f"an upload from the spool failed: {exc}")
                self._cancel.wait(_OPEN_COOLDOWN)  # the data is safe on disk: try again
                continue
            self._shipped_records += shipped
            if self._on_finalize is not None and shipped:
                try:
                    self._on_finalize(segment.name, 0, 0)
                except Exception as exc:
                    self._report("on_finalize", f"on_finalize raised {exc!r}")
            return

    def _finish_current(self) -> None:
        """End the open object: seal its segment, or finalize it beside the worker.

        Finalizing waits on GCS (the last chunk and its answer). On the worker, callers would
        meet a full queue meanwhile at every rotation; so one finisher thread does it while
        the worker goes on into the next object. A second rotation waits for the first.
        """
        current, self._current = self._current, None
        if current is None:
            return
        if isinstance(current.stream, Segment):
            try:
                current.finish()
            except OSError as exc:
                self._report("spool", f"cannot seal a spool segment: {exc}")
                return
            with self._spool_changed:
                self._spool_changed.notify_all()
            return  # the uploader finalizes it
        self._wait_for_finisher()
        self._finishing = current
        finisher = threading.Thread(
            target=self._finish_object,
            args=(current,),
            name=f"gcs_log_sink:{self.bucket}:finish",
            daemon=True,
        )
        self._finisher = finisher
        finisher.start()

    def _wait_for_finisher(self) -> None:
        finisher = self._finisher
        if finisher is not None:
            finisher.join()
            self._finisher = None

    def _finish_object(self, current: _OpenObject) -> None:
        me = threading.get_ident()
        self._own_threads.add(me)
        try:
            current.finish()
        except errors.UploadError as exc:
            self._lost += current.records
            self._report(type(exc).__name__, f"cannot finalize an object: {exc}")
            return
        finally:
            self._finishing = None
            self._own_threads.discard(me)  # thread ids are reused: never drop a stranger's
        stream = current.stream
        if self._on_finalize is not None and isinstance(stream, GCSObjectStream):
            try:
                self._on_finalize(stream.name, stream.generation or 0, stream.size or 0)
            except Exception as exc:
                self._report("on_finalize", f"on_finalize raised {exc!r}")

    def _fail_current(self, exc: errors.UploadError) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        self._lost += current.records
        self._report(type(exc).__name__, f"an upload failed: {exc}")
        if isinstance(current.stream, GCSObjectStream):
            current.stream.abort()

    def _serve_flush_requests(self) -> None:
        with self._queue_lock:
            ready = [r for r in self._flush_requests if r.target <= self._written]
            self._flush_requests = [r for r in self._flush_requests if r not in ready]
        if not ready:
            return
        current = self._current
        if current is not None:
            try:
                current.flush()
            except errors.UploadError as exc:
                self._fail_current(exc)
        self._wait_for_finisher()  # records of the object being finalized count too
        for request in ready:
            request.done.set()

    def _report(self, kind: str, message: str) -> None:
        """One line on stderr per kind of failure, never a traceback, never a loop."""
        if kind in self._reported:
            return
        if self._cancel.is_set() and kind != "close-timeout":
            return  # given up at close: that report already said what was not shipped
        self._reported.add(kind)
        try:
            sys.stderr.write(f"gcs_log_sink: GCSHandler(gs://{self.bucket}): {message}\n")
            sys.stderr.flush()
        except Exception:  # noqa: S110 - stderr itself is gone: nothing left to tell
            pass


class _Joiner:
    """Records gathered into writes of about ``_WRITE_BYTES``: few calls, bounded copies."""

    def __init__(self, write: Callable[[list[bytes], int], None]) -> None:
        self._write = write
        self._parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self._parts.append(data)
        self.size += len(data)
        if self.size >= _WRITE_BYTES:
            self.drain()

    def drain(self) -> None:
        parts, size = self._parts, self.size
        self._parts, self.size = [], 0
        self._write(parts, size)


# -- process-wide hooks: at exit, and after fork -------------------------------------------

_live_handlers: weakref.WeakSet[GCSHandler] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def _close_all_at_exit() -> None:
    """Close every live handler within the largest close_timeout, in total, not each."""
    handlers = list(_live_handlers)
    deadlines = [handler._begin_close() for handler in handlers]
    deadline = max(deadlines, default=time.monotonic())
    for handler in handlers:
        handler._finish_close(deadline)


def _reset_in_child() -> None:
    for handler in list(_live_handlers):
        handler._start_fresh()
        client = handler._client
        if client is not None and hasattr(client, "_http_internal"):
            # The parent's connection pool must not be shared: the child makes its own.
            client._http_internal = None


def _install_process_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        # Registered after `import logging`, so it runs before logging.shutdown.
        atexit.register(_close_all_at_exit)
        os.register_at_fork(after_in_child=_reset_in_child)
