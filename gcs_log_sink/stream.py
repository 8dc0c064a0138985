"""GCSObjectStream: a write-only file that streams into one GCS object, chunk by chunk.

The bytes live in a :class:`._chunks.ChunkBuffer` until GCS confirms them; the protocol is
the pure :mod:`._protocol`; which failures are retried and for how long is :mod:`._retry`.
This module only drives them: it sends, sleeps between tries, and raises typed errors.

Recovery rule: after any failure where the server may have seen the request (a reset, a
timeout, a 5xx, a 429), ask the session how many bytes it holds and continue from exactly
there. Never resend blindly: a resent chunk at a stale offset is how duplicates are made.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

from . import errors
from ._chunks import UPLOAD_UNIT, ChunkBuffer, crc32c_base64, next_chunk_length
from ._protocol import (
    Finalized,
    Persisted,
    Request,
    cancel_request,
    chunk_request,
    error_message,
    initiate_request,
    object_request,
    parse_object_resource,
    parse_session_url,
    parse_upload_answer,
    status_request,
)
from ._retry import Attempt, RetryPolicy, Verdict, classify_status
from ._transport import (
    Answer,
    CredentialsError,
    InvalidRequestError,
    Transport,
    TransportError,
    user_agent,
)
from .naming import validate_bucket_name, validate_object_name
from .spool import Segment, Spool

__all__ = ["DEFAULT_CHUNK_SIZE", "GCSObjectStream"]

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
# Small ``bytes`` writes are staged (kept by reference in a list) and go into the chunk
# buffer about _STAGE_BYTES at a time: one join, one CRC32C call and one copy into place
# per ~64 KiB instead of a method call, a CRC32C call and a slice copy per write (issue 13:
# at 4 KiB that is ~260,000 writes per GiB). Writes of _STAGE_WRITE_MAX or more gain
# nothing from it and go straight in. Staged bytes count in tell() and ``buffered``, and
# with a spool each write still goes to the segment first, as it did.
_STAGE_WRITE_MAX = 16 * 1024
_STAGE_BYTES = 64 * 1024
# How long a garbage-collected stream tries to cancel its session: a finalizer runs on
# whatever thread collects it, so it must not block for a whole ``timeout``.
_ABANDON_SECONDS = 2.0


def validate_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` if it is a positive multiple of 256 KiB, else a clear error."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise errors.ConfigurationError(
            f"chunk_size must be an int, not {type(chunk_size).__name__}"
        )
    if chunk_size <= 0 or chunk_size % UPLOAD_UNIT:
        raise errors.ConfigurationError(
            f"chunk_size must be a positive multiple of 256 KiB ({UPLOAD_UNIT} bytes), "
            f"got {chunk_size}"
        )
    return chunk_size


def _positive_seconds(option: str, value: float, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.ConfigurationError(f"{option} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise errors.ConfigurationError(f"{option} must be positive, got {value!r}")
    return float(value)


def _validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise errors.ConfigurationError("metadata must be a mapping of str to str")
    return dict(metadata)


def validate_endpoint(endpoint: Any, source: str = "api_endpoint") -> str:
    """``endpoint`` if a request can be sent to it, else a :class:`ConfigurationError`.

    Without this, ``STORAGE_EMULATOR_HOST=localhost:9023`` (no scheme) or a port that no
    socket can connect to fails every request the same way, and the retry loop would go on
    for ``retry_deadline`` before saying anything. These never work: say so at once.
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise errors.ConfigurationError(f"{source} is empty: expected http(s)://host[:port]")
    parts = urlsplit(endpoint)
    shown = endpoint if "@" not in parts.netloc else "<an endpoint with credentials in it>"
    if parts.scheme not in ("http", "https"):
        raise errors.ConfigurationError(
            f"{source} must start with http:// or https://, got {shown!r}"
        )
    try:
        port = parts.port
    except ValueError:
        raise errors.ConfigurationError(f"{source} has an invalid port: {shown!r}") from None
    if not parts.hostname:
        raise errors.ConfigurationError(f"{source} names no host: {shown!r}")
    if port == 0:
        raise errors.ConfigurationError(f"{source} has port 0, which no server listens on")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in endpoint) or parts.query or parts.fragment:
        raise errors.ConfigurationError(f"{source} is not a plain base URL: {shown!r}")
    return endpoint


