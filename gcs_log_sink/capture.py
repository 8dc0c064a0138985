"""``run`` and ``tee``: a build's output to the terminal and, while it runs, to GCS.

The output goes through a :class:`~gcs_log_sink.GCSHandler` whose "records" are the chunks
read from the build, so rotation, naming, retries and the bounded queue are the handler's:
parts ``PREFIX/parts/<window start>-<seq>.log`` are finalized every ``part_seconds`` (or
``part_bytes``), so they are readable while the build runs. At the end the parts are
composed into ``PREFIX/build.log`` and checked against the size and CRC32C of every byte
that was read, then deleted.

Nothing is dropped: the handler's queue blocks (no timeout) when full, which backs the
pipe up into the build instead of growing memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import google_crc32c

from . import errors
from ._chunks import crc32c_base64
from .compose import compose
from .gsurl import GSURL
from .handler import GCSHandler
from .stream import GCSObjectStream

__all__ = ["OutputShipper", "run_command", "stamp_lines", "tee_stdin"]

READ_SIZE = 64 * 1024
BUILD_LOG = "build.log"
PART_TEMPLATE = "{prefix}{start:%Y%m%dT%H%M%S}Z-{seq:06d}.log"


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


def _arrival_stamp() -> bytes:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.").encode() + f"{now.microsecond // 1000:03d}Z ".encode()


class OutputShipper:
    """Bytes in, GCS parts out; then one composed, verified ``build.log``."""

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
    ) -> None:
        self.url = url
        self._client = client
        self._parts: list[str] = []
        self._parts_lock = threading.Lock()
        self._crc = 0
        self._size = 0
        self._timestamps = timestamps
        self._at_line_start = True
        self._handler = GCSHandler(
            url.bucket,
            prefix=url.child("parts/"),
            name_template=PART_TEMPLATE,
            rotate_seconds=part_seconds,
            max_bytes=part_bytes,
            chunk_size=chunk_size,
            queue_size=1024,
            max_queue_bytes=8 * 1024 * 1024,
            overflow="block",
            block_timeout=float("inf"),
            close_timeout=600.0,
            retry_deadline=300.0,
            client=client,
            stream="build",
            on_finalize=self._part_finalized,
            spool_dir=spool_dir,
        )

    @property
    def target(self) -> str:
        return self.url.child(BUILD_LOG)

    def check_target(self) -> None:
        """Fail now, before the build runs, if ``build.log`` cannot be written.

        Opens (and cancels) an upload of the target: a missing bucket, missing permission
        or an existing ``build.log`` is reported before any output is produced.
        """
        probe = GCSObjectStream(self.url.bucket, self.target, client=self._client, timeout=30)
        probe.abort()

    def write(self, data: bytes) -> None:
        """Ship ``data`` (never blocks longer than GCS makes it; never drops)."""
        if self._timestamps:
            data, self._at_line_start = stamp_lines(data, self._at_line_start, _arrival_stamp())
        if not data:
            return
        self._crc = google_crc32c.extend(self._crc, data)
        self._size += len(data)
        self._handler.enqueue(data)

    def _part_finalized(self, name: str, generation: int, size: int) -> None:
        with self._parts_lock:
            self._parts.append(name)

    def finish(self, *, compose_parts: bool = True, keep_parts: bool = False) -> str:
        """Finalize the last part, compose and verify ``build.log``; its gs:// URL."""
        self._handler.close()
        unshipped = self._handler.lost + self._handler.dropped
        if unshipped:
            raise errors.UploadError(
                f"{unshipped} pieces of output could not be shipped (see above)",
                bucket=self.url.bucket,
                name=self.url.child("parts/"),
            )
        parts = sorted(self._parts)
        if not compose_parts:
            return f"{self.url}/parts/"
        if not parts:  # no output at all: still say so with an (empty) build.log
            with GCSObjectStream(
                self.url.bucket, self.target, client=self._client, content_type="text/plain"
            ):
                pass
            return f"gs://{self.url.bucket}/{self.target}"
        final = compose(self._client, self.url.bucket, parts, self.target)
        expected_crc = crc32c_base64(self._crc)
        if final.size != self._size or final.crc32c != expected_crc:
            raise errors.IntegrityError(
                f"composed {final.size} bytes with CRC32C {final.crc32c}, but {self._size} "
                f"bytes with CRC32C {expected_crc} were read; parts kept",
                bucket=self.url.bucket,
                name=self.target,
            )
        if not keep_parts:
            bucket = self._client.bucket(self.url.bucket)
            for name in parts:
                bucket.blob(name).delete()
        return f"gs://{self.url.bucket}/{self.target}"

    def abandon(self) -> None:
        """Stop shipping without composing (after a failure)."""
        self._handler.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@contextlib.contextmanager
def _forwarding_signals(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Pass SIGINT, SIGTERM and SIGHUP on to the build instead of dying of them."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _copy_terminal_size(from_fd: int, to_fd: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(from_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(to_fd, termios.TIOCSWINSZ, size)


def _pump(sources: dict[int, int], sink: Callable[[bytes], None]) -> None:
    """Copy each readable fd to its terminal fd and to ``sink`` until all reach EOF."""
    while sources:
        ready, _, _ = select.select(list(sources), [], [])
        for fd in ready:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:  # EIO: the pty's other side closed
                data = b""
            if not data:
                del sources[fd]
                continue
            _write_all(sources[fd], data)
            sink(data)


def run_command(argv: Sequence[str], shipper: OutputShipper, *, use_pty: bool) -> int:
    """Run ``argv``, tee its output to the terminal and to ``shipper``; its exit status.

    Raises FileNotFoundError / PermissionError when ``argv[0]`` cannot be started.
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
    try:
        with _forwarding_signals(process):
            _pump(dict(sources), shipper.write)
            status = process.wait()
    finally:
        if use_pty:
            os.close(controller)
        else:
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
    # Killed by a signal: the shell's convention, 128 + the signal's number.
    return 128 - status if status < 0 else status


def tee_stdin(shipper: OutputShipper) -> None:
    """Copy standard input to standard output and to ``shipper`` until EOF."""
    _pump({sys.stdin.fileno(): sys.stdout.fileno()}, shipper.write)
