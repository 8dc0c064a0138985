"""Hostile tests of this session's issue-13 changes on main (CPU cost), against the local server.

What is attacked (each test reads the objects back and compares them byte for byte, or
record for record):

- ``tee``/``run`` reading 1 MiB at a time from pipes grown once a read finds 64 KiB, and an
  EAGAIN on a shared non-blocking input not taken for EOF (gcs_log_sink/capture.py);
- ``GCSHandler.handle()`` without ``handler.lock`` for the stock formatter, filters applied
  by our own code, and the per-second date cache of ``_fastformat`` (handler.py,
  _fastformat.py);
- ``GCSObjectStream.write()`` with one writable memoryview for the buffer's lifetime and the
  RLock taken with acquire/release (stream.py, _chunks.py);
- the watchdog heap compaction and ``_put_conn`` (``_transport.py``), under many concurrent
  streams through stalls.
"""

from __future__ import annotations

import array
import contextlib
import copy
import fcntl
import logging
import os
import pty
import random
import re
import signal
import string
import subprocess
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

import pytest
from faultproxy import FaultProxy
from google.api_core.exceptions import NotFound
from helpers import emulator_env, random_writes, read_object
from test_cli import CLI, child
from test_cli import env as env  # the fixture

from gcs_log_sink import GCSHandler, GCSObjectStream, _transport, errors

pytestmark = pytest.mark.timeout(90)

MIB = 1024 * 1024
MARKER = re.compile(
    rb"\n\[gcs-log-sink\] (\d+) bytes of output lost here, \S+ to \S+: "
    rb"GCS was slow or unreachable and the buffer was full\n"
)


# -- helpers --------------------------------------------------------------------------------


def no_newline_data(size: int, seed: int) -> bytes:
    """``size`` random letters, no newline: every drop marker then starts with its own
    newline, and any run of 64 bytes is unique, so kept pieces can be placed exactly."""
    rng = random.Random(seed)
    letters = string.ascii_letters.encode()
    table = bytes(letters[i % len(letters)] for i in range(256))
    return rng.randbytes(size).translate(table)


