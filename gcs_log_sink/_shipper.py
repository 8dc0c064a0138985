"""The shipping side of a GCSHandler: records from the queue into rotating objects.

Who runs this code: the shipping thread (one per handler and process) owns the open object,
the rotation floor and the name sequence; it takes batches from the
:class:`~gcs_log_sink._queue.RecordQueue`, plans them (:func:`~gcs_log_sink.rotation.plan_batch`,
pure) and writes them. Finalizing an ended object waits on GCS, so a finisher thread does it
while the shipping thread goes on into the next object; a second rotation waits for the
first. Nothing here takes the handler's ``lock``: ``logging.shutdown`` holds it while it
closes the handler, and the transport's own DEBUG records would otherwise deadlock.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors
from ._finisher import NAME_ATTEMPTS, DeadlineEvent, Finisher, ObjectNames
from ._queue import ROTATE, Batch, DropReason, RecordQueue
from ._reporter import Reporter
from ._sinks import (
    GCSSink,
    GzipSink,
    LazyClient,
    OpenObject,
    SegmentSink,
    Sink,
    StreamOptions,
)
from .naming import ObjectNameTemplate
from .rotation import (
    OpenState,
    RotationPolicy,
    Step,
    Write,
    fits_whole,
    plan_batch,
    window_deadline,
    window_over,
)

__all__ = ["Shipper", "ShipperConfig"]

# After GCS refused to open an object, records are given up without asking again this long.
_OPEN_COOLDOWN = 5.0
# The longest the shipping thread sleeps: the window-end check, and the pick-up of a record
# a signal handler queued without waking it.
_IDLE_WAIT = 1.0
# After a small batch, wait this long for more records unless someone waits on the
# shipper (flush, rotate, close). Waking per record would fight the callers for the GIL.
_LINGER = 0.02
_SMALL_BATCH = 512
# What the shipper takes from the queue at a time, and how much it joins into one write:
# a bounded batch keeps memory near max_queue_bytes plus one chunk, not twice the queue.
_BATCH_BYTES = 1024 * 1024
_BATCH_RECORDS = 8192
_data_of = operator.itemgetter(1)
# A run of at most this many records is written record by record, not joined (_write_run).
_WRITTEN_ONE_BY_ONE = 16


@dataclass(frozen=True)
class ShipperConfig:
    """What the shipper needs of the handler's (validated) options."""

    bucket: str
    template: ObjectNameTemplate
    policy: RotationPolicy
    options: StreamOptions
    gzip: bool
    host: str
    clock: Callable[[], float]
    on_finalize: Callable[[str, int, int], None] | None
    compose_into: str | None = None  # the CLI's build.log: recover composes killed builds


