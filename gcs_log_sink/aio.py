"""AsyncGCSObjectStream: GCSObjectStream for asyncio, never blocking the event loop.

The network I/O runs in a worker thread (``asyncio.to_thread``) over the same protocol core
and the same google-auth session as the synchronous stream. Why not an asyncio HTTP client?
google-auth's credential refresh is synchronous and proven; an aiohttp transport would need
google-auth's still-experimental ``aio`` package and a second transport to keep right. A
chunk upload is one request per ``chunk_size`` bytes, so a thread hop per chunk costs
nothing measurable, while writes that only buffer stay on the loop (no hop at all).

Writes are awaited: when a chunk must be sent, ``await stream.write(data)`` returns once GCS
has it. That is the backpressure that keeps memory near one chunk, e.g. when streaming a
large request body from ``request.stream()`` in FastAPI or Starlette.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .errors import ConfigurationError
from .naming import validate_bucket_name, validate_object_name
from .stream import DEFAULT_CHUNK_SIZE, GCSObjectStream, validate_chunk_size

__all__ = ["AsyncGCSObjectStream"]


class AsyncGCSObjectStream:
    """Stream bytes into one GCS object from a coroutine.

    ``async with AsyncGCSObjectStream(bucket, name, client=client) as out:`` opens the
    resumable session (in a thread), and on exit finalizes the object, even when the block
    raised, unless :meth:`abort` was awaited. Arguments are those of
    :class:`~gcs_log_sink.GCSObjectStream`, checked here, at construction.
    """

    def __init__(
        self,
        bucket: str,
        name: str,
        *,
        client: Any = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = 0,
        timeout: float = 60.0,
        retry_deadline: float = 120.0,
    ) -> None:
        self.bucket = validate_bucket_name(bucket)
        self.name = validate_object_name(name)
        validate_chunk_size(chunk_size)
        self._options: dict[str, Any] = {
            "client": client,
            "chunk_size": chunk_size,
            "content_type": content_type,
            "metadata": metadata,
            "if_generation_match": if_generation_match,
            "timeout": timeout,
            "retry_deadline": retry_deadline,
        }
        self._stream: GCSObjectStream | None = None
        self._closed = False
        # One operation at a time: an inline write must never wait on the stream's thread
        # lock while a chunk upload holds it, or the event loop would block.
        self._lock = asyncio.Lock()

    async def open(self) -> AsyncGCSObjectStream:
        """Open the resumable session; ``async with`` calls this for you."""
        async with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed AsyncGCSObjectStream")
            if self._stream is None:
                self._stream = await asyncio.to_thread(
                    GCSObjectStream, self.bucket, self.name, **self._options
                )
        return self

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data``; when a whole chunk is buffered, return once GCS has it."""
        if isinstance(data, str):
            raise TypeError(
                "AsyncGCSObjectStream is binary: write bytes, not str (encode it first)"
            )
        size = memoryview(data).nbytes
        async with self._lock:
            stream = self._require_open()
            if stream.buffered + size < stream.chunk_size:
                return stream.write(data)  # buffers only: no I/O, no thread hop
            return await asyncio.to_thread(stream.write, data)

    async def flush(self) -> None:
        """Send every whole 256 KiB unit buffered (see ``GCSObjectStream.flush``)."""
        async with self._lock:
            await asyncio.to_thread(self._require_open().flush)

    async def close(self) -> None:
        """Send the rest, finalize and verify the object. A second call does nothing."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._stream is not None:
                await asyncio.to_thread(self._stream.close)

    async def abort(self) -> None:
        """Cancel the upload: nothing written becomes an object."""
        async with self._lock:
            self._closed = True
            if self._stream is not None:
                await asyncio.to_thread(self._stream.abort)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def generation(self) -> int | None:
        return self._stream.generation if self._stream else None

    @property
    def size(self) -> int | None:
        return self._stream.size if self._stream else None

    @property
    def crc32c(self) -> str | None:
        return self._stream.crc32c if self._stream else None

    def tell(self) -> int:
        return self._stream.tell() if self._stream else 0

    def _require_open(self) -> GCSObjectStream:
        if self._closed:
            raise ValueError("I/O operation on closed AsyncGCSObjectStream")
        if self._stream is None:
            raise ConfigurationError(
                "AsyncGCSObjectStream is not open: use 'async with' or 'await stream.open()'"
            )
        return self._stream

    async def __aenter__(self) -> AsyncGCSObjectStream:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._stream else "not opened")
        return f"<AsyncGCSObjectStream gs://{self.bucket}/{self.name} {state}>"