def lines(total: int, seed: int) -> bytes:
    """About ``total`` bytes of text lines of random lengths (0 to 300 bytes)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < total:
        out += bytes([rng.choice(b"abcdefgh")]) * rng.randrange(300) + b"\n"
    return bytes(out)


def tee_process(
    env: dict[str, str], url: str, *options: str, stdin: Any = subprocess.PIPE, stdout: Any = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "tee", *options, url],
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
    )


def feed_in_background(
    sink: Any, writes: list[bytes], *, pause_every: int = 0, pause: float = 0.0
) -> threading.Thread:
    """Write ``writes`` to the binary file ``sink`` from a thread, then close it; a reader
    that went away (EPIPE) ends the feeding. With ``pause_every``, sleep ``pause`` seconds
    before every ``pause_every``-th write (from the first): output in bursts."""

    def feed() -> None:
        try:
            for index, piece in enumerate(writes):
                sink.write(piece)
                sink.flush()
                if pause_every and index % pause_every == 0:
                    time.sleep(pause)
        except (BrokenPipeError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.close()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def collect(process: subprocess.Popen[bytes], timeout: float = 60) -> tuple[bytes, bytes]:
    """stdout and stderr of ``process`` until it exits, leaving its stdin to a feeder
    (``communicate()`` would close stdin at once)."""
    result: dict[str, bytes] = {}

    def read(name: str, pipe: Any) -> None:
        result[name] = pipe.read() if pipe is not None else b""
        if pipe is not None:
            pipe.close()

    readers = [
        threading.Thread(target=read, args=("out", process.stdout), daemon=True),
        threading.Thread(target=read, args=("err", process.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    process.wait(timeout)
    for reader in readers:
        reader.join(timeout)
    return result["out"], result["err"]


def split_stream(stored: bytes, stderr_bytes: bytes) -> tuple[bytes, bytes]:
    """``stored`` split into the bytes of stdout and stderr (disjoint alphabets)."""
    wanted = set(stderr_bytes)
    return bytes(b for b in stored if b not in wanted), bytes(b for b in stored if b in wanted)


# -- tee / run ------------------------------------------------------------------------------


def test_run_exactly_64k_then_pause_then_flood_on_both_streams(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """The command writes exactly 64 KiB (a full default pipe: the read that finds it grows
    the pipe), pauses, then floods 3 MiB on stdout with 1-byte to 200 KiB writes while
    stderr floods too: stdout and stderr are recovered byte-exact from build.log."""
    code = """
        import os, random, time
        rng = random.Random(5)
        os.write(1, b"a" * 65536)
        time.sleep(0.4)
        sent = 0
        while sent < 3 * 1024 * 1024:
            n = rng.choice([1, 17, 4096, 65535, 65536, 65537, 200000])
            piece = bytes(rng.choice(b"abcdef\\n") for _ in range(min(n, 64))) * (n // 64 + 1)
            piece = piece[:n]
            view = memoryview(piece)
            while view:
                view = view[os.write(1, view):]
            os.write(2, b"E" * rng.randrange(1, 300) + b"\\r")
            sent += n
        """
    result = subprocess.run(
        [*CLI, "run", f"gs://{bucket}/flood", "--", *child(code)],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-2000:]
    stored = read_object(client, bucket, "flood/build.log")
    out, err = split_stream(stored, b"E\r")
    assert result.stdout == out
    assert result.stdout.startswith(b"a" * 65536)
    command_err = result.stderr.rpartition(b"log: ")[0]
    assert command_err == err


def test_run_command_that_closes_stdout_early_keeps_its_stderr(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """stdout closed after 200 KiB (EOF on that pipe), stderr keeps writing 1 MiB for a
    while: all of stderr reaches build.log, nothing of stdout is lost or doubled."""
    code = """
        import os, sys, time
        os.write(1, b"o" * 200000)
        os.close(1)
        for i in range(64):
            os.write(2, b"E" * 16383 + b"\\r")
            if i % 16 == 0:
                time.sleep(0.05)
        """
    result = subprocess.run(
        [*CLI, "run", f"gs://{bucket}/halfclosed", "--", *child(code)],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-2000:]
    stored = read_object(client, bucket, "halfclosed/build.log")
    out, err = split_stream(stored, b"E\r")
    assert b"o" * 200000 == out
    assert (b"E" * 16383 + b"\r") * 64 == err
    assert b"o" * 200000 == result.stdout


def test_run_command_that_makes_its_own_stdout_non_blocking(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """The command sets O_NONBLOCK on its stdout and floods 4 MiB, waiting on EAGAIN
    itself: the pipe grown under it changes nothing, every byte is shipped once."""
    code = """
        import fcntl, os, select
        flags = fcntl.fcntl(1, fcntl.F_GETFL)
        fcntl.fcntl(1, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        block = bytes(range(256)) * 1024
        for i in range(16):
            view = memoryview(bytes([i]) + block[1:])
            while view:
                try:
                    view = view[os.write(1, view):]
                except BlockingIOError:
                    select.select([], [1], [])
        """
    result = subprocess.run(
        [*CLI, "run", f"gs://{bucket}/nb", "--", *child(code)],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr[-2000:]
    block = bytes(range(256)) * 1024
    expected = b"".join(bytes([i]) + block[1:] for i in range(16))
    assert expected == result.stdout
    assert expected == read_object(client, bucket, "nb/build.log")


def test_tee_from_a_fifo(env: dict[str, str], client: Any, bucket: str) -> None:
    """stdin is a named pipe (mkfifo), fed 3 MiB in random writes up to 300 KiB: the FIFO
    is grown like a pipe, and terminal copy and build.log are the input exactly."""
    data = lines(3 * MIB, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        fifo = os.path.join(tmp, "in")
        os.mkfifo(fifo)
        read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer = open(fifo, "wb")  # noqa: SIM115 - closed by the feeder
        flags = fcntl.fcntl(read_fd, fcntl.F_GETFL)
        fcntl.fcntl(read_fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        try:
            process = tee_process(env, f"gs://{bucket}/fifo", stdin=read_fd)
        finally:
            os.close(read_fd)
        feeder = feed_in_background(writer, random_writes(data, random.Random(3), 300_000))
        shown, err = process.communicate(timeout=60)
        feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    assert data == read_object(client, bucket, "fifo/build.log")


def test_tee_from_a_raw_pty(env: dict[str, str], client: Any, bucket: str) -> None:
    """stdin is a pty in raw mode (no pipe to grow; EIO once its other side closes): all
    256 byte values, 512 KiB, reach the terminal copy and build.log exactly."""
    data = bytes(range(256)) * 2048
    controller, terminal = pty.openpty()
    tty.setraw(terminal)
    try:
        process = tee_process(env, f"gs://{bucket}/pty", stdin=terminal)
    finally:
        os.close(terminal)
    shown = bytearray()

    def read_out() -> None:
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):  # type: ignore[attr-defined]
            shown.extend(chunk)

    reader = threading.Thread(target=read_out, daemon=True)
    reader.start()
    view = memoryview(data)
    while view:
        view = view[os.write(controller, view[:4096]) :]
    deadline = time.monotonic() + 20
    while len(shown) < len(data) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.close(controller)  # the tee's next read gets EIO (or EOF)
    assert process.stderr is not None
    err = process.stderr.read()
    status = process.wait(30)
    reader.join(10)
    process.stdout.close()  # type: ignore[union-attr]
    process.stderr.close()
    assert 0 == status, err[-2000:]
    assert data == bytes(shown)
    assert data == read_object(client, bucket, "pty/build.log")


def test_tee_tiny_buffer_drop_markers_are_exact(
    env: dict[str, str], client: Any, bucket: str, proxy: FaultProxy
) -> None:
    """--buffer-size 1K with a 4 MiB flood while GCS is slow (every chunk upload delayed
    2 s): kept reads sit at their exact offsets in the input and each marker's count is
    exactly the gap to the next kept piece; nothing kept is doubled; the count matches the
    one stderr reports."""
    data = no_newline_data(4 * MIB, seed=2)
    proxy.plan(rate=1.0, kinds=["delay_before"], match=lambda req: req.method == "PUT")
    slow_env = emulator_env(proxy.url)
    process = tee_process(slow_env, f"gs://{bucket}/tiny", "--buffer-size", "1K")
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(9), 70_000))
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "tiny/build.log")
    assert f"tiny/build.log ({len(stored):,} bytes)\n".encode() in err, err[-2000:]  # verified
    pieces = MARKER.split(stored)  # kept, count, kept, count, ..., kept
    kept, counts = pieces[0::2], [int(n) for n in pieces[1::2]]
    offset = 0
    for index, piece in enumerate(kept):
        assert data[offset : offset + len(piece)] == piece, f"kept piece {index} misplaced"
        offset += len(piece) + (counts[index] if index < len(counts) else 0)
    assert len(data) == offset
    assert counts, "nothing was dropped: the test did not fill the buffer"
    assert f"{sum(counts):,}".encode() in err or str(sum(counts)).encode() in err, err[-2000:]


def test_tee_tiny_buffer_on_full_wait_loses_nothing(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--buffer-size 1K --on-full wait, a 4 MiB flood in writes up to 2 MiB: reads are cut
    to 1 KiB, nothing is dropped, no marker, build.log is the input exactly."""
    data = lines(4 * MIB, seed=4)
    process = tee_process(env, f"gs://{bucket}/wait", "--buffer-size", "1K", "--on-full", "wait")
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(1), 2 * MIB))
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    assert data == read_object(client, bucket, "wait/build.log")