def default_client() -> Any:
    """``google.cloud.storage.Client()``: the user's credentials, project and emulator host.

    The endpoint is checked first (``STORAGE_EMULATOR_HOST``, then the client's own), so a
    mistyped one is one :class:`ConfigurationError` here, for the handler, the CLI and the
    stream alike, instead of a retry loop against a URL that can never answer.
    """
    from google.cloud import storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:  # set but empty is unset, for google-cloud-storage too
        validate_endpoint(emulator, "STORAGE_EMULATOR_HOST")
    client = storage.Client()
    validate_endpoint(getattr(client, "api_endpoint", None), "the storage client's api_endpoint")
    return client


class UploadObserver(Protocol):
    """Told of each failed try and each answer from GCS (a handler's outage reporting)."""

    def retrying(self, reason: str) -> None:
        """A request failed in a way that is retried; ``reason`` names no secret."""

    def answered(self) -> None:
        """GCS answered a request (not with a retryable status): it is reachable."""


class GCSObjectStream(io.BufferedIOBase):
    """A binary, write-only file whose bytes become one GCS object.

    ``write()`` buffers and sends a chunk whenever ``chunk_size`` bytes are buffered;
    ``flush()`` sends every whole 256 KiB unit buffered (GCS takes nothing smaller before the
    end); ``close()`` sends the rest, finalizes the object and checks its CRC32C and size.
    A ``with`` block that ends in an exception still finalizes what was written: logs must
    not vanish. Call :meth:`abort` to cancel instead.

    The session is opened in the constructor, so a missing bucket or a permission problem
    is raised where the stream is created. Memory stays near one chunk plus the largest
    single write, whatever the total. Thread-safe; not fork-safe (open a new one in the
    child).

    After ``close()``: :attr:`generation`, :attr:`size` and :attr:`crc32c` (base64, as
    GCS reports it) describe the object.

    With ``spool_dir``, every byte is also appended to a spool segment (and ``flush()``
    fsyncs it) with the session URL beside it, so a crashed writer's object can be finished
    by ``gcs-log-sink recover``; the segment is deleted once the object is verified.
    """

    def __init__(
        self,
        bucket: str | Any,
        name: str,
        *,
        client: Any = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = 0,
        timeout: float = 60.0,
        retry_deadline: float = 120.0,
        _cancel: threading.Event | None = None,
        _rng: random.Random | None = None,
        spool_dir: str | None = None,
        _resume: tuple[str, Callable[[int], int]] | None = None,
        _observer: UploadObserver | None = None,
    ) -> None:
        super().__init__()
        # State close() reads first: a constructor that raises still leaves a closable
        # object, and IOBase.__del__ will close it.
        self._lock = threading.RLock()  # IOBase.close() calls flush() under our lock
        self._opened = False
        self._failure: errors.GCSLogSinkError | None = None
        self._result: Finalized | None = None
        self._buffer = ChunkBuffer()  # room for a chunk once chunk_size is known
        self._staged: list[bytes] = []  # written, not yet in self._buffer (see write())
        self._staged_size = 0
        # Writes re-entered by a signal handler on the thread inside a call of ours, in
        # order; the interrupted call (or the next one) takes them in (see _defer).
        self._deferred: list[bytes] = []
        self._closing = False
        self._end = 0  # tell(): bytes written, staged ones included
        # The tell() at which a whole chunk is held (confirmed + chunk_size): a write that
        # reaches it sends, staged or not. Never above the truth (confirmed only grows).
        self._chunk_due = 0
        self._resumed_at = 0
        self._wire_error = "connection failed"  # why the last request got no answer
        self._spool: Spool | None = None
        self._segment: Segment | None = None
        if not isinstance(bucket, str) and hasattr(bucket, "name"):
            client = client if client is not None else getattr(bucket, "client", None)
            bucket = bucket.name
        self.bucket: str = validate_bucket_name(bucket)
        self.name: str = validate_object_name(name)
        self._chunk_size = validate_chunk_size(chunk_size)
        self._buffer = ChunkBuffer(self._chunk_size)
        self._chunk_due = self._chunk_size
        if not isinstance(content_type, str) or not content_type:
            raise errors.ConfigurationError("content_type must be a non-empty str")
        self._metadata = _validate_metadata(metadata)
        if if_generation_match is not None and (
            isinstance(if_generation_match, bool) or not isinstance(if_generation_match, int)
        ):
            raise errors.ConfigurationError("if_generation_match must be an int or None")
        self._policy = RetryPolicy(
            deadline=_positive_seconds("retry_deadline", retry_deadline, zero_ok=True)
        )
        timeout = _positive_seconds("timeout", timeout)
        # Set by an owner that gives up (a handler closing past its timeout): the retry
        # loop stops at its next wait instead of retrying on for retry_deadline.
        self._cancel = _cancel or threading.Event()
        self._rng = _rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._observer = _observer
        self._client = client if client is not None else default_client()
        self._endpoint = validate_endpoint(
            getattr(self._client, "api_endpoint", None), "the client's api_endpoint"
        )
        self._transport = Transport.for_client(self._client, timeout)
        if spool_dir is not None:
            # Locked before any request: a second writer on this spool fails here, at once.
            self._spool = Spool(spool_dir, f"object-{self.name}")
        if _resume is None:
            try:
                self._session_url = self._initiate(content_type, if_generation_match)
            except BaseException:
                if self._spool is not None:
                    self._spool.release()
                raise
            if self._spool is not None:
                # The session URL on disk before the first byte: a crash is resumable.
                self._segment = self._spool.create(self.bucket, self.name)
                self._segment.state["session_url"] = self._session_url
                self._segment.save()
        else:
            # A session a dead process opened (the spool kept its URL): ask GCS where it
            # stands; the caller then writes the bytes from ``resumed_at`` on.
            self._session_url, prefix_crc = _resume
            self._resume_from_server(prefix_crc)
        self._opened = True

    @property
    def resumed_at(self) -> int:
        """How many bytes GCS held when this stream started: 0 unless resumed."""
        return self._resumed_at

    def _resume_from_server(self, prefix_crc: Callable[[int], int]) -> None:
        self._resumed_at = 0
        attempt: Attempt | None = None
        while True:
            answer = self._send(status_request(self._session_url), attempt)
            if answer is None:
                attempt = self._wait(attempt, self._wire_error)
                continue
            verdict = classify_status(answer.status)
            if verdict is Verdict.RETRY:
                attempt = self._wait(attempt, f"HTTP {answer.status}")
                continue
            if verdict not in (Verdict.OK, Verdict.INCOMPLETE):
                self._fail_for(verdict, answer)
            try:
                outcome = parse_upload_answer(answer.status, answer.headers, answer.body)
            except ValueError as exc:
                if answer.status == 308:
                    self._fail(errors.UploadError, f"GCS answered inconsistently: {exc}", answer)
                # Finalized before the crash, but the answer is unreadable: ask the object.
                outcome = self._fetch_object(None, attempt)
            if isinstance(outcome, Finalized):
                # Finalized before the crash: nothing left to send. The size is what the
                # caller (recovery) compares with its spool, so it must be known.
                if outcome.size is None:
                    outcome = self._fetch_object(outcome.generation, attempt)
                self._result = outcome
                self._resumed_at = self._known_size(outcome)
                return
            self._buffer.start_at(outcome.offset, prefix_crc(outcome.offset))
            self._end = outcome.offset
            self._chunk_due = outcome.offset + self._chunk_size
            self._resumed_at = outcome.offset
            return

    def _active(self) -> bool:
        """Open, healthy and not yet finalized: the only state in which to send."""
        return self._opened and self._failure is None and self._result is None and not self.closed

    # -- the file interface ------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # bytes-like; Any to keep BufferedIOBase's signature
        """Buffer ``data``; send a chunk if a whole one is buffered. Returns ``len(data)``."""
        # "with", not acquire()/try (~0.15 us cheaper): CPython runs signal handlers after a
        # C call returns, so a KeyboardInterrupt between acquire() and the try would leave
        # the lock held for ever, and close() would then hang; "with" leaves no such gap.
        lock = self._lock
        if type(data) is bytes:
            size = len(data)
            if size < _STAGE_WRITE_MAX:
                # A signal handler, running on this thread inside a call of ours:
                if lock._is_owned():  # type: ignore[attr-defined]
                    return self._defer(data)
                # The common case (small ``bytes``): kept by reference, no copy, no CRC yet.
                with lock:
                    if self._failure is not None or self.closed:
                        self._check_open()
                    if self._segment is not None:
                        self._segment.write(data, 0)  # the spool first: crash-safe order
                    self._staged.append(data)
                    self._end = end = self._end + size
                    self._staged_size = staged = self._staged_size + size
                    if staged >= _STAGE_BYTES or end >= self._chunk_due:
                        self._unstage()
                        if self._buffer.pending >= self._chunk_size:
                            self._upload(final=False, drain=False)
                    if self._deferred:
                        self._take_deferred()
                return size
            block = data
        elif isinstance(data, str):
            raise TypeError(
                "GCSObjectStream is binary: write bytes, or wrap it in io.TextIOWrapper"
            )
        else:
            block = bytes(memoryview(data).cast("B"))
        if lock._is_owned():  # type: ignore[attr-defined]
            return self._defer(block)
        with lock:
            if self._failure is not None or self.closed:
                self._check_open()
            self._append_block(block)
            if self._deferred:
                self._take_deferred()
        return len(block)

    def _append_block(self, block: bytes) -> None:
        """``write()`` of a block that is not staged; under the lock, checked open."""
        if self._segment is not None:
            self._segment.write(block, 0)
        if self._staged:
            self._unstage()  # the staged bytes come first
        self._end += len(block)
        if self._buffer.append(block) >= self._chunk_size:
            self._upload(final=False, drain=False)

    def _defer(self, block: bytes) -> int:
        """A write from a signal handler that runs on the thread inside a call of ours.

        The interrupted call may be halfway through the staged list, the chunk buffer, the
        spool segment or a send (the lock is re-entrant, so the handler gets in): touching
        any of them here would split or resend bytes. So the block is kept aside, in order,
        and the interrupted call takes it in before it returns (it lands between two whole
        writes); until then it is in memory only, even with a spool.
        """
        if self._failure is not None or self.closed:
            self._check_open()
        if self._closing:
            raise ValueError("write() from a signal handler while the stream is closing")
        self._deferred.append(block)  # one bytecode: safe against a further signal
        return len(block)

    def _take_deferred(self) -> None:
        """Take in the writes signal handlers deferred (under the lock, not re-entered)."""
        while self._deferred:
            # A signal between the two assignments appends to ``pieces``, taken below.
            pieces, self._deferred = self._deferred, []
            self._append_block(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _unstage(self) -> None:
        """Move the staged writes into the chunk buffer (one join, one CRC32C call).

        When they hold more than the rest of a chunk, the chunk is filled exactly, sent,
        and the rest goes in after: the buffer then never grows past its chunk for small
        writes (memory stays one chunk, recycled as it is; see ChunkBuffer.recycle).
        """
        staged = self._staged
        if not staged:
            return
        size = self._staged_size
        room = self._chunk_size - self._buffer.pending
        if not 0 < room < size or not self._active():
            block = staged[0] if len(staged) == 1 else b"".join(staged)
            staged.clear()
            self._staged_size = 0
            self._buffer.append(block)
            return
        index, filled = 0, 0
        while filled + len(staged[index]) <= room:
            filled += len(staged[index])
            index += 1
        cut = memoryview(staged[index])
        head = b"".join([*staged[:index], cut[: room - filled]])
        tail = b"".join([cut[room - filled :], *staged[index + 1 :]])
        cut.release()
        staged.clear()
        self._staged_size = 0
        self._buffer.append(head)
        try:
            self._upload(final=False, drain=False)
        except BaseException:
            # Not lost: still staged, so tell() stays true and a later close() sends it.
            staged.append(tail)
            self._staged_size = len(tail)
            raise
        self._buffer.append(tail)

    def flush(self) -> None:
        """Send every whole 256 KiB unit buffered.

        What is left (less than 256 KiB) can only reach GCS with the final chunk, at
        ``close()``: GCS accepts nothing smaller before the end of an upload.
        """
        if self._lock._is_owned():  # type: ignore[attr-defined]
            return  # a signal handler inside a call of ours, or IOBase.close() in close()
        with self._lock:
            if self._deferred and self._active():
                self._take_deferred()
            if self._active() and self._segment is not None:
                self._segment.sync()  # with a spool, flushed bytes survive a crash
            self._unstage()
            if self._active() and self._buffer.pending >= UPLOAD_UNIT:
                self._upload(final=False, drain=True)

    def close(self) -> None:
        """Send the rest, finalize the object, verify it. A second call does nothing."""
        with self._lock:
            if self.closed:
                return
            self._closing = True
            try:
                if self._active():
                    if self._deferred:
                        self._take_deferred()
                    self._upload(final=True, drain=True)
                    # Verified, and no request of ours is in flight: the chunk memory can
                    # serve the next stream (a failed close keeps it: _retained_whole).
                    self._buffer.recycle()
                    if self._segment is not None:
                        self._segment.remove()  # GCS has it all, verified
            finally:
                if self._spool is not None:
                    self._spool.release()  # what is left is for 'gcs-log-sink recover'
                super().close()

    def abort(self) -> None:
        """Cancel the upload: nothing written becomes an object. Never raises for GCS."""
        self._abort(None)

    def _abort(self, not_after: float | None) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                if self._active():
                    self._transport.send(cancel_request(self._session_url), not_after=not_after)
            except (TransportError, CredentialsError, InvalidRequestError):
                pass  # an uncancelled session expires by itself, unseen
            finally:
                self._failure = self._failure or errors.SessionLostError(
                    "upload aborted", bucket=self.bucket, name=self.name
                )
                self._staged.clear()
                self._deferred.clear()
                self._buffer.recycle()  # under the lock: no request of ours is in flight
                if self._segment is not None:
                    self._segment.remove()
                if self._spool is not None:
                    self._spool.release()
                super().close()

    def __del__(self) -> None:
        """Dropped unfinished (no ``close()``, no ``with``): abort, never finalize.

        ``IOBase.__del__`` would call ``close()``, which finalizes: a stream lost to an
        exception path or a forgotten reference would then publish a truncated object that
        looks complete. Only ``close()`` and ``with`` make an object; this cancels the
        session (a short, bounded try: a finalizer must not hang) and releases the spool.
        """
        try:
            if self.closed:
                return
            cancel = getattr(self, "_cancel", None)  # None: the constructor raised early
            if sys.is_finalizing() or cancel is None or cancel.is_set():
                # At exit, or the owner already gave up on GCS: no request at all (an
                # unfinalized session is invisible and expires by itself).
                self._opened = False
            self._abort(time.monotonic() + _ABANDON_SECONDS)
        except Exception:  # noqa: S110 - a finalizer must not raise; the session expires
            pass

    def _detach(self) -> None:
        """Close without finalizing or cancelling: the session stays resumable (spool)."""
        with self._lock:
            if not self.closed:
                self._failure = self._failure or errors.SessionLostError(
                    "detached", bucket=self.bucket, name=self.name
                )
                super().close()

    def _retained_whole(self) -> bytes | None:
        """Every byte written, while GCS has confirmed none of them (all are still held):
        what a writer can send again under another name when the finalize was refused."""
        with self._lock:
            self._unstage()
            if self._buffer.confirmed != 0:
                return None
            return bytes(self._buffer.peek(self._buffer.pending))

    def tell(self) -> int:
        """Bytes written so far (with any a signal handler's write deferred, see _defer)."""
        deferred = self._deferred
        return self._end + sum(map(len, deferred)) if deferred else self._end

    @property
    def buffered(self) -> int:
        """Bytes written but not yet confirmed by GCS: the memory this stream holds."""
        return self._end - self._buffer.confirmed

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def generation(self) -> int | None:
        """The finalized object's generation, or ``None`` before ``close()``."""
        return self._result.generation if self._result else None

    @property
    def size(self) -> int | None:
        """The finalized object's size in bytes, or ``None`` before ``close()``."""
        return self._result.size if self._result else None

    @property
    def crc32c(self) -> str | None:
        """The finalized object's CRC32C (base64, as GCS gives it), or ``None``."""
        return self._result.crc32c if self._result else None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<GCSObjectStream gs://{self.bucket}/{self.name} {state}>"

    # -- driving the protocol ---------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed GCSObjectStream")
        if self._failure is not None:
            raise self._failure

    def _initiate(self, content_type: str, if_generation_match: int | None) -> str:
        request = initiate_request(
            self._endpoint,
            self.bucket,
            self.name,
            content_type=content_type,
            metadata=self._metadata,
            if_generation_match=if_generation_match,
            user_agent=user_agent(),
        )
        attempt: Attempt | None = None
        while True:
            answer = self._send(request)
            if answer is None:
                attempt = self._wait(attempt, self._wire_error)
                continue
            if answer.status in (200, 201):
                session_url = parse_session_url(answer.headers)
                if session_url is None:
                    self._fail(errors.UploadError, "GCS opened no session (no Location)", answer)
                return session_url
            verdict = classify_status(answer.status)
            if verdict is Verdict.RETRY:
                attempt = self._wait(attempt, f"HTTP {answer.status}")
                continue
            if answer.status == 404:
                self._fail(errors.BucketNotFoundError, "bucket not found", answer)
            self._fail_for(verdict, answer)

    def _upload(self, *, final: bool, drain: bool) -> None:
        """Send what the chunk policy says, recovering from faults, until done or failed."""
        self._unstage()
        try:
            self._upload_loop(final=final, drain=drain)
        finally:
            self._chunk_due = self._buffer.confirmed + self._chunk_size

    def _upload_loop(self, *, final: bool, drain: bool) -> None:
        attempt: Attempt | None = None
        asking = False  # the next request is a status query, not data
        while True:
            if asking:
                request = status_request(self._session_url)
            else:
                length = next_chunk_length(
                    self._buffer.confirmed,
                    self._buffer.pending,
                    self._chunk_size,
                    final=final,
                    drain=drain,
                )
                if length is None:
                    return
                # A view of the buffer, not a copy: nothing appends or releases while it
                # is sent (the lock is held), and each request gets a fresh one.
                request = chunk_request(
                    self._session_url,
                    self._buffer.confirmed,
                    self._buffer.view(length),
                    total=self._buffer.end if final else None,
                    crc32c=self._buffer.crc32c,
                )
            before = self._buffer.confirmed
            answer = self._send(request, attempt)
            if answer is None:
                attempt = self._wait(attempt, self._wire_error)
                asking = True
                continue
            verdict = classify_status(answer.status)
            if verdict is Verdict.RETRY:
                attempt = self._wait(attempt, f"HTTP {answer.status}")
                asking = True
                continue
            if verdict not in (Verdict.OK, Verdict.INCOMPLETE):
                self._fail_for(verdict, answer)
            try:
                outcome = parse_upload_answer(answer.status, answer.headers, answer.body)
            except ValueError as exc:
                if answer.status == 308:
                    self._fail(errors.UploadError, f"GCS answered inconsistently: {exc}", answer)
                if not final:
                    self._fail(errors.UploadError, "GCS finalized the object before close()", None)
                # Finalized (a 200) but the answer is cut short or not JSON: treat it as a
                # lost answer. The session's status query answers with the object; if that
                # is unreadable too, the object's own metadata says what it holds.
                if asking:
                    self._finish(self._fetch_object(None, attempt))
                    return
                asking = True
                continue
            if isinstance(outcome, Persisted):
                progress = self._take(outcome, answer)
                if progress > before:
                    attempt = None
                elif request.body and not asking:
                    # GCS kept none of a chunk it answered: wait before offering it again.
                    attempt = self._wait(attempt, "no bytes persisted")
                asking = False
                continue
            if not final:
                self._fail(errors.UploadError, "GCS finalized the object before close()", answer)
            if outcome.missing_for(self._buffer.end) is not None:
                # Readable, but without what verification needs (a server that leaves out
                # empty fields): ask the session, then the object, before giving up.
                if not asking:
                    asking = True
                    continue
                outcome = self._fetch_object(outcome.generation, attempt)
            self._finish(outcome)
            return

    def _take(self, outcome: Persisted, answer: Answer) -> int:
        """Release what a 308 says GCS holds; the new confirmed offset."""
        try:
            self._buffer.release_to(outcome.offset)
        except ValueError as exc:
            self._fail(errors.UploadError, f"GCS answered inconsistently: {exc}", answer)
        return outcome.offset

    def _finish(self, outcome: Finalized) -> None:
        """Verify the finalized object against every byte written, then keep its metadata."""
        missing = outcome.missing_for(self._buffer.end)
        if missing is not None:
            self._fail(
                errors.UploadError,
                f"the object was finalized, but GCS reports {missing} for it, so it cannot "
                "be verified",
                None,
            )
        self._verify(outcome)
        # Verified: the object holds exactly what was written, so report that even where
        # the answer left a zero field out.
        self._result = dataclasses.replace(
            outcome, size=self._buffer.end, crc32c=crc32c_base64(self._buffer.crc32c)
        )

    def _fetch_object(self, generation: int | None, attempt: Attempt | None) -> Finalized:
        """The object's metadata, asked of GCS (a GET, under ifGenerationMatch when known).

        For when the final answer was lost or unreadable twice. Retried like any request
        until ``retry_deadline``; 404 and 412 mean the object this upload made is not (or no
        longer) there, which no retry can change.
        """
        request = object_request(
            self._endpoint, self.bucket, self.name, generation=generation, user_agent=user_agent()
        )
        while True:
            answer = self._send(request, attempt)
            if answer is None:
                attempt = self._wait(attempt, self._wire_error)
                continue
            if answer.status == 200:
                try:
                    return parse_object_resource(answer.body)
                except ValueError as exc:
                    attempt = self._wait(attempt, f"object metadata unreadable: {exc}")
                    continue
            verdict = classify_status(answer.status)
            if verdict is Verdict.RETRY:
                attempt = self._wait(attempt, f"HTTP {answer.status}")
                continue
            if answer.status == 404:
                self._fail(
                    errors.UploadError,
                    "GCS answered the final request, but the object is not there",
                    answer,
                )
            if answer.status == 412:
                self._fail(
                    errors.UploadError,
                    "the object was replaced before it could be verified",
                    answer,
                )
            self._fail_for(verdict, answer)

    def _known_size(self, outcome: Finalized) -> int:
        if outcome.size is None:
            self._fail(errors.UploadError, "GCS reports no size for the object", None)
        return outcome.size

    def _verify(self, outcome: Finalized) -> None:
        expected_crc = crc32c_base64(self._buffer.crc32c)
        # An empty object needs neither field (servers may leave zero values out).
        size = outcome.size if outcome.size is not None else 0
        crc = outcome.crc32c if outcome.crc32c is not None else crc32c_base64(0)
        if size != self._buffer.end or crc != expected_crc:
            self._fail(
                errors.IntegrityError,
                f"object holds {size} bytes with CRC32C {crc}, but "
                f"{self._buffer.end} bytes with CRC32C {expected_crc} were written",
                None,
            )

    def _send(self, request: Request, attempt: Attempt | None = None) -> Answer | None:
        """One request; ``None`` when the wire failed and the server may have seen it.

        While retrying, a request may not outlive ``retry_deadline``: with the transport's
        own deadline per request, that bounds the wall time of every operation.
        """
        not_after = None
        if attempt is not None:
            not_after = attempt.started + self._policy.deadline
        try:
            answer = self._transport.send(request, not_after=not_after)
        except TransportError as exc:
            self._wire_error = f"connection failed: {exc}"
            return None
        except InvalidRequestError as exc:
            failure = errors.ConfigurationError(
                f"gs://{self.bucket}/{self.name}: the request URL cannot be sent ({exc}); "
                "check the client's api_endpoint / STORAGE_EMULATOR_HOST"
            )
            self._failure = failure
            raise failure from None
        except CredentialsError as exc:
            self._fail(errors.PermissionDeniedError, f"no usable credentials: {exc}", None)
        if self._observer is not None and classify_status(answer.status) is not Verdict.RETRY:
            self._observer.answered()
        return answer

    def _wait(self, attempt: Attempt | None, reason: str) -> Attempt:
        """Sleep before the next try, or raise once ``retry_deadline`` has passed."""
        now = time.monotonic()
        attempt = attempt or self._policy.start(now)
        delay = attempt.next_delay(now, self._rng)
        if self._observer is not None:
            self._observer.retrying(reason)
        if delay is None or self._cancel.is_set():
            self._fail(
                errors.RetryDeadlineExceededError,
                f"gave up after {attempt.failures + 1} failed tries in "
                f"{now - attempt.started:.1f} s (retry_deadline); last: {reason}",
                None,
            )
        if self._cancel.wait(delay):
            self._fail(errors.RetryDeadlineExceededError, f"cancelled; last: {reason}", None)
        return attempt.failed_again()

    def _fail_for(self, verdict: Verdict, answer: Answer) -> NoReturn:
        kinds: dict[Verdict, tuple[type[errors.UploadError], str]] = {
            Verdict.SESSION_LOST: (errors.SessionLostError, "the upload session is gone"),
            Verdict.CANCELLED: (errors.SessionLostError, "the upload session was cancelled"),
            Verdict.PERMISSION: (errors.PermissionDeniedError, "permission denied"),
            Verdict.PRECONDITION: (
                errors.PreconditionFailedError,
                "the object already exists (if_generation_match)",
            ),
        }
        kind, message = kinds.get(verdict, (errors.UploadError, "GCS refused the request"))
        self._fail(kind, message, answer)

    def _fail(
        self, kind: type[errors.UploadError], message: str, answer: Answer | None
    ) -> NoReturn:
        if answer is not None and answer.status >= 400:
            detail = error_message(answer.body)
            if detail:
                message = f"{message}: {detail}"
        failure = kind(
            message,
            bucket=self.bucket,
            name=self.name,
            status=answer.status if answer is not None else None,
        )
        self._failure = failure
        raise failure
