"""``ls`` and ``cat``: read logs back, streaming, with bounded memory.

Objects are read with google-cloud-storage's ``BlobReader`` (ranged requests of
``READ_CHUNK`` bytes), never downloaded whole; gzip objects are decompressed as they stream,
member by member (a composed gzip log is several members back to back), in bounded pieces.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from .capture import BUILD_LOG
from .errors import GCSLogSinkError
from .gsurl import GSURL

__all__ = ["ONE_TRY", "LogObject", "ReadOptions", "cat", "follow", "list_logs", "stream_object"]

READ_CHUNK = 1024 * 1024


class _Gunzip:
    """Streaming gzip decoding across members, in pieces of at most ``READ_CHUNK``."""

    def __init__(self) -> None:
        self._decoder = zlib.decompressobj(wbits=47)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            yield self._decoder.decompress(data, READ_CHUNK)
            if self._decoder.unconsumed_tail:
                data = self._decoder.unconsumed_tail
            elif self._decoder.eof:
                data = self._decoder.unused_data
                self._decoder = zlib.decompressobj(wbits=47)
            else:
                data = b""


def _is_gzip(blob: Any) -> bool:
    return bool(blob.name.endswith(".gz") or blob.content_type == "application/gzip")


def stream_object(
    blob: Any,
    out: BinaryIO,
    *,
    start: int = 0,
    on_read: Callable[[int], None] | None = None,
    options: ReadOptions | None = None,
) -> None:
    """Copy ``blob`` (from stored byte ``start``) to ``out``, telling ``on_read`` each step."""
    gunzip = _Gunzip() if _is_gzip(blob) else None
    kwargs = (options or ONE_TRY).kwargs()
    with blob.open("rb", chunk_size=READ_CHUNK, **kwargs) as reader:
        if start:
            reader.seek(start)
        while data := reader.read(READ_CHUNK):
            for piece in gunzip.feed(data) if gunzip else (data,):
                out.write(piece)
            out.flush()
            if on_read is not None:
                on_read(len(data))


@dataclass(frozen=True)
class ReadOptions:
    """How each request to GCS is made: ``retry`` (a google.api_core ``Retry``, or None for
    one try) and a per-request ``timeout`` in seconds."""

    retry: Any = None
    timeout: float = 30.0

    def kwargs(self) -> dict[str, Any]:
        return {"retry": self.retry, "timeout": self.timeout}


ONE_TRY = ReadOptions()


@dataclass(frozen=True)
class LogObject:
    """One object under a prefix, as ``ls`` shows it."""

    name: str
    size: int
    updated: datetime | None
    is_part: bool


def list_logs(client: Any, url: GSURL, options: ReadOptions = ONE_TRY) -> list[LogObject]:
    """Every object under ``url`` (an object or a prefix), sorted by name."""
    prefix = f"{url.path}/" if url.path else None
    found = [
        LogObject(blob.name, int(blob.size or 0), blob.updated, "/parts/" in f"/{blob.name}")
        for blob in client.list_blobs(url.bucket, prefix=prefix, **options.kwargs())
    ]
    if url.path:
        exact = client.bucket(url.bucket).get_blob(url.path, **options.kwargs())
        if exact is not None:
            found.append(LogObject(exact.name, int(exact.size or 0), exact.updated, False))
    return sorted(found, key=lambda item: item.name)


def _parts(client: Any, url: GSURL, options: ReadOptions) -> list[Any]:
    return sorted(
        client.list_blobs(url.bucket, prefix=url.child("parts/"), **options.kwargs()),
        key=lambda blob: blob.name,
    )


def _logs_under(client: Any, url: GSURL, options: ReadOptions) -> list[Any]:
    """Every object under the prefix, in name order, but compose scratch objects.

    For a GCSHandler prefix the default template names objects
    ``{prefix}{start:%Y/%m/%d/%H%M%S}-{host}-{pid}-{seq:05d}.log`` (``.gz``): name order is
    time order, then host, process and sequence.
    """
    prefix = f"{url.path}/" if url.path else None
    return sorted(
        (
            blob
            for blob in client.list_blobs(url.bucket, prefix=prefix, **options.kwargs())
            if ".compose-tmp/" not in blob.name
        ),
        key=lambda blob: blob.name,
    )


def cat(client: Any, url: GSURL, out: BinaryIO, options: ReadOptions = ONE_TRY) -> None:
    """Print an object; or a prefix's ``build.log``; or its parts; or every object under it.

    The last is how a :class:`~gcs_log_sink.GCSHandler` prefix reads back: its objects in
    name (so time) order, gzip ones decompressed.
    """
    bucket = client.bucket(url.bucket)
    for name in (url.path, url.child(BUILD_LOG)) if url.path else (BUILD_LOG,):
        blob = bucket.get_blob(name, **options.kwargs())
        if blob is not None:
            stream_object(blob, out, options=options)
            return
    objects = _parts(client, url, options) or _logs_under(client, url, options)
    if not objects:
        raise GCSLogSinkError(f"nothing to print at {url}: no such object, build.log or parts")
    for blob in objects:
        stream_object(blob, out, options=options)


def follow(
    client: Any,
    url: GSURL,
    out: BinaryIO,
    *,
    poll_seconds: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    max_polls: int | None = None,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    note: Callable[[str], None] = lambda message: None,
    options: ReadOptions = ONE_TRY,
) -> None:
    """Print parts as they are finalized, until ``build.log`` appears; then print its rest.

    ``build.log`` is the parts composed in order, so what was printed from parts is exactly
    its prefix: the rest is read from that offset, even if the parts were deleted meanwhile.
    Every poll but the last sleeps ``poll_seconds``, whatever it found (a missing bucket or
    prefix too: ``note`` says once what it waits for). ``timeout``: give up (raise) after
    that many seconds without ``build.log``.
    """
    from google.api_core.exceptions import NotFound

    bucket = client.bucket(url.bucket)
    printed: set[str] = set()
    offset = 0
    polls = 0
    started = clock()
    waiting_for: str | None = None

    def advance(count: int) -> None:
        nonlocal offset
        offset += count

    def waiting(what: str) -> None:
        nonlocal waiting_for
        if waiting_for != what:
            waiting_for = what
            note(f"waiting for {what}")

    while True:
        final = bucket.get_blob(url.child(BUILD_LOG), **options.kwargs())
        if final is not None:
            if offset < int(final.size or 0):
                stream_object(final, out, start=offset, options=options)
            return
        try:
            parts = _parts(client, url, options)
        except NotFound:
            parts = None
            waiting(f"bucket {url.bucket} (not found)")
        if parts is not None and not parts and not printed:
            waiting(f"output at {url} (no parts yet)")
        for blob in parts or ():
            if blob.name in printed:
                continue
            try:
                stream_object(blob, out, on_read=advance, options=options)
            except NotFound:
                break  # composed and deleted under us: build.log has the rest
            printed.add(blob.name)
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return
        if timeout is not None and clock() - started + poll_seconds > timeout:
            raise GCSLogSinkError(
                f"gave up after {timeout:g} s (--timeout): no {BUILD_LOG} at {url} yet"
            )
        sleep(poll_seconds)
