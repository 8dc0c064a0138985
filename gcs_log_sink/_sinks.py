"""Where the shipper writes an object's bytes: GCS directly, a spool segment, or gzip on top.

Who runs this code: the shipping thread writes and flushes; the finisher thread (GCS) or
the shipping thread itself (a spool segment: a local seal) finishes. One object, one sink,
one owner at a time: the shipper hands a sink to the finisher and never touches it again.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import errors
from .spool import Segment, Spool
from .stream import GCSObjectStream, UploadObserver

__all__ = [
    "Finished",
    "GCSSink",
    "GzipSink",
    "LazyClient",
    "NameTakenError",
    "OpenObject",
    "SegmentSink",
    "Sink",
    "StreamOptions",
]


@dataclass(frozen=True)
class StreamOptions:
    """The settings every object of one handler is opened with (checked by the handler)."""

    chunk_size: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    retry_deadline: float = float("inf")

    def open(
        self,
        bucket: str,
        name: str,
        *,
        client: Any,
        cancel: threading.Event,
        observer: UploadObserver | None,
    ) -> GCSObjectStream:
        """Open a resumable upload of ``bucket/name`` with these settings."""
        return GCSObjectStream(bucket, name, client=client, **self.as_kwargs(cancel, observer))

    def as_kwargs(self, cancel: threading.Event, observer: UploadObserver | None) -> dict[str, Any]:
        """These settings as the keyword arguments of :class:`GCSObjectStream`, which
        :func:`~gcs_log_sink.recovery.ship_segment` passes on (listed once, here)."""
        return {
            "chunk_size": self.chunk_size,
            "content_type": self.content_type,
            "metadata": self.metadata,
            "timeout": self.timeout,
            "retry_deadline": self.retry_deadline,
            "_cancel": cancel,
            "_observer": observer,
        }


class NameTakenError(Exception):
    """A finalize refused because the name was taken meanwhile; ``data`` is the whole object."""

    def __init__(self, data: bytes, cause: errors.PreconditionFailedError) -> None:
        super().__init__(str(cause))
        self.data = data


@dataclass(frozen=True)
class Finished:
    """A finalized object, for ``on_finalize``; None from a sink that only seals."""

    name: str
    generation: int
    size: int


class Sink(Protocol):
    """One object's bytes on their way out."""

    name: str
    # Finishing waits on the network: the shipper runs it on the finisher thread.
    finishes_remotely: bool

    def write(self, data: bytes, records: int) -> None:
        """Append records' bytes (raises UploadError or OSError)."""

    def flush(self) -> None:
        """Push what is written as far as this sink can before it is finished."""

    def finish(self, records: int) -> Finished | None:
        """End the object; its description when it is finalized in GCS."""

    def abort(self) -> None:
        """Give the object up; never raises."""


class GCSSink:
    """Straight into a resumable upload."""

    finishes_remotely = True

    def __init__(self, stream: GCSObjectStream) -> None:
        self._stream = stream
        self.name = stream.name

    def write(self, data: bytes, records: int) -> None:
        self._stream.write(data)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self, records: int) -> Finished | None:
        try:
            self._stream.close()
        except errors.PreconditionFailedError as exc:
            # GCS checks ifGenerationMatch=0 again when the upload completes: another
            # writer finalized this name first. While GCS has confirmed none of our bytes,
            # they are all still held and can go under another name.
            retained = self._stream._retained_whole()
            if retained is None:
                raise
            raise NameTakenError(retained, exc) from exc
        return Finished(self.name, self._stream.generation or 0, self._stream.size or 0)

    def abort(self) -> None:
        self._stream.abort()


class SegmentSink:
    """Into a spool segment, fsynced at ``flush()``; the upload thread ships it."""

    finishes_remotely = False

    def __init__(
        self, spool: Spool, bucket: str, name: str, *, gzip: bool, compose_into: str | None
    ) -> None:
        # With gzip, recovery can end an unfinished stream so that it decompresses;
        # compose_into lets recover compose a killed build's parts into its build.log.
        self.segment: Segment = spool.create(
            bucket, name, compression="gzip" if gzip else None, compose_into=compose_into
        )
        self.name = name

    def write(self, data: bytes, records: int) -> None:
        self.segment.write(data, records)

    def flush(self) -> None:
        self.segment.sync()  # flush() acknowledges records once they are on disk

    def finish(self, records: int) -> Finished | None:
        self.segment.state["records"] = records
        self.segment.seal()
        return None

    def abort(self) -> None:
        try:
            self.segment.state["records"] = 0
            self.segment.seal()
        except OSError:
            pass  # the spool's disk is what failed; the upload thread reports the segment


class GzipSink:
    """One gzip stream over another sink, sync-flushed at ``flush()`` so memory stays flat
    and everything flushed decodes from the object's prefix."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        self.name = inner.name
        self.finishes_remotely = inner.finishes_remotely

    def write(self, data: bytes, records: int) -> None:
        self.inner.write(self._compressor.compress(data), records)

    def flush(self) -> None:
        self.inner.write(self._compressor.flush(zlib.Z_SYNC_FLUSH), 0)
        self.inner.flush()

    def finish(self, records: int) -> Finished | None:
        try:
            self.inner.write(self._compressor.flush(zlib.Z_FINISH), 0)
        except OSError:
            # The spool's disk failed the gzip end: the segment is still sealed (recovery
            # ends the stream at its last sync flush), else it would wait for more forever.
            self.inner.finish(records)
            raise
        return self.inner.finish(records)

    def abort(self) -> None:
        self.inner.abort()


@dataclass
class OpenObject:
    """The object being written, and what went into it (uncompressed)."""

    sink: Sink
    window: float
    deadline: float  # monotonic: when its window is over
    size: int = 0
    records: int = 0
    first_created: float | None = None


class LazyClient:
    """The storage client, made on first use by whichever shipping thread needs it first
    (finding credentials can be slow: never on the caller's thread)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                from .stream import default_client

                self._client = default_client()
            return self._client

    def after_fork(self) -> None:
        """In a forked child: the parent's connection pool must not be shared (the child
        makes its own), and the lock may have been held by a parent thread at the fork."""
        self._lock = threading.Lock()
        if self._client is not None and hasattr(self._client, "_http_internal"):
            self._client._http_internal = None