def test_tee_into_head_during_a_flood_ships_everything(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """``tee | head -c 100`` with a 6 MiB flood: the terminal side goes away after 100
    bytes (EPIPE), reading and shipping go on, status 0, build.log is the whole input."""
    data = lines(6 * MIB, seed=6)
    head = subprocess.Popen(["head", "-c", "100"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert head.stdin is not None
    process = tee_process(env, f"gs://{bucket}/head", stdout=head.stdin)
    head.stdin.close()
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(2), 1_500_000))
    _, err = collect(process)
    assert head.stdout is not None
    first = head.stdout.read()
    head.stdout.close()
    head.wait(10)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data[:100] == first
    assert data == read_object(client, bucket, "head/build.log")


def test_sigterm_to_tee_during_a_flood_ships_what_was_read(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """SIGTERM once 2 MiB reached the terminal, while 16 MiB keep coming: status 143, and
    build.log is exactly what tee copied to the terminal, a prefix of the input."""
    data = lines(16 * MIB, seed=8)
    process = tee_process(env, f"gs://{bucket}/term")
    assert process.stdin is not None
    assert process.stdout is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(4), 1_200_000))
    shown = bytearray()
    signalled = False
    while chunk := process.stdout.read1(MIB):  # type: ignore[attr-defined]
        shown += chunk
        if len(shown) >= 2 * MIB and not signalled:
            process.send_signal(signal.SIGTERM)
            signalled = True
    assert process.stderr is not None
    err = process.stderr.read()
    status = process.wait(60)
    feeder.join(10)
    process.stdout.close()
    process.stderr.close()
    assert 143 == status, err[-2000:]
    assert data.startswith(bytes(shown))
    assert bytes(shown) == read_object(client, bucket, "term/build.log")


def test_timestamps_stamp_an_8_mib_line_without_newline_once(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """One 8 MiB line and no newline, in 1 MiB reads, with --timestamps: build.log is one
    stamp then the line; the terminal copy is unstamped."""
    data = no_newline_data(64 * 1024, seed=1) * 128
    process = tee_process(env, f"gs://{bucket}/huge", "--timestamps")
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(5), 3 * MIB))
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "huge/build.log")
    stamp = re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", stored)
    assert stamp is not None, stored[:80]
    assert data == stored[stamp.end() :]