class Shipper:
    """The shipping thread and its finisher, for one handler in one process."""

    def __init__(
        self,
        config: ShipperConfig,
        queue: RecordQueue,
        reporter: Reporter,
        *,
        client: LazyClient,
        identity: dict[str, Any],
        stream_name: Callable[[], str],
        drop_note: Callable[[int, str], bytes],
        cancel: DeadlineEvent,
        own_threads: set[int],
        uploader: Any = None,
    ) -> None:
        self._config = config
        self._queue = queue
        self._reporter = reporter
        self._client = client
        self._identity = identity  # pid and instance token: fixed for this process
        self._stream_name = stream_name
        self._drop_note = drop_note
        self._cancel = cancel
        self._uploader = uploader
        # The idents of this handler's threads: records they cause are not shipped.
        self.own_threads = own_threads
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._starter = 0  # the ident of the thread inside start(), 0 when none
        self._current: OpenObject | None = None
        self._floor = -math.inf
        self._names = ObjectNames(config, identity, stream_name)
        self._finisher = Finisher(
            config,
            queue,
            reporter,
            client=client,
            cancel=cancel,
            names=self._names,
            own_threads=own_threads,
        )
        self._open_refused_until = 0.0
        self.inline = False  # no thread could be started: close() ships on its own thread
        self.started = False

    # -- life cycle (called from the handler's side) -------------------------------------

    def start(self) -> None:
        """Start the shipping thread (and the spool's upload thread). Never raises: from
        Python 3.12 no thread starts once the interpreter is exiting, so records first
        logged from an atexit hook are shipped by :meth:`run_inline` at close instead.

        Never waits either: whoever holds the lock is starting the thread, another thread
        or this one, re-entered by a signal handler that logs while ``Thread.start()`` runs
        (waiting there would wait for ever). The record that called is queued already.
        """
        if not self._start_lock.acquire(blocking=False):
            return
        try:
            self._starter = threading.get_ident()
            if self._thread is not None or self.inline:
                return
            thread = threading.Thread(
                target=self._run, name=f"gcs_log_sink:{self._config.bucket}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                self.inline = True
                return
            self._thread = thread
            self.started = True
            if self._uploader is not None:
                self._uploader.start()
        finally:
            self._starter = 0
            self._start_lock.release()

    def ensure_started(self, timeout: float) -> None:
        """For close/flush/rotate: a shipping thread exists (or ``inline`` is set) if records wait.

        A caller whose record was queued starts the thread after ``put()`` returns, so
        ``close()`` or ``flush()`` on another thread can find no thread yet: one being
        started (the start lock held; a second caller's own ``start()`` returned at once),
        or one its caller has not asked for yet. Without this they returned at once and the
        records were shipped after them, or never (exit).
        """
        # Not when this thread is the one starting it (a signal handler that closes,
        # interrupting Thread.start()): that start cannot finish before we return.
        if self._starter != threading.get_ident() and self._start_lock.acquire(
            timeout=max(0.0, timeout)
        ):
            self._start_lock.release()  # whoever was starting the thread is done
        if self._thread is None and not self.inline and self._queue.unsettled:
            self.start()

    def run_inline(self, deadline: float) -> None:
        """Ship on the calling thread (the queue is closed) until done or ``deadline``."""
        self._cancel.deadline = deadline
        self._run()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; whether it did."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # -- the shipping thread ---------------------------------------------------------------

    def _run(self) -> None:
        me = threading.get_ident()
        self.own_threads.add(me)
        queue = self._queue
        noted_at_close = False
        try:
            while True:
                batch = queue.take(_BATCH_BYTES, _BATCH_RECORDS)
                if batch:
                    self._write_batch(batch)
                    if len(batch.entries) < _SMALL_BATCH and not queue.has_items():
                        queue.linger(_LINGER)  # a trickle: let records gather
                    continue
                queue.clear_urgent()
                self._serve_flushes()
                self._check_window()
                if batch.final:  # closed, and nothing left: the last word, then stop
                    if not noted_at_close and self._note_drops():
                        noted_at_close = True  # once: records still logged after close
                        continue  # must not keep the thread alive
                    self._finish_current()
                    self._finisher.wait()
                    self._serve_flushes()
                    return
                if queue.wait_for_work(_IDLE_WAIT):
                    queue.linger(_LINGER)
        except BaseException as exc:  # pragma: no cover - a bug; never take the app down
            self._reporter.report("shipper-crash", f"the shipping thread stopped: {exc!r}")
        finally:
            queue.release_all_flushes()
            if self._uploader is not None:
                self._uploader.spooling_done()
            self.own_threads.discard(me)  # thread ids are reused: never drop a stranger's

    def _write_batch(self, batch: Batch) -> None:
        """Write the batch's records in order, rolling between them where the policy says."""
        self._note_drops()
        entries = batch.entries
        config = self._config
        current = self._current
        if (
            current is not None
            and batch.records == len(entries)  # no rotate() marker
            and fits_whole(
                config.policy,
                OpenState(current.window, current.size),
                newest=batch.newest,
                size=batch.size,
                floor=self._floor,
            )
        ):
            steps: list[Step] = [Write(current.window, 0, len(entries))]
        else:
            shapes = [
                None if entry is ROTATE else (entry[0], len(entry[1]))  # type: ignore[index]
                for entry in entries
            ]
            state = None if current is None else OpenState(current.window, current.size)
            steps, self._floor = plan_batch(config.policy, shapes, current=state, floor=self._floor)
        for step in steps:
            if isinstance(step, Write):
                self._write_run(entries[step.first : step.stop], step.window)
            else:
                self._finish_current()
        markers = len(entries) - batch.records
        if markers:
            self._queue.settle(markers)

    def _write_run(self, entries: list[Any], window: float) -> None:
        """Records that all go into the object of ``window``, joined in C into one write
        (a batch is at most ~_BATCH_BYTES plus one record; a loop per record here cost the
        callers' GIL ~0.2 us a record)."""
        if self._current is None:
            self._open(window)
        if len(entries) <= _WRITTEN_ONE_BY_ONE:
            # Few records (so, in a full batch, large ones: tee's 256 KiB reads): a join
            # would copy each once more before the stream copies it into its chunk
            # (~0.1 s/GiB), and a few calls cost nothing.
            for created, data in entries:
                self._write(data, 1, created)
            return
        self._write(b"".join(map(_data_of, entries)), len(entries), entries[0][0])

    def _write(self, data: bytes, count: int, first_created: float) -> None:
        queue = self._queue
        size = len(data)
        current = self._current
        if current is None:  # the open failed: these records cannot be shipped
            queue.settle(count, lost=count)
            return
        try:
            current.sink.write(data, count)
        except OSError as exc:  # the spool's disk
            self._reporter.report("spool", f"cannot write the spool: {exc}")
            queue.settle(count, lost=count)
            if self._config.gzip:
                # The compressor took bytes the segment did not: end this gzip stream here
                # (at its last whole frame) and go on in a new object.
                self._finish_current()
            return
        except errors.UploadError as exc:
            queue.settle(count, lost=count)
            self._fail_current(exc)
            return
        new = current.first_created is None
        if new:
            current.first_created = first_created
        current.size += size
        current.records += count
        queue.settle(count, written=count, first_created=first_created if new else None)
        if self._uploader is not None:
            self._uploader.changed()

    def _note_drops(self) -> bool:
        """Write what was dropped into the stream itself; whether a note was queued."""
        note = self._queue.pop_drop_note()
        if note is None:
            return False
        count, reasons = note
        if DropReason.QUEUE_FULL in reasons:
            self._reporter.report(
                "dropped", "queue full: dropping records (see the handler's overflow option)"
            )
        if self._queue.put_note(self._config.clock(), self._drop_note(count, reasons)):
            return True
        self._queue.restore_drop_note(count, reasons)  # no room now: say it later
        return False

    # -- opening and ending objects ----------------------------------------------------------

    def _open(self, window: float) -> None:
        now = time.monotonic()
        if now < self._open_refused_until:
            return
        config = self._config
        for _ in range(NAME_ATTEMPTS):
            name = self._names.next(window)
            try:
                sink = self._make_sink(name)
            except errors.PreconditionFailedError:
                continue  # another process has this name: take the next seq
            except errors.GCSLogSinkError as exc:
                self._open_refused_until = now + _OPEN_COOLDOWN
                self._reporter.report(type(exc).__name__, f"cannot open an object: {exc}")
                return
            except OSError as exc:
                self._open_refused_until = now + _OPEN_COOLDOWN
                self._reporter.report("spool", f"cannot write the spool: {exc}")
                return
            if config.gzip:
                sink = GzipSink(sink)
            deadline = window_deadline(
                config.policy, window, wall=config.clock(), mono=time.monotonic()
            )
            self._current = OpenObject(sink, window, deadline)
            if self._uploader is not None:
                self._uploader.add(self._current)
            return
        self._open_refused_until = now + _OPEN_COOLDOWN
        self._reporter.report("names", f"{NAME_ATTEMPTS} object names in a row were taken")

    def _make_sink(self, name: str) -> Sink:
        config = self._config
        if self._uploader is not None:
            self._uploader.make_room()
            return SegmentSink(
                self._uploader.spool,
                config.bucket,
                name,
                gzip=config.gzip,
                compose_into=config.compose_into,
            )
        stream = config.options.open(
            config.bucket,
            name,
            client=self._client.get(),
            cancel=self._cancel,
            observer=self._reporter,
        )
        return GCSSink(stream)

    def _check_window(self) -> None:
        current = self._current
        if current is not None and window_over(
            self._config.policy,
            current.window,
            current.deadline,
            wall=self._config.clock(),
            mono=time.monotonic(),
            floor=self._floor,
        ):
            # Records created before the window's end but arriving after it go into the
            # next window, never into a reopened one.
            self._floor = max(self._floor, self._config.policy.window_end(current.window))
            self._finish_current()

    def _finish_current(self) -> None:
        """End the open object: seal its segment here, or finalize it beside the shipper."""
        current, self._current = self._current, None
        if current is None:
            return
        if not current.sink.finishes_remotely:
            try:
                current.sink.finish(current.records)
            except OSError as exc:
                self._reporter.report("spool", f"cannot seal a spool segment: {exc}")
            if self._uploader is not None:
                self._uploader.changed()
            return  # the upload thread finalizes it
        self._finisher.finish(current)

    def _fail_current(self, exc: errors.UploadError) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        self._queue.object_done(current.records, 0, "lost", first_created=current.first_created)
        self._reporter.report(type(exc).__name__, f"an upload failed: {exc}")
        current.sink.abort()

    def _serve_flushes(self) -> None:
        ready = self._queue.ready_flushes()
        if not ready:
            return
        current = self._current
        if current is not None:
            try:
                current.sink.flush()
            except errors.UploadError as exc:
                self._fail_current(exc)
            except OSError as exc:
                self._reporter.report("spool", f"cannot sync the spool: {exc}")
                if self._config.gzip:
                    self._finish_current()  # as in _write: the gzip stream ends here
        self._finisher.wait()  # records of the object being finalized count too
        for request in ready:
            request.done.set()
