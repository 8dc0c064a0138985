"""``run`` and ``tee``: a build's output to the terminal and, while it runs, to GCS.

The promise to the build: **it is never blocked by GCS.** Three stages, each with one job:

- the *pump* (the main thread) reads the build's output, writes it to the terminal and puts
  it into an :class:`OutputBuffer`. Putting never waits: when the buffer is full the bytes
  are dropped and counted, and once there is room again a marker line saying how many bytes
  were lost, and when (UTC), goes into the stored log in their place;
- the *feeder* thread takes from the buffer and hands the bytes to a
  :class:`~gcs_log_sink.GCSHandler` (``enqueue`` blocks while the handler's queue is full:
  that is where an outage stops, one stage away from the build);
- the handler ships "records" (the chunks) as parts ``PREFIX/parts/<window start>-<seq>.log``,
  finalized every ``part_seconds`` (or ``part_bytes``), so readable while the build runs.

At the end the parts are composed into ``PREFIX/build.log`` and checked against the size and
CRC32C of what was actually shipped: the bytes read, minus those dropped, plus the markers.
With ``spool_dir`` the handler keeps output on disk instead, so an outage fills the spool,
not the buffer.

Signals (``run``): the build runs in its own process group (as CI runners and ``timeout(1)``
run commands); SIGINT, SIGTERM, SIGHUP and SIGQUIT go to the whole group, and a second
signal, or ``kill_after`` seconds, escalates to SIGKILL of the group. The exit status is then
128+N for the signal N received.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import google_crc32c

from . import errors
from ._chunks import crc32c_base64
from .compose import compose, is_transient
from .gsurl import GSURL
from .handler import GCSHandler
from .stream import GCSObjectStream

__all__ = [
    "BUILD_LOG",
    "DEFAULT_BUFFER_BYTES",
    "OutputBuffer",
    "OutputShipper",
    "ShipResult",
    "drop_marker",
    "run_command",
    "stamp_lines",
    "tee_stdin",
]

# One read moves up to this much, and a pipe is grown to match once output floods it
# (FLOWING), else a read gets at most 64 KiB. Measured (1 GiB through tee, CPU of the
# whole process): 256 KiB reads from a 256 KiB pipe cost about 0.1 s/GiB less than 1 MiB
# reads from a 1 MiB pipe: the kernel's copy lands in memory that stays in the cache (L2
# is 4 MiB, shared), and each read is still few enough Python steps. A quarter of the
# pipe pages, too, from the user's shared quota.
READ_SIZE = 256 * 1024
# What drain() copies at most once the grace period is over (a left-behind writer may
# never stop): as much as before reads grew.
DRAIN_BYTES = 4 * 1024 * 1024
# A read that brings this much (a default pipe, full) means output arrives faster than it
# is read: only then is that pipe grown (:func:`grow_pipe`). A build printing line by line
# keeps default pipes, and the user's pipe-pages quota, shared by everything the user
# runs on the host, is spent only on captures that need it.
FLOWING = 64 * 1024
BUILD_LOG = "build.log"
PART_TEMPLATE = "{prefix}{start:%Y%m%dT%H%M%S}Z-{seq:06d}.log"
DEFAULT_BUFFER_BYTES = 32 * 1024 * 1024
# The feeder hands the handler records of up to this size. One read's worth: a full read
# goes on as it is (joining four reads into 1 MiB cost the feeder 0.2 CPU s/GiB, more
# than the handler's fewer records saved), small reads are joined up to it.
FEED_BYTES = READ_SIZE
# How often the pump wakes without output, to check grace periods and escalation.
_TICK = 0.1
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_crc_extend = google_crc32c.extend


def stamp_lines(data: bytes, at_line_start: bool, stamp: bytes) -> tuple[bytes, bool]:
    """Prefix each line that starts in ``data`` with ``stamp``.

    ``at_line_start``: the previous chunk ended a line. A stamp is written only before a
    byte of the line, so a chunk ending in a newline leaves the next line's stamp to the
    chunk that brings it (with its own arrival time). Returns the stamped bytes and the new
    ``at_line_start``.
    """
    out = bytearray()
    pieces = data.split(b"\n")
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        if last and not piece:
            return bytes(out), at_line_start
        if at_line_start:
            out += stamp
        out += piece
        if not last:
            out += b"\n"
            at_line_start = True
        else:
            at_line_start = False
    return bytes(out), at_line_start


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _arrival_stamp() -> bytes:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.").encode() + f"{now.microsecond // 1000:03d}Z ".encode()


def drop_marker(lost: int, first: float, last: float, *, at_line_start: bool) -> bytes:
    """The line that stands in the stored log for ``lost`` bytes dropped between two times.

    It starts on a line of its own (a newline first if the output stopped mid-line), so a
    reader of the log sees it; the number is plain digits, so a tool can parse it.
    """
    text = (
        f"[gcs-log-sink] {lost} bytes of output lost here, {_utc(first)} to {_utc(last)}: "
        "GCS was slow or unreachable and the buffer was full\n"
    )
    return (b"" if at_line_start else b"\n") + text.encode()


class OutputBuffer:
    """A bounded byte queue whose writer never waits: full means dropped, counted, marked.

    The pump puts, the feeder takes. ``capacity`` bounds the bytes held (a marker may pass
    it by its own few bytes). Dropping is whole reads: what is kept is exactly what was read
    minus the dropped reads, plus one marker per run of drops.
    """

    def __init__(
        self,
        capacity: int,
        *,
        wait_when_full: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity <= 0:
            raise errors.ConfigurationError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.wait_when_full = wait_when_full
        self._clock = clock
        self._items: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._closed = False
        lock = threading.Lock()
        self._ready = threading.Condition(lock)  # data for the feeder
        self._room = threading.Condition(lock)  # room for a waiting writer
        self._at_line_start = True
        self._losing = 0  # bytes dropped since the last marker
        self._lost_first = 0.0
        self._lost_last = 0.0
        self.dropped_bytes = 0  # bytes dropped in all
        self.marker_bytes = 0  # bytes of markers put in their place
        self.markers = 0
        # CRC32C of everything kept, in order (reads and markers): what build.log must hold.
        self.crc32c = 0

    @property
    def held(self) -> int:
        """Bytes waiting for the feeder."""
        return self._held

    def put(self, data: bytes) -> None:
        """Keep ``data`` if it fits (after any marker owed), else drop and count it.

        With ``wait_when_full`` (``--on-full wait``), wait for room instead: nothing is
        dropped and the writer is slowed to GCS's pace.
        """
        if not data:
            return
        with self._ready:
            if self._closed:
                raise ValueError("put() on a closed OutputBuffer")
            while self.wait_when_full and self._held + len(data) > self.capacity and self._held:
                self._room.wait(_TICK)  # bounded: signal handlers run between waits
            if self.wait_when_full:
                self._append(data)
                return
            owed = 0 if not self._losing else 200  # a marker's size, generously
            if self._held and self._held + owed + len(data) > self.capacity:
                now = self._clock()
                if not self._losing:
                    self._lost_first = now
                self._losing += len(data)
                self._lost_last = now
                self.dropped_bytes += len(data)
                return
            self._mark_loss()
            self._append(data)

    def stop_waiting(self) -> None:
        """From now on drop instead of waiting (a signal came: the build must not hang)."""
        self.wait_when_full = False

    def _append(self, data: bytes) -> None:
        # Here, right after the read, the bytes are still in the cache: the same pass in the
        # feeder, once they have cooled, measured 0.22 CPU s/GiB against 0.09 here. Only the
        # writer appends (the pump, then close()), so the order is the order kept; and it is
        # as strong an end-to-end check as before: it covers this buffer too. The parts' own
        # CRC32Cs are no substitute: combined, they equal the composed object's by
        # construction, so they would check GCS against the handler but never the handler
        # (a record doubled, lost or moved) against what was read.
        self.crc32c = _crc_extend(self.crc32c, data)
        self._items.append(data)
        self._held += len(data)
        self._at_line_start = data.endswith(b"\n")
        self._ready.notify()

    def _mark_loss(self) -> None:
        if not self._losing:
            return
        marker = drop_marker(
            self._losing, self._lost_first, self._lost_last, at_line_start=self._at_line_start
        )
        self._losing = 0
        self.marker_bytes += len(marker)
        self.markers += 1
        self._append(marker)

    def take(self, max_bytes: int = FEED_BYTES) -> bytes | None:
        """Up to about ``max_bytes`` joined, waiting for some; None once closed and empty."""
        with self._ready:
            while not self._items:
                if self._closed:
                    return None
                self._ready.wait()
            pieces = [self._items.popleft()]
            size = len(pieces[0])
            while self._items and size + len(self._items[0]) <= max_bytes:
                pieces.append(self._items.popleft())
                size += len(pieces[-1])
            self._held -= size
            self._room.notify()
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        """No more input: the marker for a last run of drops goes in, the feeder drains."""
        with self._ready:
            if self._closed:
                return
            self._mark_loss()
            self._closed = True
            self._ready.notify_all()


@dataclass(frozen=True)
class ShipResult:
    """How shipping ended: ``url`` of build.log (or of the parts), and what was not shipped."""

    url: str
    read: int  # bytes read from the build (after --timestamps)
    stored: int  # bytes in GCS, in finalized parts or build.log
    dropped: int  # bytes dropped because the buffer was full (markers stand in for them)
    unshipped: int  # bytes kept that GCS did not get before the ship timeout
    composed: bool
    problem: str | None = None  # one line saying what went wrong, if anything did
    threads_busy: bool = False  # the handler is still shipping: exit without waiting on it


class OutputShipper:
    """Bytes in (never blocking), GCS parts out; then one composed, verified ``build.log``."""

    def __init__(
        self,
        url: GSURL,
        *,
        client: Any,
        part_seconds: float = 10.0,
        part_bytes: int = 64 * 1024 * 1024,
        chunk_size: int = 8 * 1024 * 1024,
        timestamps: bool = False,
        spool_dir: str | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        wait_when_full: bool = False,
        ship_timeout: float = 60.0,
        replace: bool = False,
    ) -> None:
        self.url = url
        self._client = client
        self._parts: list[str] = []
        self._part_sizes: dict[str, int] = {}  # 0: not known (a part shipped from the spool)
        self._parts_lock = threading.Lock()
        self._size = 0  # what the feeder handed to the handler (the buffer has its CRC32C)
        self._read = 0
        self._timestamps = timestamps
        self._at_line_start = True
        self._spool_dir = spool_dir
        self._ship_timeout = ship_timeout
        self._replace = replace
        self._buffer = OutputBuffer(buffer_bytes, wait_when_full=wait_when_full)
        self._give_up = threading.Event()
        self._calls_until = 0.0  # set by finish(): GCS calls at the end stop trying then
        self._handler = GCSHandler(
            url.bucket,
            prefix=url.child("parts/"),
            name_template=PART_TEMPLATE,
            rotate_seconds=part_seconds,
            max_bytes=part_bytes,
            chunk_size=chunk_size,
            queue_size=1024,
            max_queue_bytes=4 * 1024 * 1024,
            overflow="block",
            # The feeder, not the build, waits here: the buffer in front absorbs the wait.
            block_timeout=float("inf"),
            close_timeout=ship_timeout,
            # Never give records up while the build runs: an outage is waited out (the
            # buffer drops what does not fit), and close() bounds the wait at the end.
            retry_deadline=None,
            client=client,
            stream="build",
            on_finalize=self._part_finalized,
            spool_dir=spool_dir,
            # If this process dies, 'gcs-log-sink recover' ships the spooled parts and
            # composes them into this build's build.log.
            _compose_into=self.target,
        )
        self._feeder = threading.Thread(target=self._feed, name="gcs-log-sink:feed", daemon=True)
        self._feeder.start()

    @property
    def target(self) -> str:
        return self.url.child(BUILD_LOG)

    @property
    def buffer(self) -> OutputBuffer:
        return self._buffer

    @property
    def read_size(self) -> int:
        """How much the pump reads at once: no more than the buffer holds, so one kept read
        never takes the buffer past ``buffer_bytes``."""
        return min(READ_SIZE, self._buffer.capacity)

    def write(self, data: bytes) -> None:
        """Keep ``data`` for GCS. Never waits on GCS: when the buffer is full it drops."""
        if self._timestamps:
            data, self._at_line_start = stamp_lines(data, self._at_line_start, _arrival_stamp())
        if not data:
            return
        self._read += len(data)
        self._buffer.put(data)

    def give_up(self) -> None:
        """Stop waiting for GCS now (a signal during :meth:`finish`); safe from a handler."""
        self._give_up.set()

    def _feed(self) -> None:
        while (data := self._buffer.take()) is not None:
            self._size += len(data)
            self._handler.enqueue(data)

    def _part_finalized(self, name: str, generation: int, size: int) -> None:
        with self._parts_lock:
            self._parts.append(name)
            self._part_sizes[name] = size

    def _wait(self, thread: threading.Thread, deadline: float) -> bool:
        """Join ``thread`` until ``deadline`` or :meth:`give_up`; whether it ended."""
        while thread.is_alive() and not self._give_up.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            thread.join(min(remaining, _TICK))
        return not thread.is_alive()

    def finish(self, *, compose_parts: bool = True, keep_parts: bool = False) -> ShipResult:
        """Ship what is left (at most ``ship_timeout``), compose and verify ``build.log``.

        Never raises for GCS: what went wrong is in :attr:`ShipResult.problem`.
        """
        deadline = time.monotonic() + self._ship_timeout
        self._buffer.close()
        fed = self._wait(self._feeder, deadline)
        # The handler's close() is bounded by close_timeout too; on a thread of its own so a
        # signal can end the wait (give_up) without leaving the handler half-closed under us.
        closer = threading.Thread(target=self._handler.close, name="gcs-log-sink:close")
        closer.daemon = True
        closer.start()
        closed = self._wait(closer, deadline + 1.0)
        # Composing and deleting parts are GCS calls too: within what is left of the ship
        # timeout (a few seconds at least, as each is one quick call), and a signal stops them.
        self._calls_until = max(deadline, time.monotonic() + 2.0)
        try:
            return self._conclude(fed and closed, compose_parts=compose_parts, keep=keep_parts)
        except errors.GCSLogSinkError as exc:
            return self._result(
                composed=False, problem=str(exc), stored=self._stored(), busy=not closed
            )
        except Exception as exc:  # GCS errors from compose or listing: say so, never crash
            return self._result(
                composed=False,
                problem=f"could not compose gs://{self.url.bucket}/{self.target}: "
                f"{_why(exc)}; the parts are kept under {self.url}/parts/",
                stored=0,
                busy=not closed,
            )

    def _calls(self) -> dict[str, Any]:
        """retry and timeout for one google-cloud-storage call at the end (see finish)."""
        from google.api_core.retry import Retry

        remaining = max(0.5, self._calls_until - time.monotonic())
        give_up = self._give_up

        def worth_retrying(exc: Exception) -> bool:
            return is_transient(exc) and not give_up.is_set()

        retry = Retry(predicate=worth_retrying, initial=0.25, maximum=2.0, timeout=remaining)
        return {"retry": retry, "timeout": min(remaining, 30.0)}

    def _result(
        self, *, composed: bool, problem: str | None, stored: int, busy: bool
    ) -> ShipResult:
        kept = self._read - self._buffer.dropped_bytes + self._buffer.marker_bytes
        url = f"gs://{self.url.bucket}/{self.target}" if composed else f"{self.url}/parts/"
        return ShipResult(
            url=url,
            read=self._read,
            stored=stored,
            dropped=self._buffer.dropped_bytes,
            unshipped=max(0, kept - stored),
            composed=composed,
            problem=problem,
            threads_busy=busy,
        )

    def _stored(self) -> int:
        """Bytes in the finalized parts this run made.

        The handler says each part's size, except for parts shipped from the spool: those
        are listed, once, without retries (GCS may be what failed: no waiting on it here).
        """
        with self._parts_lock:
            sizes = dict(self._part_sizes)
        if all(sizes.values()):
            return sum(sizes.values())
        try:
            listed = self._client.list_blobs(
                self.url.bucket, prefix=self.url.child("parts/"), retry=None, timeout=10
            )
            found = {blob.name: int(blob.size or 0) for blob in listed if blob.name in sizes}
        except Exception:  # GCS away: count what the handler told us
            found = {}
        return sum(size or found.get(name, 0) for name, size in sizes.items())

    def _conclude(self, settled: bool, *, compose_parts: bool, keep: bool) -> ShipResult:
        expected = self._read - self._buffer.dropped_bytes + self._buffer.marker_bytes
        with self._parts_lock:
            parts = sorted(self._parts)
        stored = self._stored() if parts else 0
        incomplete = (
            not settled
            or self._handler.dropped
            or self._handler.lost
            or self._size != expected
            or stored != expected
        )
        if incomplete:
            where = (
                f"; the rest waits in {self._spool_dir}: ship it with "
                f"'gcs-log-sink recover {self._spool_dir}'"
                if self._spool_dir
                else ""
            )
            problem = (
                f"GCS did not take all the output within {self._ship_timeout:g} s: "
                f"{expected - stored:,} of {expected:,} bytes not shipped; "
                f"{self.url}/parts/ holds what arrived{where}"
            )
            return self._result(composed=False, problem=problem, stored=stored, busy=not settled)
        if not compose_parts:
            return self._result(composed=False, problem=None, stored=stored, busy=False)
        match = None if self._replace else 0
        if not parts:  # no output at all: still say so with an (empty) build.log
            calls = self._calls()
            with GCSObjectStream(
                self.url.bucket,
                self.target,
                client=self._client,
                content_type="text/plain",
                if_generation_match=match,
                timeout=calls["timeout"],
                retry_deadline=calls["retry"].timeout,
            ):
                pass
            return self._result(composed=True, problem=None, stored=0, busy=False)
        calls = self._calls()
        final = compose(
            self._client, self.url.bucket, parts, self.target, replace=self._replace, **calls
        )
        expected_crc = crc32c_base64(self._buffer.crc32c)
        if final.size != self._size or final.crc32c != expected_crc:
            # A build.log that does not verify must not stand: readers would trust it. Only
            # the generation composed here is removed; the parts stay.
            with contextlib.suppress(Exception):
                self._client.bucket(self.url.bucket).blob(self.target).delete(
                    if_generation_match=final.generation, **self._calls()
                )
            raise errors.IntegrityError(
                f"composed {final.size} bytes with CRC32C {final.crc32c}, but {self._size} "
                f"bytes with CRC32C {expected_crc} were shipped; build.log removed, parts kept",
                bucket=self.url.bucket,
                name=self.target,
            )
        if not keep:
            bucket = self._client.bucket(self.url.bucket)
            for name in parts:
                bucket.blob(name).delete(**self._calls())
        return self._result(composed=True, problem=None, stored=stored, busy=False)

    def abandon(self) -> None:
        """Stop shipping without composing (the command never started)."""
        self._buffer.close()
        self._handler.close()


def _why(exc: BaseException) -> str:
    """A short reason for a failed GCS call: never a URL (a session URL is a secret)."""
    from google.api_core import exceptions as api

    if isinstance(exc, api.RetryError):
        cause = exc.cause if exc.cause is not None else exc
        return f"GCS did not answer in time ({type(cause).__name__})"
    if isinstance(exc, api.GoogleAPICallError):
        return f"GCS refused it: {exc.message}"
    return type(exc).__name__


# -- start-up: is GCS there, and may we write? ---------------------------------------------


def probe_target(
    url: GSURL,
    client: Any,
    *,
    replace: bool,
    startup_timeout: float,
    note: Callable[[str], None],
) -> bool:
    """Check, before the build runs, that ``build.log`` can be written; whether GCS answered.

    Opens (and cancels) an upload of the target: a missing bucket, a missing permission or
    an existing ``build.log`` (unless ``replace``) raises at once. An unreachable GCS is
    retried for ``startup_timeout`` seconds with one progress note, then False: the caller
    decides whether the build runs anyway.
    """
    target = url.child(BUILD_LOG)
    deadline = time.monotonic() + startup_timeout
    delay = 0.25
    noted = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            probe = GCSObjectStream(
                url.bucket,
                target,
                client=client,
                timeout=max(0.5, min(10.0, remaining)),
                retry_deadline=0,
                if_generation_match=None if replace else 0,
            )
        except errors.RetryDeadlineExceededError as exc:
            reason = str(exc).rpartition("last: ")[2] or "no answer"
            if not noted:
                noted = True
                note(
                    f"GCS is not answering ({reason}); retrying for up to {startup_timeout:g} s "
                    "before starting"
                )
            if time.monotonic() + delay >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 4.0)
            continue
        probe.abort()
        return True


def delete_previous(url: GSURL, client: Any) -> int:
    """``--replace``: remove an earlier run's build.log and parts; how many objects."""
    from google.api_core.exceptions import NotFound

    bucket = client.bucket(url.bucket)
    names = [blob.name for blob in client.list_blobs(url.bucket, prefix=url.child("parts/"))]
    names.append(url.child(BUILD_LOG))
    removed = 0
    for name in names:
        with contextlib.suppress(NotFound):
            bucket.blob(name).delete()
            removed += 1
    return removed