def test_tee_with_a_shared_non_blocking_stdin(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """stdin is a pipe whose file description is O_NONBLOCK (a CI runner's, shared), fed
    slowly in bursts with pauses: EAGAIN is not EOF, everything arrives once."""
    data = lines(2 * MIB, seed=12)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        process = tee_process(env, f"gs://{bucket}/shared", stdin=read_fd)
    finally:
        os.close(read_fd)
    writes = random_writes(data, random.Random(7), 200_000)
    writer = open(write_fd, "wb")  # noqa: SIM115 - closed by the feeder
    feeder = feed_in_background(writer, writes, pause_every=5, pause=0.03)
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    assert data == read_object(client, bucket, "shared/build.log")


# -- the handler ----------------------------------------------------------------------------


class Reference(logging.Handler):
    """The expected text: the real ``formatter.format`` of a copy of each record, at the call."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.expected_formatter = formatter
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.expected_formatter.format(copy.copy(record)))


def records_in(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """The records stored under ``prefix``, each starting with ``@@`` (multi-line records)."""
    names = sorted(blob.name for blob in client.list_blobs(bucket, prefix=prefix))
    text = "".join(client.bucket(bucket).blob(name).download_as_text() for name in names)
    assert text.startswith("@@") or not text
    assert text.endswith("\n") or not text
    pieces = text[:-1].split("\n@@") if text else []
    return pieces[:1] + ["@@" + piece for piece in pieces[1:]]


def normalize(records: list[str]) -> list[str]:
    return [record.rstrip("\n") for record in records]


def test_threads_logging_exceptions_and_stacks_with_the_stock_formatter(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """6 threads, 150 records each, a third with exc_info and a third with stack_info, the
    stock Formatter (no handler lock): every record stored once, exactly the text
    ``Formatter.format`` gives, each thread's records in its own call order."""
    formatter = logging.Formatter("@@%(threadName)s %(levelname)s %(asctime)s %(message)s")
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(formatter)
    reference = Reference(formatter)
    logger.addHandler(handler)
    logger.addHandler(reference)

    def work(number: int) -> None:
        for i in range(150):
            if i % 3 == 0:
                try:
                    raise ValueError(f"boom {number}/{i}\nsecond line")
                except ValueError:
                    logger.exception("t%d r%d", number, i)
            elif i % 3 == 1:
                logger.warning("t%d r%d", number, i, stack_info=True)
            else:
                logger.info("t%d r%d %s", number, i, "é\x00")

    threads = [threading.Thread(target=work, args=(n,), name=f"w{n}") for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    stored = normalize(records_in(client, bucket))
    expected = normalize(reference.lines)
    assert sorted(expected) == sorted(stored)
    for number in range(6):
        mine = [r for r in stored if r.startswith(f"@@w{number} ")]
        order = [int(re.search(r" t\d+ r(\d+)", r).group(1)) for r in mine]  # type: ignore[union-attr]
        assert list(range(150)) == order


class LockChecking(GCSHandler):
    """A subclass with its own emit(): it relies on ``self.lock`` being held around it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unlocked = 0
        self.inside = 0
        self.overlaps = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not self.lock._is_owned():  # type: ignore[union-attr]
            self.unlocked += 1
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0)
        super().emit(record)
        self.inside -= 1


def test_a_subclass_overriding_emit_keeps_the_handler_lock(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A GCSHandler subclass overriding emit() (state of its own) under 8 threads: emit()
    always runs under handler.lock, never two at once; all 800 records stored."""
    handler = LockChecking(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(logging.Formatter("@@%(message)s"))
    logger.addHandler(handler)

    def work(number: int) -> None:
        for i in range(100):
            logger.info("t%d r%d", number, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    assert (0, 0) == (handler.unlocked, handler.overlaps)
    expected = sorted(f"@@t{n} r{i}" for n in range(8) for i in range(100))
    assert expected == sorted(normalize(records_in(client, bucket)))


def test_an_emit_replaced_on_the_instance_keeps_the_handler_lock(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``handler.emit = wrapper`` (instrumentation, as test helpers and APMs do): the
    stdlib's Handler.handle runs it under handler.lock; so must ours."""
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(logging.Formatter("@@%(message)s"))
    original = handler.emit
    unlocked: list[str] = []

    def wrapper(record: logging.LogRecord) -> None:
        if not handler.lock._is_owned():  # type: ignore[union-attr]
            unlocked.append(record.getMessage())
        original(record)

    handler.emit = wrapper  # type: ignore[method-assign]
    logger.addHandler(handler)
    for i in range(20):
        logger.info("r%d", i)
    handler.close()
    assert [] == unlocked
    assert [f"@@r{i}" for i in range(20)] == normalize(records_in(client, bucket))


def test_a_raising_filter_and_a_callable_filter_behave_as_in_the_stdlib(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """A handler filter that raises (the caller sees the exception, as with any stdlib
    handler, and the handler goes on) and a callable-object filter that rewrites records:
    stored records are what a stdlib handler with the same filters gets."""

    class Rewrite:
        def __call__(self, record: logging.LogRecord) -> bool:
            if "drop" in record.msg:
                return False
            record.msg = "rw:" + record.msg
            return True

    def explode(record: logging.LogRecord) -> bool:
        if "boom" in record.msg:
            raise RuntimeError("filter exploded")
        return True

    formatter = logging.Formatter("@@%(message)s")
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(formatter)
    reference = Reference(formatter)
    for target in (handler, reference):
        target.addFilter(explode)
        target.addFilter(Rewrite())
    logger.addHandler(handler)
    raised = []
    for i in range(30):
        message = ["keep %d", "drop %d", "boom %d"][i % 3]
        try:
            logger.info(message, i)
        except RuntimeError as exc:
            raised.append(str(exc))
    # The first handler raised: the reference (added after it) never saw a "boom".
    handler.removeFilter(explode)
    logger.removeHandler(handler)
    logger.addHandler(reference)
    reference_raised = []
    for i in range(30):
        message = ["keep %d", "drop %d", "boom %d"][i % 3]
        try:
            logger.info(message, i)
        except RuntimeError as exc:
            reference_raised.append(str(exc))
    logger.removeHandler(reference)
    handler.close()
    assert ["filter exploded"] * 10 == raised
    assert raised == reference_raised
    assert [f"@@rw:keep {i}" for i in range(0, 30, 3)] == reference.lines
    assert reference.lines == normalize(records_in(client, bucket))


def test_converters_and_shared_formatters_under_threads(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Two handlers share one gmtime Formatter, a third has a converter that shifts time by
    half a second (not cacheable), a fourth a localtime one with a datefmt; 4 threads log
    records whose ``created`` steps by 0.25 s across second boundaries. Each handler stores
    exactly what its Formatter.format gives."""
    shared = logging.Formatter("@@%(asctime)s %(message)s")
    shared.converter = time.gmtime
    shifted = logging.Formatter("@@%(asctime)s %(message)s")
    shifted.converter = lambda secs: time.gmtime((secs or 0) + 0.5)  # type: ignore[method-assign,assignment]
    local = logging.Formatter("@@%(asctime)s %(message)s", datefmt="%H:%M:%S %Z")
    formatters = {"a/": shared, "b/": shared, "c/": shifted, "d/": local}
    counter = iter(range(10**9))
    counter_lock = threading.Lock()
    base = 1_700_000_000.0

    def set_created(record: logging.LogRecord) -> bool:
        with counter_lock:
            n = next(counter)
        record.created = base + n * 0.25
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        return True

    logger.addFilter(set_created)
    handlers = {}
    references = {}
    for prefix, formatter in formatters.items():
        handler = GCSHandler(
            bucket, prefix=prefix, client=client, rotate_seconds=None, close_timeout=30
        )
        handler.setFormatter(formatter)
        reference = Reference(formatter)
        logger.addHandler(handler)
        logger.addHandler(reference)
        handlers[prefix], references[prefix] = handler, reference

    def work(number: int) -> None:
        for i in range(200):
            logger.info("t%d r%d", number, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for handler in handlers.values():
        handler.close()
    for prefix in formatters:
        assert sorted(references[prefix].lines) == sorted(
            normalize(records_in(client, bucket, prefix))
        ), prefix
    # The shifted converter shows in the text: the cache did not hand it gmtime's.
    assert references["a/"].lines != references["c/"].lines


def test_converter_replaced_while_threads_log(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``formatter.converter`` flips between gmtime and a +0.5 s converter while 4 threads
    log records of fixed ``created`` values: each stored line is one of the two texts the
    real Formatter gives for that record, never a third (a stale cache entry)."""
    formatter = logging.Formatter("@@%(asctime)s %(message)s")
    formatter.converter = time.gmtime
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(formatter)
    base = 1_700_000_000.0

    def set_created(record: logging.LogRecord) -> bool:
        n = int(record.getMessage().split()[-1])
        record.created = base + n * 0.25
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        return True

    logger.addFilter(set_created)
    logger.addHandler(handler)
    shifted: Callable[..., time.struct_time] = lambda secs=None: time.gmtime((secs or 0) + 0.5)  # noqa: E731
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            formatter.converter = shifted  # type: ignore[method-assign,assignment]
            time.sleep(0)
            formatter.converter = time.gmtime
            time.sleep(0)

    flipper = threading.Thread(target=flip)
    flipper.start()

    def work(number: int) -> None:
        for i in range(150):
            logger.info("t%d %d", number, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    flipper.join()
    handler.close()
    stored = normalize(records_in(client, bucket))
    assert 600 == len(stored)
    bad = []
    for line in stored:
        number, i = re.search(r" t(\d+) (\d+)$", line).groups()  # type: ignore[union-attr]
        record = logging.LogRecord("x", logging.INFO, "f", 1, "t%s %s", (number, i), None)
        set_created(record)
        options = set()
        for converter in (time.gmtime, shifted):
            reference = logging.Formatter("@@%(asctime)s %(message)s")
            reference.converter = converter  # type: ignore[method-assign,assignment]
            options.add(reference.format(record))
        if line not in options:
            bad.append(line)
    assert [] == bad


def test_disable_and_handler_level_interplay(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """handler.setLevel(WARNING) and logging.disable(ERROR) switched while 3 threads log
    every level: what is stored is exactly what a stdlib handler with the same level got."""
    formatter = logging.Formatter("@@%(levelname)s %(message)s")
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(formatter)
    reference = Reference(formatter)
    for target in (handler, reference):
        target.setLevel(logging.WARNING)
    logger.addHandler(handler)
    logger.addHandler(reference)
    try:

        def work(number: int) -> None:
            for i in range(200):
                logger.log([10, 20, 30, 40, 50][i % 5], "t%d r%d", number, i)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for _ in range(20):
            logging.disable(logging.ERROR)
            time.sleep(0.001)
            logging.disable(logging.NOTSET)
            time.sleep(0.001)
        for thread in threads:
            thread.join()
    finally:
        logging.disable(logging.NOTSET)
    handler.close()
    stored = normalize(records_in(client, bucket))
    assert sorted(reference.lines) == sorted(stored)
    assert all(not line.startswith(("@@DEBUG", "@@INFO")) for line in stored)


# -- the writer -----------------------------------------------------------------------------


def test_write_accepts_any_buffer_and_keeps_no_export(client: Any, bucket: str) -> None:
    """write() of bytearray, memoryview slices, array.array, a 2-D memoryview, a bytes
    subclass: stored as their bytes; each returns its byte count (as BytesIO does); the
    caller's bytearray can be resized right after (no export kept); a non-contiguous view
    is refused and leaves the stream usable."""
    import io

    stream = GCSObjectStream(bucket, "any.bin", client=client, chunk_size=256 * 1024)
    mirror = io.BytesIO()
    source = bytearray(os.urandom(300_000))
    view = memoryview(source)
    ints = array.array("i", range(70_000))
    two_d = memoryview(bytes(range(256)) * 4).cast("B", shape=[32, 32])

    class Tagged(bytes):
        pass

    pieces: list[Any] = [source, view[1000:200_000], ints, two_d, Tagged(b"tagged"), b"", view[:0]]
    for piece in pieces:
        assert mirror.write(piece) == stream.write(piece)
    for piece in pieces:
        if isinstance(piece, memoryview):
            piece.release()
    del piece, pieces
    view.release()
    source += b"grown after write"  # BufferError if write kept an export
    source[:10] = b"0123456789"
    with pytest.raises((TypeError, BufferError, ValueError)):
        stream.write(memoryview(bytes(range(100)))[::2])
    stream.write(b"end")
    mirror.write(b"end")
    stream.close()
    assert mirror.getvalue() == read_object(client, bucket, "any.bin")


def test_writes_racing_close_from_another_thread(client: Any, bucket: str) -> None:
    """One thread writes 7 KiB blocks (chunks of 256 KiB go out as it writes) while another
    closes the stream: the object is exactly the writes that returned, in order; later
    writes raise ValueError, nothing else."""
    for seed in range(3):
        name = f"race-{seed}.bin"
        stream = GCSObjectStream(bucket, name, client=client, chunk_size=256 * 1024)
        done: list[bytes] = []
        failures: list[BaseException] = []
        rng = random.Random(seed)

        def write_until_closed(
            stream: GCSObjectStream = stream,
            done: list[bytes] = done,
            failures: list[BaseException] = failures,
            rng: random.Random = rng,
        ) -> None:
            index = 0
            while True:
                block = bytes([index % 251]) * rng.randrange(1, 7 * 1024)
                try:
                    stream.write(bytearray(block))
                except ValueError:
                    return
                except BaseException as exc:
                    failures.append(exc)
                    return
                done.append(block)
                index += 1

        writer = threading.Thread(target=write_until_closed)
        writer.start()
        time.sleep(0.2 + 0.1 * seed)
        stream.close()
        writer.join(10)
        assert [] == failures
        assert b"".join(done) == read_object(client, bucket, name)


def test_abort_from_another_thread_mid_write(client: Any, bucket: str) -> None:
    """abort() from another thread while one writes 64 KiB blocks: the writer gets a typed
    error (ValueError or a GCSLogSinkError), close() afterwards does not raise a surprise,
    and no object exists."""
    stream = GCSObjectStream(bucket, "aborted.bin", client=client, chunk_size=256 * 1024)
    outcome: list[BaseException] = []
    block = os.urandom(64 * 1024)

    def write_forever() -> None:
        try:
            for _ in range(10_000):
                stream.write(memoryview(block))
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write_forever)
    writer.start()
    time.sleep(0.3)
    stream.abort()
    writer.join(10)
    assert not writer.is_alive()
    assert 1 == len(outcome)
    assert isinstance(outcome[0], (ValueError, errors.GCSLogSinkError)), repr(outcome[0])
    with pytest.raises(NotFound):
        client.bucket(bucket).blob("aborted.bin").reload()


# -- the transport --------------------------------------------------------------------------


def ship_in_threads(
    client: Any, bucket: str, datas: dict[str, bytes], *, timeout: float, max_write: int
) -> tuple[list[str], float]:
    """Each of ``datas`` into its own GCSObjectStream on ``client`` (256 KiB chunks, in random
    writes up to ``max_write``), one thread each, all at once: what failed (repr), and the
    seconds it all took."""
    failures: list[str] = []

    def ship(name: str, data: bytes) -> None:
        try:
            stream = GCSObjectStream(
                bucket, name, client=client, chunk_size=256 * 1024, timeout=timeout,
                retry_deadline=40,
            )  # fmt: skip
            for piece in random_writes(data, random.Random(name), max_write):
                stream.write(piece)
            stream.close()
        except BaseException as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=ship, args=item) for item in datas.items()]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return failures, time.monotonic() - started


def test_concurrent_streams_on_one_client_through_stalls(
    bucket: str, client: Any, proxy: FaultProxy, proxied: Any
) -> None:
    """8 streams on one proxied client, from 8 threads, 30% of requests stalled or delayed
    past a 0.6 s timeout (the watchdog shuts them): each object is its data exactly."""
    proxy.stall_seconds = 1.5
    proxy.plan(rate=0.3, kinds=["stall", "stall_after", "delay_before"], seed=13)
    datas = {f"s{n}.bin": os.urandom(600_000 + n * 10_000) for n in range(8)}
    failures, elapsed = ship_in_threads(proxied, bucket, datas, timeout=0.6, max_write=90_000)
    assert [] == failures
    assert len(proxy.faults()) > 0
    for name, data in datas.items():
        assert data == read_object(client, bucket, name), name
    assert elapsed < 40


# -- further attacks ------------------------------------------------------------------------


def test_tee_with_a_competing_reader_on_its_non_blocking_stdin(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """Another process's reader shares tee's O_NONBLOCK stdin and steals bytes (so tee's
    reads get EAGAIN after select said readable): tee keeps reading until the real EOF,
    and build.log is exactly what tee showed; shown plus stolen is the whole input."""
    data = lines(2 * MIB, seed=21)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    process = tee_process(env, f"gs://{bucket}/steal", stdin=read_fd)
    stolen = bytearray()

    def steal() -> None:
        while True:
            try:
                got = os.read(read_fd, 4096)
            except BlockingIOError:
                time.sleep(0.0005)
                continue
            if not got:
                return
            stolen.extend(got)

    thief = threading.Thread(target=steal, daemon=True)
    thief.start()
    writes = random_writes(data, random.Random(8), 50_000)
    writer = open(write_fd, "wb")  # noqa: SIM115 - closed by the feeder
    feeder = feed_in_background(writer, writes, pause_every=4, pause=0.01)
    shown, err = collect(process)
    feeder.join(10)
    thief.join(10)
    os.close(read_fd)
    assert 0 == process.returncode, err[-2000:]
    assert not feeder.is_alive()
    assert len(data) == len(shown) + len(stolen)
    assert len(stolen) > 0
    assert shown == read_object(client, bucket, "steal/build.log")


def test_tee_from_a_regular_file(env: dict[str, str], client: Any, bucket: str) -> None:
    """``tee < file`` (no pipe to grow, always readable): 5 MiB in 1 MiB reads, exact."""
    data = lines(5 * MIB, seed=22)
    with tempfile.TemporaryFile() as source:
        source.write(data)
        source.seek(0)
        process = tee_process(env, f"gs://{bucket}/file", stdin=source)
        shown, err = collect(process)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    assert data == read_object(client, bucket, "file/build.log")


def test_records_logged_from_a_signal_handler_during_a_flood(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """SIGALRM every 2 ms logs a record from its handler while the main thread logs 5,000
    records (the signal can land inside put(), holding the queue lock): no deadlock, every
    record of both stored exactly once."""
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(logging.Formatter("@@%(message)s"))
    logger.addHandler(handler)
    in_handler: list[int] = []

    def on_alarm(signum: int, frame: Any) -> None:
        in_handler.append(len(in_handler))
        logger.info("sig %d", in_handler[-1])

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    try:
        for i in range(5000):
            logger.info("main %d", i)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    handler.close()
    stored = normalize(records_in(client, bucket))
    expected = [f"@@main {i}" for i in range(5000)] + [f"@@sig {n}" for n in in_handler]
    assert sorted(expected) == sorted(stored)
    assert [f"@@main {i}" for i in range(5000)] == [s for s in stored if s.startswith("@@main")]
    assert 0 == handler.dropped


def test_watchdog_still_cuts_a_stall_after_heap_compaction(
    bucket: str, client: Any, proxy: FaultProxy, proxied: Any
) -> None:
    """600 quick requests with 60 s deadlines (the heap passes COMPACT_AT and is compacted,
    twice), then an upload whose chunk is stalled for 20 s with a 0.8 s timeout: the
    watchdog still shuts it, the retry succeeds, well before the stall would end."""
    for n in range(300):
        GCSObjectStream(bucket, f"quick-{n}", client=client, timeout=60).abort()
    # Memory follows the requests in flight, not the request rate times the timeout.
    assert len(_transport._WATCHDOG._heap) <= 2 * _transport._Watchdog.COMPACT_AT
    proxy.stall_seconds = 20
    proxy.script(["stall"], match=lambda req: req.method == "PUT")
    data = os.urandom(700_000)
    started = time.monotonic()
    stream = GCSObjectStream(
        bucket, "after.bin", client=proxied, chunk_size=256 * 1024, timeout=0.8, retry_deadline=30
    )
    stream.write(data)
    stream.close()
    elapsed = time.monotonic() - started
    assert proxy.faulting.is_set()  # the stall began (its event is recorded when it ends)
    assert data == read_object(client, bucket, "after.bin")
    assert elapsed < 8, elapsed


def test_dripping_answers_on_concurrent_streams_are_cut_by_the_watchdog(
    bucket: str, client: Any, proxy: FaultProxy, proxied: Any
) -> None:
    """4 streams on one client, a quarter of their requests answered one byte a second
    (the connection is in use until the body is read: handing it back early would take it
    off the watch): every request ends within its timeout, every object is exact."""
    proxy.drip_seconds = 1.0
    proxy.plan(rate=0.25, kinds=["drip", "cut_body"], seed=5)
    datas = {f"d{n}.bin": os.urandom(500_000 + n) for n in range(4)}
    failures, elapsed = ship_in_threads(proxied, bucket, datas, timeout=0.7, max_write=100_000)
    assert [] == failures
    assert len(proxy.faults()) > 0
    for name, data in datas.items():
        assert data == read_object(client, bucket, name), name
    assert elapsed < 30, elapsed


def test_fork_while_threads_log_without_the_handler_lock(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """4 threads log with the stock formatter (no handler.lock: a thread may hold the queue's
    lock at the fork) while the main thread forks; the child logs 50 records and closes:
    the child never hangs, its records are stored once, the parent's all once, none of the
    parent's records shipped by the child."""
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=20)
    handler.setFormatter(logging.Formatter("@@%(process)d %(message)s"))
    logger.addHandler(handler)
    stop = threading.Event()
    counts = [0] * 4

    def work(number: int) -> None:
        while not stop.is_set() and counts[number] < 3000:
            logger.info("t%d r%d", number, counts[number])
            counts[number] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no exceptions out of here
        code = 1
        try:
            for i in range(50):
                logger.info("child %d", i)
            handler.close()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    stop.set()
    for thread in threads:
        thread.join()
    handler.close()
    assert 0 == status, "the child hung or failed"
    stored = normalize(records_in(client, bucket))
    child_lines = [line.split(" ", 1)[1] for line in stored if line.startswith(f"@@{pid} ")]
    parent_lines = [
        line.split(" ", 1)[1] for line in stored if line.startswith(f"@@{os.getpid()} ")
    ]
    assert [f"child {i}" for i in range(50)] == child_lines
    expected = sorted(f"t{n} r{i}" for n in range(4) for i in range(counts[n]))
    assert expected == sorted(parent_lines)
    assert len(stored) == len(child_lines) + len(parent_lines)


def test_run_on_a_terminal_floods_through_its_pty(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """``run`` whose stdout is a terminal gives the command a pty (no pipe to grow, reads
    never reach 64 KiB): 2 MiB of lines flooded, the pty's \\n -> \\r\\n applied once,
    build.log equals the terminal copy exactly."""
    code = """
        import sys
        for i in range(40000):
            sys.stdout.write(f"{i:08d} " + "y" * (i % 97) + "\\n")
        """
    expected = "".join(f"{i:08d} " + "y" * (i % 97) + "\n" for i in range(40000)).encode()
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # our side shows what run writes, untranslated
    try:
        process = subprocess.Popen(
            [*CLI, "run", f"gs://{bucket}/tty", "--", *child(code)],
            env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(terminal)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: run exited, the terminal's other side is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert process.stderr is not None
    err = process.stderr.read()
    process.stderr.close()
    assert 0 == process.wait(60), err[-2000:]
    stored = read_object(client, bucket, "tty/build.log")
    assert expected.replace(b"\n", b"\r\n") == stored
    assert stored == bytes(shown)


def test_tee_tiny_buffer_drops_with_timestamps_verify(
    env: dict[str, str], client: Any, bucket: str, proxy: FaultProxy
) -> None:
    """--buffer-size 1K --timestamps with a 2 MiB flood of short lines while every chunk
    upload is delayed 2 s (stamped reads outgrow the 1 KiB buffer, drops and markers
    interleave with stamps): build.log is composed and verified (its size is reported),
    each stamp starts a line, kept text is in the input, and the dropped count reported is
    the markers' sum."""
    data = lines(2 * MIB, seed=23)
    proxy.plan(rate=1.0, kinds=["delay_before"], match=lambda req: req.method == "PUT")
    process = tee_process(
        emulator_env(proxy.url), f"gs://{bucket}/tsdrop", "--buffer-size", "1K", "--timestamps"
    )
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(6), 70_000))
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "tsdrop/build.log")
    assert f"tsdrop/build.log ({len(stored):,} bytes)\n".encode() in err, err[-2000:]
    counts = [int(n) for n in MARKER.findall(stored)]
    assert counts, "nothing was dropped: the test did not fill the buffer"
    assert f"{sum(counts):,} bytes of output were dropped".encode() in err, err[-2000:]
    stamp = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    text = MARKER.sub(b"\n", stored)
    for line in text.split(b"\n"):
        unstamped = stamp.sub(b"", line, count=1) if stamp.match(line) else line
        assert not stamp.search(unstamped), line[:120]  # stamped once, at the start only
        assert unstamped in data, line[:120]


def test_a_format_replaced_on_the_instance_keeps_the_handler_lock(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """``handler.format = wrapper`` (state of its own, e.g. a counter): the stdlib runs
    format() inside emit() under handler.lock; the stored text is the wrapper's."""
    handler = GCSHandler(bucket, client=client, rotate_seconds=None, close_timeout=30)
    handler.setFormatter(logging.Formatter("@@%(message)s"))
    original = handler.format
    unlocked: list[str] = []

    def wrapper(record: logging.LogRecord) -> str:
        if not handler.lock._is_owned():  # type: ignore[union-attr]
            unlocked.append(record.getMessage())
        return original(record) + " (wrapped)"

    handler.format = wrapper  # type: ignore[method-assign]
    logger.addHandler(handler)
    for i in range(20):
        logger.info("r%d", i)
    handler.close()
    assert [f"@@r{i} (wrapped)" for i in range(20)] == normalize(records_in(client, bucket))
    assert [] == unlocked
