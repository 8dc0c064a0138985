"""The finisher thread: an ended object finalized beside the shipping thread.

Who runs this code: the shipping thread hands over an ended object (:meth:`Finisher.finish`)
and goes on into the next one; finalizing waits on GCS (the last chunk and its answer), and
on the shipping thread callers would meet a full queue at every rotation. One finalize at a
time: a second waits for the first. When the name was taken meanwhile (GCS checks
``ifGenerationMatch=0`` again when the upload completes), the object goes whole under the
next free name if GCS had confirmed none of it yet. From Python 3.12 no thread starts once
the interpreter is exiting: the object is then finalized on the caller's thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from . import errors
from ._queue import RecordQueue
from ._reporter import Reporter
from ._sinks import Finished, GCSSink, LazyClient, NameTakenError, OpenObject

if TYPE_CHECKING:
    from ._shipper import ShipperConfig

__all__ = ["NAME_ATTEMPTS", "DeadlineEvent", "Finisher", "ObjectNames"]

# How many times a taken name (another process got there first) is skipped before giving up.
NAME_ATTEMPTS = 100


class DeadlineEvent(threading.Event):
    """The handler's "give up" signal: set by close() past its timeout, or, for shipping
    done inline on a closing thread (no other thread can set it then), set by itself once
    ``deadline`` (monotonic) has passed. Uploads stop retrying at their next wait."""

    def __init__(self) -> None:
        super().__init__()
        self.deadline = math.inf

    def is_set(self) -> bool:
        return super().is_set() or time.monotonic() >= self.deadline

    def wait(self, timeout: float | None = None) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return True
        if math.isinf(remaining):
            return super().wait(timeout)
        limit = remaining if timeout is None else min(timeout, remaining)
        return super().wait(limit) or self.is_set()


class ObjectNames:
    """The next object name of a window: the shipping and the finisher thread both ask."""

    def __init__(
        self, config: ShipperConfig, identity: dict[str, Any], stream_name: Callable[[], str]
    ) -> None:
        self._config = config
        self._identity = identity  # pid and instance token: fixed for this process
        self._stream_name = stream_name
        self._seq = 0
        self._lock = threading.Lock()

    def next(self, window: float) -> str:
        config = self._config
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
        name = config.template.render(
            start=datetime.fromtimestamp(window, timezone.utc),
            seq=seq,
            host=config.host,
            pid=self._identity["pid"],
            stream=self._stream_name(),
            instance=self._identity["instance"],
        )
        return name + ".gz" if config.gzip and not name.endswith(".gz") else name


class Finisher:
    """Finalizes ended objects one at a time on a thread of their own."""

    def __init__(
        self,
        config: ShipperConfig,
        queue: RecordQueue,
        reporter: Reporter,
        *,
        client: LazyClient,
        cancel: DeadlineEvent,
        names: ObjectNames,
        own_threads: set[int],
    ) -> None:
        self._config = config
        self._queue = queue
        self._reporter = reporter
        self._client = client
        self._cancel = cancel
        self._names = names
        self._thread: threading.Thread | None = None
        self.own_threads = own_threads

    def finish(self, current: OpenObject) -> None:
        """Finalize ``current`` beside the caller (after the previous one is done)."""
        self.wait()
        thread = threading.Thread(
            target=self._finish,
            args=(current,),
            name=f"gcs_log_sink:{self._config.bucket}:finish",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # the interpreter is exiting (3.12+): finalize right here
            self._finish(current)
            return
        self._thread = thread

    def wait(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None

    def _finish(self, current: OpenObject) -> None:
        """Finalize, verify, count, tell ``on_finalize``."""
        me = threading.get_ident()
        self.own_threads.add(me)
        try:
            try:
                finished = current.sink.finish(current.records)
            except NameTakenError as taken:
                self._reporter.report(
                    "name-taken", f"{taken}; shipping the object under the next free name"
                )
                finished = self._ship_under_a_free_name(current.window, taken.data)
        except Exception as exc:
            self._queue.object_done(current.records, 0, "lost", first_created=current.first_created)
            self._reporter.report(type(exc).__name__, f"cannot finalize an object: {exc}")
            return
        finally:
            self.own_threads.discard(me)
        self._queue.object_done(
            current.records, current.size, "shipped", first_created=current.first_created
        )
        on_finalize = self._config.on_finalize
        if on_finalize is not None and finished is not None:
            try:
                on_finalize(finished.name, finished.generation, finished.size)
            except Exception as exc:
                self._reporter.report("on_finalize", f"on_finalize raised {exc!r}")

    def _ship_under_a_free_name(self, window: float, data: bytes) -> Finished:
        """A whole object whose name was taken at its finalize, under the next free name."""
        config = self._config
        for _ in range(NAME_ATTEMPTS):
            try:
                stream = config.options.open(
                    config.bucket,
                    self._names.next(window),
                    client=self._client.get(),
                    cancel=self._cancel,
                    observer=self._reporter,
                )
            except errors.PreconditionFailedError:
                continue
            sink = GCSSink(stream)
            sink.write(data, 0)
            try:
                finished = sink.finish(0)
            except NameTakenError:
                continue
            assert finished is not None
            return finished
        raise errors.UploadError(
            f"{NAME_ATTEMPTS} object names in a row were taken", bucket=config.bucket, name=""
        )
