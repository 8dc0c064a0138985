"""The spool's upload thread: segments on disk into GCS objects, oldest first.

Who runs this code: with ``spool_dir``, the shipping thread writes records into spool
segments (and only fsyncs at ``flush()``); this thread tails each segment as it grows and
ships it through a resumable upload (:func:`~gcs_log_sink.recovery.ship_segment`), so an
outage fills the disk, not memory. It first ships what dead processes left in the spool:
those objects belong to whoever wrote them, so they are never announced to this handler's
``on_finalize`` and never counted in its stats.

Shared with the shipping thread, under ``_changed``: the list of this process's segments to
upload. The shipping thread adds segments (:meth:`add`), seals them and, past
``max_spool_bytes``, drops the oldest sealed ones (:meth:`make_room`); only this thread
deletes a shipped segment (``ship_segment`` does, once GCS has verified it).
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from . import errors
from ._queue import RecordQueue
from ._reporter import Reporter
from ._sinks import LazyClient, OpenObject, SegmentSink, StreamOptions
from .recovery import ship_segment
from .spool import Segment, Spool, dead_spools

__all__ = ["SpoolUploader"]

# After a failed upload from the spool (the data is safe on disk), wait this long.
_RETRY_PAUSE = 5.0


class SpoolUploader:
    """Ships one handler's spool segments (and dead processes' leftovers) to GCS."""

    def __init__(
        self,
        spool: Spool,
        root: str,
        *,
        bucket: str,
        queue: RecordQueue,
        reporter: Reporter,
        options: StreamOptions,
        client: LazyClient,
        cancel: threading.Event,
        own_threads: set[int],
        max_spool_bytes: int,
        on_finalize: Any,
    ) -> None:
        self.spool = spool
        self._root = root
        self._bucket = bucket
        self._queue = queue
        self._reporter = reporter
        self._options = options
        self._client = client
        self._cancel = cancel
        self._own_threads = own_threads
        self._max_spool_bytes = max_spool_bytes
        self._on_finalize = on_finalize
        # Segments on disk before this process wrote any: a dead process's, complete.
        self._leftovers = spool.segments()
        self._pending: collections.deque[OpenObject] = collections.deque()
        self._changed = threading.Condition()
        self._spooling_done = False
        self._thread: threading.Thread | None = None

    # -- called by the shipping thread ---------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"gcs_log_sink:{self._bucket}:up", daemon=True
            )
            self._thread.start()

    def add(self, obj: OpenObject) -> None:
        with self._changed:
            self._pending.append(obj)
            self._changed.notify_all()

    def changed(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def spooling_done(self) -> None:
        with self._changed:
            self._spooling_done = True
            self._changed.notify_all()

    def make_room(self) -> None:
        """Past ``max_spool_bytes``, drop the oldest sealed segments not being uploaded."""
        with self._changed:
            pending = list(self._pending)
        total = sum(_segment(obj).size() for obj in pending)
        for obj in pending[1:]:  # the oldest is the one being uploaded
            if total <= self._max_spool_bytes:
                return
            segment = _segment(obj)
            if not segment.sealed:
                continue
            total -= segment.size()
            with self._changed:
                if obj not in self._pending:
                    continue  # shipped meanwhile
                self._pending.remove(obj)
            segment.remove()
            self._queue.object_done(obj.records, 0, "dropped", first_created=obj.first_created)
            self._reporter.report(
                "spool-full", "spool past max_spool_bytes: dropped the oldest records"
            )

    # -- what stats() shows ------------------------------------------------------------------

    def spool_bytes(self) -> int:
        try:
            return sum(segment.size() for segment in self.spool.segments())
        except OSError:
            return 0

    def join(self, timeout: float) -> bool:
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the upload thread -------------------------------------------------------------------

    def _run(self) -> None:
        me = threading.get_ident()
        self._own_threads.add(me)
        try:
            with dead_spools(self._root) as spools:
                dead = [segment for _, segments in spools for segment in segments]
                for segment in [*self._leftovers, *dead]:
                    if self._cancel.is_set():
                        return
                    self._ship(segment, wait=False)
            while not self._cancel.is_set():
                with self._changed:
                    while not self._pending and not self._spooling_done:
                        self._changed.wait()
                    if not self._pending:
                        return
                    obj = self._pending[0]
                records = self._ship(_segment(obj), wait=True)
                with self._changed:
                    if self._pending and self._pending[0] is obj:
                        self._pending.popleft()
                    else:
                        continue  # dropped by make_room meanwhile: counted there
                if records is None:
                    self._queue.object_done(obj.records, 0, "lost", first_created=obj.first_created)
                    continue
                self._queue.object_done(
                    obj.records, obj.size, "shipped", first_created=obj.first_created
                )
                if self._on_finalize is not None and records:
                    try:
                        self._on_finalize(_segment(obj).name, 0, 0)
                    except Exception as exc:
                        self._reporter.report("on_finalize", f"on_finalize raised {exc!r}")
        except Exception as exc:  # pragma: no cover - a bug; the spool keeps the data
            self._reporter.report("uploader-crash", f"the upload thread stopped: {exc!r}")
        finally:
            self._own_threads.discard(me)

    def _ship(self, segment: Segment, *, wait: bool) -> int | None:
        """Upload one segment until done; records shipped, or None if it was given up."""

        def wait_for_more() -> bool:
            with self._changed:
                if not segment.sealed and not self._cancel.is_set():
                    self._changed.wait(0.5)
            return not self._cancel.is_set()

        options = self._options.as_kwargs(self._cancel, self._reporter)
        while not self._cancel.is_set():
            try:
                return ship_segment(
                    segment,
                    client=self._client.get(),
                    options=options,
                    report=self._reporter.report,
                    wait_for_more=wait_for_more if wait else None,
                )
            except errors.IntegrityError as exc:
                # Retrying cannot change what GCS holds: keep the segment, report, go on.
                self._reporter.report("IntegrityError", f"a spooled object does not verify: {exc}")
                return None
            except (errors.UploadError, OSError) as exc:
                if self._cancel.is_set():
                    return None
                self._reporter.report(type(exc).__name__, f"an upload from the spool failed: {exc}")
                self._cancel.wait(_RETRY_PAUSE)  # the data is safe on disk: try again
        return None


def _segment(obj: OpenObject) -> Segment:
    sink = obj.sink
    inner = getattr(sink, "inner", sink)  # a gzip sink wraps the segment's
    assert isinstance(inner, SegmentSink)
    return inner.segment
