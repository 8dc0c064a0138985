"""GCSHandler: a logging handler that ships records through rotating resumable uploads.

Who runs this code: the caller's threads (``emit``, ``flush``, ``rotate``, ``close``,
``stats``), the exit hooks (atexit, and ``multiprocessing``'s finalizers in its children,
which leave through ``os._exit``) and the fork hook. Everything that talks to GCS runs on
the handler's own threads, in :mod:`._shipper` and :mod:`._uploader`; records wait in
between in a :class:`~gcs_log_sink._queue.RecordQueue`, which keeps every count.

What the handler owes the program it lives in (CPython ``logging`` and ``QueueListener``
are the models):

- ``emit()`` formats on the caller's thread and enqueues bytes; it never does network I/O
  and never raises. The queue is bounded by records and by bytes; on overflow it blocks for
  at most ``block_timeout`` or drops (``overflow``), counting drops and writing the count
  into the log stream when space returns. A signal handler that logs while the interrupted
  thread is inside ``emit()`` neither deadlocks nor blocks.
- The handler's threads never take ``self.lock`` and records they cause (urllib3,
  google-auth) are dropped before it, so ``close()`` under ``logging.shutdown`` cannot
  deadlock and the handler cannot feed on its own records.
- At exit, every live handler is drained within the largest ``close_timeout`` in total and
  stays open, so records logged by atexit hooks that run later are still shipped when
  ``logging.shutdown`` closes it; whatever could not be shipped is said on stderr, counted.
- After ``os.fork()`` the child starts afresh (its own queue, threads, instance token and
  objects) and never touches the parent's upload.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import errors
from ._fastformat import format_line, format_record
from ._finisher import DeadlineEvent
from ._lifecycle import bounded, forget, install_process_hooks, register
from ._queue import RecordQueue
from ._reporter import HandlerStats, Reporter
from ._shipper import Shipper, ShipperConfig
from ._sinks import LazyClient, StreamOptions
from ._uploader import SpoolUploader
from .naming import DEFAULT_TEMPLATE, ObjectNameTemplate, validate_bucket_name
from .rotation import RotationPolicy
from .spool import Spool
from .stream import (
    DEFAULT_CHUNK_SIZE,
    _positive_seconds,
    _validate_metadata,
    validate_chunk_size,
    validate_endpoint,
)

__all__ = ["GCSHandler", "HandlerStats"]

_OVERFLOW_POLICIES = ("block", "drop")
_DEFAULT_FORMATTER = logging.Formatter()  # what logging.Handler.format uses without one
_get_ident = threading.get_ident
# What Handler.handle returns for a record no filter refused: from 3.12 the record itself.
_HANDLE_RETURNS_RECORD = sys.version_info >= (3, 12)
_COMPRESSIONS = (None, "gzip")


def _positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.ConfigurationError(f"{option} must be a positive int, got {value!r}")
    return value


def _import_what_the_threads_would() -> None:
    """Import now, on the configuring thread, what the shipping threads would import lazily.

    A fork while a shipping thread is halfway through an import leaves the child a module
    lock held by a thread that does not exist there: its first upload hangs. The storage
    client is made later, off the caller's thread; requests imports ``netrc`` (and through it
    ``shlex``) at its first request; ``encodings.idna`` encodes a host name.
    """
    import encodings.idna  # noqa: F401
    import netrc  # noqa: F401
    import shlex  # noqa: F401

    from google.cloud import storage  # noqa: F401


def _check_endpoint(client: Any) -> None:
    """A mistyped endpoint fails the constructor (and ``dictConfig``), not a thread later."""
    if client is not None:
        validate_endpoint(getattr(client, "api_endpoint", None), "the client's api_endpoint")
        return
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:  # set but empty is unset, for google-cloud-storage too
        validate_endpoint(emulator, "STORAGE_EMULATOR_HOST")


class GCSHandler(logging.Handler):
    """Ship log records into GCS objects, one per time window or size limit.

    Objects are named by ``name_template`` (fields ``prefix``, ``start``, ``host``, ``pid``,
    ``instance``, ``seq``, ``stream``) and finalized, so readable, within about a second of
    their window's end, at ``rotate()``, or at ``close()``.

    ``flush()`` returns once every record emitted before it is persisted in GCS, except the
    tail of the open object that is not yet a whole 256 KiB unit: GCS takes nothing smaller
    before an upload ends, and an unfinalized object is invisible to readers anyway. Only
    finalization (window end, ``max_bytes``, ``rotate()``, ``close()``) makes records
    readable. ``flush()`` and ``close()`` each wait at most ``close_timeout`` seconds.

    While GCS is unreachable, uploads are retried until ``retry_deadline`` (default: until
    the handler closes); memory stays bounded by ``queue_size``/``max_queue_bytes`` plus
    about one ``chunk_size``. ``stats()`` says where every record is.

    ``clock`` is the wall clock that places records in windows (tests inject one);
    ``on_finalize(name, generation, size)`` is called on a shipping thread after each
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
        _compose_into: str | None = None,
    ) -> None:
        super().__init__(level)
        self.bucket = validate_bucket_name(bucket)
        policy = RotationPolicy(rotate_seconds=rotate_seconds, max_bytes=max_bytes)
        template = ObjectNameTemplate.parse(
            name_template, prefix=prefix, needs_start=rotate_seconds is not None
        )
        if compression not in _COMPRESSIONS:
            raise errors.ConfigurationError(
                f"compression must be None or 'gzip', got {compression!r}"
            )
        if overflow not in _OVERFLOW_POLICIES:
            raise errors.ConfigurationError(f"overflow must be 'block' or 'drop', got {overflow!r}")
        self._queue_size = _positive_int("queue_size", queue_size)
        self._max_queue_bytes = _positive_int("max_queue_bytes", max_queue_bytes)
        self._max_spool_bytes = _positive_int("max_spool_bytes", max_spool_bytes)
        if stream is not None and (not isinstance(stream, str) or not stream):
            raise errors.ConfigurationError("stream must be a non-empty str or None")
        if content_type is not None and (not isinstance(content_type, str) or not content_type):
            raise errors.ConfigurationError("content_type must be a non-empty str or None")
        if on_finalize is not None and not callable(on_finalize):
            raise errors.ConfigurationError("on_finalize must be callable or None")
        if not callable(clock):
            raise errors.ConfigurationError("clock must be callable")
        options = StreamOptions(
            chunk_size=validate_chunk_size(chunk_size),
            content_type=content_type
            or ("application/gzip" if compression else "text/plain; charset=utf-8"),
            metadata=_validate_metadata(metadata) or {},
            timeout=_positive_seconds("timeout", timeout),
            retry_deadline=math.inf
            if retry_deadline is None
            else _positive_seconds("retry_deadline", retry_deadline, zero_ok=True),
        )
        self._config = ShipperConfig(
            bucket=self.bucket,
            template=template,
            policy=policy,
            options=options,
            gzip=compression == "gzip",
            host=socket.gethostname(),
            clock=clock,
            on_finalize=on_finalize,
            compose_into=_compose_into,
        )
        self._prefix = prefix
        self._block_timeout = (
            _positive_seconds("block_timeout", block_timeout, zero_ok=True)
            if overflow == "block"
            else 0.0
        )
        self._close_timeout = _positive_seconds("close_timeout", close_timeout, zero_ok=True)
        _import_what_the_threads_would()
        _check_endpoint(client)
        self._client = LazyClient(client)
        self._stream_name = stream
        self._clock = clock
        self._wall_clock = clock is time.time  # records carry their own time.time() stamp
        # emit() and format() as written here: with the stock formatter, handle() can skip
        # self.lock (a subclass may count on it, as logging's own handlers do).
        cls = type(self)
        self._stock_emit = cls.emit is GCSHandler.emit and cls.format is GCSHandler.format
        # format() as written here: emit() can call format_line(), one frame and one
        # concatenation fewer per record (an instance's own format() is checked per record).
        self._stock_format = cls.format is GCSHandler.format
        self._spool_root = spool_dir
        self._spool: Spool | None = None
        self._closed = False
        self._start_fresh()
        register(self)
        install_process_hooks()
        self._constructed = True
        if self._uploader is not None:
            # Ship what a dead process left in the spool now, not at the first record.
            self._shipper.start()

    def _start_fresh(self) -> None:
        """(Re)create everything a process must not share with its parent."""
        self._pid = os.getpid()
        # Two containers may share a hostname and pid 1: names differ by this token.
        self._instance = secrets.token_hex(4)
        self._queue = RecordQueue(self._queue_size, self._max_queue_bytes)
        self._reporter = Reporter(f"GCSHandler(gs://{self.bucket})")
        self._cancel = DeadlineEvent()
        self._uploader: SpoolUploader | None = None
        own_threads: set[int] = set()
        if self._spool_root is not None:
            stream = self._stream_name or "log"
            if self._spool is not None:  # a forked child: a spool directory of its own
                self._spool.release()  # our copy of the parent's lock; the parent keeps it
                stream = f"{stream}.{self._pid}"
            self._spool = Spool(self._spool_root, stream)
            self._uploader = SpoolUploader(
                self._spool,
                self._spool_root,
                bucket=self.bucket,
                queue=self._queue,
                reporter=self._reporter,
                options=self._config.options,
                client=self._client,
                cancel=self._cancel,
                own_threads=own_threads,
                max_spool_bytes=self._max_spool_bytes,
                on_finalize=self._config.on_finalize,
            )
        self._shipper = Shipper(
            self._config,
            self._queue,
            self._reporter,
            client=self._client,
            identity={"pid": self._pid, "instance": self._instance},
            stream_name=lambda: self._stream_name or "log",
            drop_note=self._drop_note,
            cancel=self._cancel,
            own_threads=own_threads,
            uploader=self._uploader,
        )
        self._own_threads = own_threads  # the shipping threads': read per record

    # -- the caller's side ---------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        """As ``logging.Handler.handle``, without ``self.lock`` where it guards nothing.

        ``self.lock`` serializes ``emit()`` for handlers whose output is shared state (a
        stream). Here ``emit()`` formats one record and queues it under the queue's own lock;
        with the stock ``logging.Formatter`` (no state of its own) the handler lock only cost
        every caller a lock round trip and made threads wait on each other. A subclass
        overriding ``emit()`` or ``format()`` (or an instance with its own), and any other
        formatter, still get it.
        """
        # Records the handler's own threads cause (urllib3, google-auth) are dropped before
        # self.lock: taking it here could deadlock close() under logging.shutdown.
        if _get_ident() in self._own_threads:
            return False
        if self.filters:
            rv: Any = self.filter(record)
            if not rv:
                return rv
            if isinstance(rv, logging.LogRecord):  # 3.12: a filter may hand back another
                record = rv
        else:
            rv = record if _HANDLE_RETURNS_RECORD else True
        formatter = self.formatter
        if not (
            self._stock_emit
            and (formatter is None or type(formatter) is logging.Formatter)
            and "emit" not in (own := self.__dict__)  # replaced on the instance: theirs
            and "format" not in own
        ):
            with self.lock:  # type: ignore[union-attr]  # made in Handler.__init__
                self.emit(record)
        else:
            # emit()'s work without emit()'s second look at the formatter and format().
            self._queue_record(record, formatter or _DEFAULT_FORMATTER)
        return rv

    def format(self, record: logging.LogRecord) -> str:
        """As ``logging.Handler.format``; the stock formatter's date text is cached per second."""
        return format_record(self.formatter or _DEFAULT_FORMATTER, record)

    def emit(self, record: logging.LogRecord) -> None:
        """Format on the caller's thread and enqueue the bytes. Never raises, never does I/O."""
        stock = self._stock_format and "format" not in self.__dict__
        self._queue_record(record, (self.formatter or _DEFAULT_FORMATTER) if stock else None)

    def _queue_record(self, record: logging.LogRecord, formatter: logging.Formatter | None) -> None:
        """Format ``record`` (with ``formatter`` directly, or None: through ``self.format()``,
        replaced by a subclass or the instance), encode and queue it."""
        try:
            if self._stream_name is None:
                self._stream_name = record.name or "log"
            if formatter is not None:
                line = format_line(formatter, record)
            else:
                line = self.format(record) + "\n"
            created = record.created if self._wall_clock else self._clock()
            data = line.encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        self._put(created, data)

    def enqueue(self, line: bytes) -> bool:
        """Queue one already formatted record, a complete line (structlog's path).

        Like ``emit()``: never raises, never does I/O, blocks at most ``block_timeout``.
        Returns whether the line was queued (False: dropped, and counted).
        """
        if _get_ident() in self._own_threads:
            return False
        try:
            return self._put(self._clock(), bytes(line))
        except Exception as exc:
            self._reporter.report("enqueue", f"enqueue() failed; the record was dropped: {exc!r}")
            return False

    def _put(self, created: float, data: bytes) -> bool:
        queued = self._queue.put(created, data, self._block_timeout)
        if queued:
            if not self._shipper.started:
                self._shipper.start()
        elif self._closed:
            self._reporter.report(
                "after-close",
                "records logged after close() are dropped (counted in handler.dropped)",
                error=False,
            )
        return queued

    def _drop_note(self, count: int, reasons: str) -> bytes:
        """The line the stream itself carries about dropped records, in the handler's format."""
        record = logging.LogRecord(
            "gcs_log_sink", logging.WARNING, __file__, 0,
            "gcs_log_sink dropped %d records (%s)", (count, reasons), None,
        )  # fmt: skip
        try:
            line = self.format(record)
        except Exception:
            line = record.getMessage()
        return (line + "\n").encode("utf-8", "backslashreplace")

    @property
    def dropped(self) -> int:
        """Records refused: the queue or the spool was full, or the handler was closed."""
        return self._queue.dropped

    @property
    def lost(self) -> int:
        """Records handed to GCS that it refused or that could not be finalized."""
        return self._queue.lost

    def stats(self) -> HandlerStats:
        """Where every record is, and how GCS has answered (see :class:`HandlerStats`)."""
        ledger = self._queue.ledger()
        reporter = self._reporter
        oldest = ledger.oldest_unshipped
        return HandlerStats(
            queued_records=ledger.queued_records,
            queued_bytes=ledger.queued_bytes,
            in_flight=ledger.in_flight,
            unfinalized_records=ledger.open_records,
            shipped_records=ledger.shipped_records,
            shipped_bytes=ledger.shipped_bytes,
            shipped_objects=ledger.shipped_objects,
            dropped=ledger.dropped,
            lost=ledger.lost,
            retries=reporter.retries,
            outages=reporter.outages,
            outage_seconds=reporter.outage_seconds,
            last_error=reporter.last_error,
            lag_seconds=0.0 if oldest is None else max(0.0, self._clock() - oldest),
            spool_bytes=self._uploader.spool_bytes() if self._uploader is not None else 0,
            notes=ledger.notes,
        )

    def flush(self) -> None:
        """Return once every record emitted before the call is in GCS (see the class doc)."""
        if not self._constructed or self._closed or _get_ident() in self._own_threads:
            return
        if self._queue.held_here():
            # A signal handler that interrupted this thread inside the queue: waiting would
            # hold up the program for close_timeout and still ship nothing before it returns.
            # The records ship once the interrupted call goes on.
            return
        deadline = time.monotonic() + bounded(self._close_timeout)
        if not self._started_for(deadline):
            return
        request = self._queue.request_flush()
        if not request.done.wait(max(0.0, deadline - time.monotonic())):
            self._reporter.report(
                "flush-timeout",
                f"flush() gave up after close_timeout={self._close_timeout} s; "
                "records stay queued and are shipped when GCS answers",
            )

    def rotate(self) -> None:
        """Finalize the open object now (after what was emitted before the call)."""
        if not self._constructed or self._closed:
            return
        if not self._started_for(time.monotonic() + bounded(self._close_timeout)):
            return
        if self._queue.put_marker():
            self.flush()

    def _started_for(self, deadline: float) -> bool:
        """Whether a shipping thread runs, after waiting (until ``deadline``) for one that
        another thread is starting, or starting it for records queued without one."""
        shipper = self._shipper
        if not shipper.started:
            shipper.ensure_started(deadline - time.monotonic())
        return shipper.started

    def close(self) -> None:
        """Ship what is queued, finalize, stop the threads. Idempotent; bounded by close_timeout."""
        if not self._constructed:
            super().close()
            return
        self._finish_close(self._begin_close())

    def _begin_close(self) -> float:
        self._closed = True
        self._queue.close()
        return time.monotonic() + bounded(self._close_timeout)

    def _finish_close(self, deadline: float) -> None:
        if os.getpid() == self._pid:
            self._shipper.ensure_started(deadline - time.monotonic())
            if self._shipper.inline:  # no thread could start: ship here, bounded
                self._shipper.run_inline(deadline)
                if self._queue.unsettled:
                    self._give_up()
            elif not self._shipper.join(deadline - time.monotonic()):
                self._give_up()
            uploader = self._uploader
            if uploader is not None and not uploader.join(deadline - time.monotonic()):
                self._cancel.set()
                assert self._spool is not None
                self._reporter.report(
                    "close-timeout",
                    f"records wait in the spool {self._spool.directory}; they are shipped "
                    "at the next start or by 'gcs-log-sink recover'",
                )
        if self._spool is not None and (self._uploader is None or not self._uploader.alive):
            self._spool.release()
        forget(self)
        super().close()

    def _give_up(self) -> None:
        """Past the deadline: stop retrying, say how many records were not shipped."""
        unshipped = self._queue.unsettled
        self._cancel.set()  # the shipping threads stop at their next wait
        self._reporter.silenced = True
        self._reporter.report(
            "close-timeout",
            f"could not ship {unshipped} records to gs://{self.bucket} within "
            f"close_timeout={self._close_timeout} s",
        )

    def _begin_drain(self) -> threading.Event | None:
        """At exit: finalize what is open and ship what is queued, staying open."""
        if self._closed or not self._shipper.started or os.getpid() != self._pid:
            return None
        if not self._queue.put_marker():
            return None
        return self._queue.request_flush().done

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<GCSHandler gs://{self.bucket}/{self._prefix} ({level})>"