# -- the pump -------------------------------------------------------------------------------


def _pipe_max_size() -> int:
    """The largest pipe an unprivileged process may ask for (Linux; 1 MiB by default)."""
    try:
        with open("/proc/sys/fs/pipe-max-size", "rb") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return READ_SIZE


def grow_pipe(fd: int, size: int = READ_SIZE) -> int:
    """Let the pipe behind ``fd`` hold up to ``size`` bytes, so one read can take that much.

    Only ever grows it, never past ``/proc/sys/fs/pipe-max-size``, and never fails: not a
    pipe, not Linux, or over the user's pipe-pages quota (``EPERM``) leaves it as it was.
    Returns the pipe's size afterwards (0 when ``fd`` is no pipe or the size is unknown).
    Growing the pipe a writer feeds changes nothing for the writer but when it would block.
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    try:
        if set_size is None or get_size is None or not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        current = fcntl.fcntl(fd, get_size)
        wanted = min(size, _pipe_max_size())
        if current < wanted:
            with contextlib.suppress(OSError):
                current = fcntl.fcntl(fd, set_size, wanted)
        return int(current)
    except OSError:
        return 0


def _raise_mmap_threshold(read_size: int) -> None:
    """Make a read asked ``read_size`` and given one line cost what a small read costs.

    glibc's malloc serves a request above its mmap threshold (128 KiB, until the process
    frees a larger mmapped block) with mmap, so a 256 KiB ask answered with one line also
    costs an mremap and a munmap: 21 us a read against 1.3 us, measured. Freeing one block
    larger than a read raises the threshold past it for the rest of the process. Start-up
    (the imports) usually does that already; this makes it certain, for about 0.5 ms once.
    (Asking 64 KiB until reads come back full was measured too: 15 MiB more peak RSS and
    more CPU under a flood, from the mix of sizes.) Elsewhere than glibc: harmless.

    This is glibc's own dynamic threshold, not an explicit ``M_MMAP_THRESHOLD`` (which would
    switch the dynamic one off): the handler's 8 MiB chunk buffers still raise it past
    themselves when the first is freed, so later ones come from the heap, not from fresh
    mmaps. Measured: about 18,000 minor page faults per GiB through ``tee`` (70 MiB of
    fresh pages), against 262,144 if every chunk were a fresh mmap.
    """
    block = bytearray(2 * read_size)
    del block


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # A terminal fd someone set O_NONBLOCK on (CI runners share their pipes): wait
            # until it takes more, as a blocking write would.
            select.select([], [fd], [])
            continue
        view = view[written:]


class _Pump:
    """Copy each readable fd to its terminal fd and to ``sink``, until EOF or told to stop.

    A terminal that goes away (EPIPE, like a ``| head`` that quit) is dropped from the
    outputs, and reading and shipping go on, as ``tee -p`` does.
    """

    def __init__(
        self,
        sources: dict[int, int],
        sink: Callable[[bytes], None],
        *,
        read_size: int = READ_SIZE,
    ) -> None:
        self.sources: dict[int, int | None] = dict(sources)
        self.sink = sink
        # Each read becomes one bytes object that lives in the buffer until GCS has it:
        # a reused buffer would need a copy per read, which is what a read already is.
        self.read_size = read_size
        self.closed_outputs: set[int] = set()
        self._grown: set[int] = set()  # pipes grown already, or tried (see FLOWING)
        _raise_mmap_threshold(read_size)

    def drain(self, limit: int = DRAIN_BYTES) -> None:
        """Copy what is readable right now (at most about ``limit`` bytes), without waiting.

        Before giving up on pipes a left-behind process holds: the command's last output
        is already in them.
        """
        copied = 0
        while self.sources and copied < limit and (got := self.step(0)):
            copied += got

    def step(self, timeout: float) -> int:
        """Copy what is readable within ``timeout``; drop sources that reached EOF.

        Returns how many bytes were copied.
        """
        ready, _, _ = select.select(list(self.sources), [], [], timeout)
        copied = 0
        for fd in ready:
            try:
                data = os.read(fd, self.read_size)
            except BlockingIOError:
                # A non-blocking fd another reader shares (CI runners pass theirs on): it
                # took what select saw. Not the end of the output.
                continue
            except OSError:  # EIO: the pty's other side closed
                data = b""
            if not data:
                del self.sources[fd]
                continue
            if len(data) >= FLOWING and fd not in self._grown:
                self._grown.add(fd)
                grow_pipe(fd, self.read_size)
            copied += len(data)
            out = self.sources[fd]
            if out is not None and out not in self.closed_outputs:
                try:
                    _write_all(out, data)
                except OSError as exc:
                    if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EIO):
                        raise
                    self._lose_output(out)
            self.sink(data)
        return copied

    def _lose_output(self, fd: int) -> None:
        self.closed_outputs.add(fd)
        # Whatever else writes there later (print at exit) goes nowhere instead of failing.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


class _GroupSignals:
    """Pass SIGINT/SIGTERM/SIGHUP/SIGQUIT to the build's process group; escalate to SIGKILL.

    A second signal, or ``kill_after`` seconds after the first, kills the group.
    """

    def __init__(
        self, pgid: int, *, kill_after: float, on_signal: Callable[[], None] = lambda: None
    ) -> None:
        self.pgid = pgid
        self.kill_after = kill_after
        self._on_first = on_signal
        self.received: int | None = None
        self._kill_at: float | None = None
        self._killed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _GroupSignals:
        for sig in FORWARDED_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            self._kill_at = time.monotonic() + self.kill_after
            self._send(signum)
            self._on_first()
        else:
            self.kill()

    def kill(self) -> None:
        self._killed = True
        self._send(signal.SIGKILL)

    def tick(self) -> None:
        """Escalate once the grace period after the first signal has passed."""
        if self._kill_at is not None and not self._killed and time.monotonic() >= self._kill_at:
            self.kill()


def _copy_terminal_size(from_fd: int, to_fd: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(from_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(to_fd, termios.TIOCSWINSZ, size)


@dataclass
class RunOutcome:
    """How the command ended: its exit status, and what ``run`` had to do about it."""

    status: int
    signal: int | None = None  # the signal run received (and passed on), if any
    abandoned_pipe: bool = False  # stopped reading: something still held the output open


def run_command(
    argv: Sequence[str],
    shipper: OutputShipper,
    *,
    use_pty: bool,
    grace: float = 5.0,
    kill_after: float = 10.0,
) -> RunOutcome:
    """Run ``argv`` in its own process group, tee its output to the terminal and ``shipper``.

    Once the command has exited, the pipes are read for ``grace`` more seconds at most: a
    daemon it started may hold them open for ever. Raises FileNotFoundError /
    PermissionError when ``argv[0]`` cannot be started.
    """
    stdout_fd, stderr_fd = sys.stdout.fileno(), sys.stderr.fileno()
    if use_pty:
        # A pty keeps colours, progress bars and line buffering: the build sees a terminal.
        controller, terminal = pty.openpty()
        _copy_terminal_size(stdout_fd, terminal)
        try:
            process = subprocess.Popen(  # noqa: S603 - running the user's command is the point
                list(argv), stdout=terminal, stderr=terminal, start_new_session=True
            )
        finally:
            os.close(terminal)
        sources = {controller: stdout_fd}
    else:
        process = subprocess.Popen(  # noqa: S603 - running the user's command is the point
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        assert process.stdout is not None
        assert process.stderr is not None
        sources = {process.stdout.fileno(): stdout_fd, process.stderr.fileno(): stderr_fd}
    pump = _Pump(sources, shipper.write, read_size=shipper.read_size)
    abandoned = False
    try:
        # start_new_session: the command leads a new group whose id is its pid.
        with _GroupSignals(
            process.pid, kill_after=kill_after, on_signal=shipper.buffer.stop_waiting
        ) as signals:
            exited_at: float | None = None
            while pump.sources:
                pump.step(_TICK)
                signals.tick()
                if exited_at is None and process.poll() is not None:
                    exited_at = time.monotonic()
                if exited_at is not None and time.monotonic() - exited_at >= grace:
                    pump.drain()
                    abandoned = bool(pump.sources)
                    break
            while True:
                try:
                    status = process.wait(timeout=_TICK)
                    break
                except subprocess.TimeoutExpired:
                    signals.tick()
            received = signals.received
    finally:
        if use_pty:
            os.close(controller)
        else:
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
    if received is not None:
        return RunOutcome(128 + received, received, abandoned)
    # Killed by a signal: the shell's convention, 128 + the signal's number.
    return RunOutcome(128 - status if status < 0 else status, None, abandoned)


class _StopOnSignal:
    """``tee``: the first SIGINT/SIGTERM/SIGHUP ends reading (what was read is shipped)."""

    def __init__(self, on_signal: Callable[[], None]) -> None:
        self.received: int | None = None
        self._on_first = on_signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            self._on_first()


def tee_stdin(shipper: OutputShipper) -> int | None:
    """Copy standard input to standard output and to ``shipper`` until EOF or a signal.

    Returns the signal that ended it, or None at EOF.
    """
    stdin_fd = sys.stdin.fileno()
    pump = _Pump({stdin_fd: sys.stdout.fileno()}, shipper.write, read_size=shipper.read_size)
    with _StopOnSignal(shipper.buffer.stop_waiting) as stop:
        while pump.sources and stop.received is None:
            pump.step(_TICK)
    return stop.received
