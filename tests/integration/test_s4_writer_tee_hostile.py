"""Hostile tests of today's issue-13 changes on main: the writer's staged small writes,
uncopied large writes and recycled chunk memory (stream.py, _chunks.py), tee/run's 256 KiB
reads with the CRC32C kept by OutputBuffer (capture.py), and the shipper writing a run of at
most 16 records one by one (_shipper.py).

Every test that ships data reads the objects back from the local server and compares them
byte for byte, or record for record.
"""

from __future__ import annotations

import array
import logging
import mmap
import os
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from faultproxy import FaultProxy, is_chunk_upload, is_final_request
from helpers import crc32c_b64, emulator_env, read_object
from test_cli import CLI, child
from test_cli import env as env  # the fixture
from test_session13_hostile import (
    MARKER,
    collect,
    feed_in_background,
    lines,
    normalize,
    records_in,
    tee_process,
)

from gcs_log_sink import GCSHandler, GCSObjectStream, _chunks, errors

pytestmark = pytest.mark.timeout(60)

UNIT = 256 * 1024
CHUNK = UNIT  # the smallest chunk: small data, many chunk boundaries
KIB = 1024


def _fast(out: GCSObjectStream) -> GCSObjectStream:
    """Retries after 10-50 ms instead of the default back-off (keeps the tests short)."""
    out._policy = replace(out._policy, initial_delay=0.01, max_delay=0.05)
    return out


# -- GCSObjectStream: staged writes --------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_signal_handler_writing_during_a_staged_chunk_upload_splits_no_write(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Small writes fill a chunk; the write that crosses the chunk boundary is cut into a
    head (sent at once) and a tail (appended after the send). The send is slowed by the
    proxy and a signal handler writes a marker to the same stream while it is in flight
    (the stream's lock is an RLock, so the handler gets in). The marker must land between
    two whole writes, never inside the write being cut: before today each write went into
    the buffer whole before any send."""
    proxy.stall_seconds = 1.0
    proxy.script(["delay_before"], match=is_chunk_upload)
    pieces = [bytes([65 + i % 26]) * 10_000 for i in range(40)]  # 400,000 bytes > 1 chunk
    marker = b"<SIGNAL>"
    out = _fast(GCSObjectStream(bucket, "sig", client=proxied, chunk_size=CHUNK, timeout=10))
    fired: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        fired.append(out.tell())
        out.write(marker)

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        crossing = (CHUNK // 10_000) if CHUNK % 10_000 else CHUNK // 10_000 - 1
        for index, piece in enumerate(pieces):
            if index == crossing:  # this write crosses the chunk boundary: it sends
                timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
                timer.start()
                started = time.monotonic()
                out.write(piece)
                assert time.monotonic() - started > 0.5  # the send was slowed, as meant
                timer.join()
            else:
                out.write(piece)
        out.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert 1 == len(fired)
    stored = read_object(client, bucket, "sig")
    assert len(b"".join(pieces)) + len(marker) == len(stored)
    at = stored.index(marker)
    assert b"".join(pieces) == stored[:at] + stored[at + len(marker) :]
    boundaries = {sum(len(p) for p in pieces[:n]) for n in range(len(pieces) + 1)}
    assert at in boundaries, f"marker at {at}, inside a write (boundaries near: {CHUNK})"


@pytest.mark.timeout(20)
def test_a_signal_handler_writing_records_while_the_program_writes_records(
    client: Any, bucket: str
) -> None:
    """SIGALRM every 2 ms writes a short record to the stream the main thread is writing
    small records to (staged writes, a chunk sent every ~256 KiB; the server answers at
    once; a handler that finds itself nested skips, as careful programs do): no write
    raises, tell() counts every byte, and the object holds every record of both whole,
    once, the main thread's in order."""
    out = GCSObjectStream(bucket, "alarm", client=client, chunk_size=CHUNK)
    fired: list[bytes] = []
    inside: list[bool] = []

    def on_alarm(signum: int, frame: Any) -> None:
        if inside:
            return
        inside.append(True)
        try:
            record = b"<sig %d>\n" % len(fired)
            fired.append(record)
            out.write(record)
        finally:
            inside.clear()

    mine = [b"<main %d " % n + b"m" * (n % 700) + b">\n" for n in range(6000)]
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    try:
        for record in mine:
            out.write(record)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    written = sum(map(len, mine)) + sum(map(len, fired))
    assert written == out.tell()
    out.close()
    stored = read_object(client, bucket, "alarm")
    records = [r + b"\n" for r in stored.split(b"\n")[:-1]]
    assert mine == [r for r in records if r.startswith(b"<main")]
    assert sorted(fired) == sorted(r for r in records if r.startswith(b"<sig"))
    assert written == len(stored)


def test_writes_of_every_buffer_kind_are_taken_as_they_were_at_the_call(
    client: Any, bucket: str
) -> None:
    """array('I'), a 2-D cast memoryview, a bytes subclass, an mmap, and bytearrays of a
    whole chunk and more (the size kept by reference when it is bytes) mutated right after
    write() returns: the object holds the bytes as they were at each call; a
    non-contiguous view is refused without counting anything and the stream goes on."""
    rng = random.Random(4401)

    class Tagged(bytes):
        pass

    expected = bytearray()
    out = GCSObjectStream(bucket, "kinds", client=client, chunk_size=CHUNK)
    words = array.array("I", range(5000))
    assert len(words) * words.itemsize == out.write(words)
    expected += words.tobytes()
    words[0] = 0xDEADBEEF  # after the call: must not show
    flat = bytearray(rng.randbytes(6 * 1000))
    two_d = memoryview(flat).cast("B", (6, 1000))
    out.write(two_d)
    expected += flat
    flat[:] = b"\0" * len(flat)
    tagged = Tagged(rng.randbytes(CHUNK + 17))
    out.write(tagged)
    expected += tagged
    with mmap.mmap(-1, 3 * KIB) as region:
        region.write(rng.randbytes(3 * KIB))
        out.write(region)
        expected += region[:]
        region.seek(0)
        region.write(b"\xff" * 3 * KIB)
    for size in (CHUNK, CHUNK + 1, 2 * CHUNK + 5):
        big = bytearray(rng.randbytes(size))
        out.write(big)
        expected += big
        big[:] = b"\0" * size
        view_source = bytearray(rng.randbytes(size))
        out.write(memoryview(view_source))
        expected += view_source
        view_source[:100] = b"\1" * 100
    before = out.tell()
    with pytest.raises((TypeError, BufferError, ValueError)):
        out.write(memoryview(bytearray(b"abcdef"))[::2])
    assert before == out.tell()
    out.write(b"end")
    expected += b"end"
    out.close()
    assert bytes(expected) == read_object(client, bucket, "kinds")
    assert crc32c_b64(bytes(expected)) == out.crc32c


def test_staged_writes_with_flush_tell_close_abort_from_threads(client: Any, bucket: str) -> None:
    """Four threads write small numbered records to one stream while a fifth calls flush()
    and tell() and reads ``buffered`` in a loop, then close() races the writers: every
    record that write() accepted is stored whole, once, in each thread's order; tell() never
    goes back; writes after close fail with ValueError; close() twice is fine."""
    out = GCSObjectStream(bucket, "race", client=client, chunk_size=CHUNK)
    accepted: dict[int, list[bytes]] = {n: [] for n in range(4)}
    stop = threading.Event()
    tells: list[int] = []
    problems: list[BaseException] = []

    def writer(n: int) -> None:
        rng = random.Random(n)
        i = 0
        while not stop.is_set():
            record = f"<{n}:{i}:".encode() + b"x" * rng.randrange(3000) + b">\n"
            try:
                out.write(record)
            except ValueError:
                return
            accepted[n].append(record)
            i += 1

    def poker() -> None:
        while not stop.is_set():
            try:
                out.flush()
                tells.append(out.tell())
                assert out.buffered >= 0
            except ValueError:
                return
            except BaseException as exc:
                problems.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=poker))
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    out.close()
    stop.set()
    for thread in threads:
        thread.join(10)
    out.close()
    assert [] == problems
    assert tells == sorted(tells)
    stored = read_object(client, bucket, "race")
    records = stored.split(b"\n")
    assert b"" == records.pop()
    for n in range(4):
        mine = [r + b"\n" for r in records if r.startswith(f"<{n}:".encode())]
        assert accepted[n] == mine
    assert sum(len(r) for rs in accepted.values() for r in rs) == len(stored) == out.size


def test_an_interrupt_during_a_staged_chunk_send_loses_and_doubles_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """A KeyboardInterrupt (a SIGALRM handler raising it) lands while the chunk that a
    staged write completed is being sent (the send slowed by the proxy): the program
    catches it and goes on writing, then closes. tell() after the interrupt counts the
    interrupted write (its tail is kept staged), so the object is every write, once, in
    order."""
    proxy.stall_seconds = 0.8
    proxy.script(["delay_before"], match=is_chunk_upload)
    pieces = [bytes([97 + i % 26]) * 10_000 for i in range(60)]
    crossing = CHUNK // 10_000
    out = _fast(GCSObjectStream(bucket, "intr", client=proxied, chunk_size=CHUNK, timeout=10))

    def on_alarm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, on_alarm)
    interrupted = False
    try:
        for index, piece in enumerate(pieces):
            if index == crossing:
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                try:
                    out.write(piece)
                except KeyboardInterrupt:
                    interrupted = True
                signal.setitimer(signal.ITIMER_REAL, 0)
                assert sum(len(p) for p in pieces[: index + 1]) == out.tell()
            else:
                out.write(piece)
        out.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted, "the interrupt did not land in the send"
    assert b"".join(pieces) == read_object(client, bucket, "intr")


def test_abort_from_a_signal_handler_during_a_send_then_a_new_stream(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """A signal handler calls abort() on the stream whose chunk is being sent (the stream's
    RLock lets it in; abort() recycles the chunk memory at once, though the send in
    progress still owns it): the interrupted write() ends with a typed error or returns, no
    object is published, and the next stream of the same chunk size, which takes the
    recycled memory, stores exactly its bytes."""
    proxy.stall_seconds = 0.8
    proxy.script(["delay_before"], match=is_chunk_upload)
    rng = random.Random(4405)
    out = _fast(GCSObjectStream(bucket, "gone", client=proxied, chunk_size=CHUNK, timeout=10))

    def on_alarm(signum: int, frame: Any) -> None:
        out.abort()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    caught: list[BaseException] = []
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            for _ in range(CHUNK // 8000 + 2):
                out.write(rng.randbytes(8000))
        except errors.GCSLogSinkError as exc:
            caught.append(exc)
        except ValueError as exc:  # closed by the abort: the io convention
            caught.append(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert out.closed
    data = rng.randbytes(3 * CHUNK + 11)
    with GCSObjectStream(bucket, "after", client=client, chunk_size=CHUNK) as fresh:
        for at in range(0, len(data), 5000):
            fresh.write(data[at : at + 5000])
    assert ["after"] == [blob.name for blob in client.list_blobs(bucket)]
    assert data == read_object(client, bucket, "after")


def test_a_forked_child_writing_to_the_parents_stream_leaves_by_os_exit(
    client: Any, bucket: str
) -> None:
    """A stream holds staged writes when the program forks; the child writes a little more
    to its copy and leaves by os._exit(0) (as multiprocessing children do): nothing of the
    child's reaches the object, and the parent's writes before and after the fork are
    stored exactly."""
    rng = random.Random(4406)
    before = [rng.randbytes(rng.randrange(1, 9000)) for _ in range(20)]
    after = [rng.randbytes(rng.randrange(1, 9000)) for _ in range(80)]
    out = GCSObjectStream(bucket, "forked", client=client, chunk_size=CHUNK)
    for piece in before:
        out.write(piece)
    pid = os.fork()
    if pid == 0:  # the child: a little more, then leave without cleanup
        try:
            for _ in range(5):
                out.write(b"CHILD" * 1000)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert 0 == status
    for piece in after:
        out.write(piece)
    out.close()
    assert b"".join(before + after) == read_object(client, bucket, "forked")


def test_a_dropped_stream_with_staged_writes_publishes_nothing_and_says_nothing(
    client: Any, bucket: str, capfd: Any
) -> None:
    """A stream dropped (garbage-collected) with writes staged and a chunk sent: no object
    is published, nothing is printed (no session URL), and a new stream of the same chunk
    size right after stores exactly its bytes."""
    import gc

    out: GCSObjectStream | None = GCSObjectStream(
        bucket, "dropped", client=client, chunk_size=CHUNK
    )
    assert out is not None
    out.write(b"a" * (CHUNK + 5))
    out.write(b"b" * 3000)
    out = None
    gc.collect()
    data = random.Random(4407).randbytes(2 * CHUNK + 1)
    with GCSObjectStream(bucket, "kept", client=client, chunk_size=CHUNK) as fresh:
        for at in range(0, len(data), 6000):
            fresh.write(data[at : at + 6000])
    assert ["kept"] == [blob.name for blob in client.list_blobs(bucket)]
    assert data == read_object(client, bucket, "kept")
    captured = capfd.readouterr()
    assert "upload_id" not in captured.err + captured.out


# -- recycled chunk memory -----------------------------------------------------------------


def test_a_refused_finalize_keeps_its_bytes_while_new_streams_of_that_size_run(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """The server refuses the finalize (403) of a stream whose bytes are all still held;
    streams of the same chunk size then run to the end (taking recycled memory): the
    refused stream still gives back exactly its bytes to send again, and each new object is
    exact."""
    proxy.script(["403_before"], match=is_final_request)
    rng = random.Random(4402)
    first = rng.randbytes(CHUNK - 100)
    refused = GCSObjectStream(bucket, "refused", client=proxied, chunk_size=CHUNK, timeout=5)
    for at in range(0, len(first), 5000):
        refused.write(first[at : at + 5000])
    with pytest.raises(errors.GCSLogSinkError):
        refused.close()
    refused.close()  # twice: fine, no new error
    others = []
    for n in range(4):
        data = rng.randbytes(3 * CHUNK + n)
        with GCSObjectStream(bucket, f"next-{n}", client=client, chunk_size=CHUNK) as out:
            for at in range(0, len(data), 7000):
                out.write(data[at : at + 7000])
        others.append(data)
    assert first == refused._retained_whole()
    for n, data in enumerate(others):
        assert data == read_object(client, bucket, f"next-{n}")


def test_streams_of_six_chunk_sizes_in_threads_with_aborts_mix_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Six threads, each with its own chunk size (more sizes than the free list keeps),
    open stream after stream through a proxy that fails some chunks; every third stream is
    aborted mid-way. Each finished object is exactly its own bytes (no other stream's
    memory shows through) and no aborted object exists."""
    proxy.plan(rate=0.2, kinds=["partial", "503_after", "reset_before"], match=is_chunk_upload)
    sizes = [UNIT * k for k in (1, 2, 3, 4, 5, 6)]
    kept: dict[str, bytes] = {}
    aborted: list[str] = []
    problems: list[BaseException] = []
    lock = threading.Lock()

    def work(size: int) -> None:
        rng = random.Random(size)
        try:
            for n in range(3):
                name = f"s{size}-{n}"
                data = rng.randbytes(2 * size + rng.randrange(5000))
                out = _fast(
                    GCSObjectStream(bucket, name, client=proxied, chunk_size=size, timeout=10)
                )
                if n == 1:
                    out.write(data[: size + 10])  # borrowed, sent
                    out.write(data[size + 10 : size + 5000])  # staged
                    out.abort()
                    with lock:
                        aborted.append(name)
                    continue
                for at in range(0, len(data), 9000):
                    out.write(data[at : at + 9000])
                out.write(data[len(data) :])
                out.close()
                with lock:
                    kept[name] = data
        except BaseException as exc:
            problems.append(exc)

    threads = [threading.Thread(target=work, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert [] == problems
    names = {blob.name for blob in client.list_blobs(bucket)}
    assert set(kept) == names
    for name, data in kept.items():
        assert data == read_object(client, bucket, name), name
    assert len(_chunks._FREE) <= _chunks._FREE_CAPACITIES


def test_a_forked_child_using_a_stream_while_the_parent_recycles(
    gcs: Any, client: Any, bucket: str
) -> None:
    """A program with a thread recycling chunk memory in a loop forks; the child writes
    and closes a stream of the same chunk size and leaves by os._exit(0) while the parent
    goes on: neither hangs (free-list lock re-made in the child), and every object of
    both is exact."""
    script = textwrap.dedent(
        f"""
        import os, random, threading
        from gcs_log_sink import GCSObjectStream
        from gcs_log_sink._localgcs import anonymous_client
        client = anonymous_client({gcs.url!r})
        stop = threading.Event()
        def parent_loop():
            n = 0
            while not stop.is_set():
                data = random.Random(n).randbytes({CHUNK} + n)
                with GCSObjectStream({bucket!r}, f"parent-{{n}}", client=client,
                                     chunk_size={CHUNK}) as out:
                    out.write(data)
                n += 1
            print("parent", n, flush=True)
        thread = threading.Thread(target=parent_loop)
        thread.start()
        pids = []
        for k in range(3):
            pid = os.fork()
            if pid == 0:
                data = random.Random(1000 + k).randbytes(2 * {CHUNK} + 7)
                child_client = anonymous_client({gcs.url!r})
                with GCSObjectStream({bucket!r}, f"child-{{k}}", client=child_client,
                                     chunk_size={CHUNK}) as out:
                    for at in range(0, len(data), 3000):
                        out.write(data[at:at + 3000])
                os._exit(0)
            pids.append(pid)
        codes = [os.waitpid(pid, 0)[1] for pid in pids]
        stop.set()
        thread.join()
        print("codes", codes, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=emulator_env(gcs.url),
        capture_output=True,
        timeout=40,
    )
    assert 0 == done.returncode, done.stderr.decode()[-2000:]
    assert "codes [0, 0, 0]" in done.stdout.decode()
    parents = int(done.stdout.decode().split("parent ")[1].split()[0])
    import random as _random

    for k in range(3):
        expected = _random.Random(1000 + k).randbytes(2 * CHUNK + 7)
        assert expected == read_object(client, bucket, f"child-{k}")
    for n in range(parents):
        expected = _random.Random(n).randbytes(CHUNK + n)
        assert expected == read_object(client, bucket, f"parent-{n}")


# -- tee / run: 256 KiB reads, the CRC32C kept by OutputBuffer ------------------------------

STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def _letters(size: int, seed: int) -> bytes:
    """``size`` random letters (no newline)."""
    table = bytes(string.ascii_letters.encode()[i % 52] for i in range(256))
    return random.Random(seed).randbytes(size).translate(table)


@pytest.mark.parametrize("size", [UNIT - 1, UNIT, UNIT + 1])
def test_tee_writes_on_both_sides_of_a_read_across_small_parts(
    env: dict[str, str], client: Any, bucket: str, size: int
) -> None:
    """Writes of exactly 256 KiB, one less and one more (one read each, or a read and a
    byte), 12 of them with a 50 ms pause each, --part-bytes 300K so parts roll often (one
    stream per part: recycled chunk memory between parts): build.log is the input exactly
    and its CRC32C verified (the size line on stderr)."""
    writes = [_letters(size, seed) + b"\n" for seed in range(12)]
    data = b"".join(writes)
    process = tee_process(env, f"gs://{bucket}/edge", "--part-bytes", "300K")
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, writes, pause_every=1, pause=0.05)
    shown, err = collect(process, timeout=40)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "edge/build.log")
    assert data == stored
    assert f"edge/build.log ({len(stored):,} bytes)\n".encode() in err, err[-2000:]


def test_tee_timestamps_with_lines_spanning_reads_then_a_trickle(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--timestamps: a flood of lines of 100 KiB-700 KiB (each spans 256 KiB reads, some
    end exactly on a read) grows the pipe, then a slow trickle of short lines, some cut
    in two writes: every line is stamped exactly once, at its start, and the text after
    the stamps is the input exactly."""
    rng = random.Random(4403)
    flood = [
        _letters(rng.choice([100 * KIB, UNIT - 1, UNIT, 700 * KIB]), n) + b"\n" for n in range(8)
    ]
    trickle: list[bytes] = []
    for n in range(30):
        line = f"trickle {n} ".encode() + b"t" * rng.randrange(200) + b"\n"
        if n % 3 == 0:
            trickle += [line[:5], line[5:]]
        else:
            trickle.append(line)
    writes = flood + trickle
    data = b"".join(writes)
    process = tee_process(env, f"gs://{bucket}/ts", "--timestamps")
    assert process.stdin is not None

    def feed() -> None:
        assert process.stdin is not None
        for piece in flood:
            process.stdin.write(piece)
        process.stdin.flush()
        for piece in trickle:
            process.stdin.write(piece)
            process.stdin.flush()
            time.sleep(0.02)
        process.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    shown, err = collect(process, timeout=40)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "ts/build.log")
    stored_lines = stored.split(b"\n")
    assert b"" == stored_lines.pop()
    assert data.count(b"\n") == len(stored_lines)
    bare = []
    for line in stored_lines:
        stamp = STAMP.match(line)
        assert stamp is not None, line[:60]
        rest = line[stamp.end() :]
        assert STAMP.search(rest) is None, "a second stamp inside a line"
        bare.append(rest + b"\n")
    assert data == b"".join(bare)


@pytest.mark.parametrize("source", ["file", "fifo", "devnull"])
def test_tee_from_a_file_a_fifo_and_dev_null(
    env: dict[str, str], client: Any, bucket: str, source: str
) -> None:
    """stdin a regular file of 3 x 256 KiB + 1 bytes, a FIFO fed in 256 KiB + 1 writes, or
    /dev/null: exit 0, the terminal copy and build.log are the input exactly (empty for
    /dev/null: an empty build.log or none)."""
    data = b"" if source == "devnull" else lines(3 * UNIT + 1, seed=44)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "in")
        if source == "file":
            with open(path, "wb") as fh:
                fh.write(data)
        elif source == "fifo":
            os.mkfifo(path)

            def feed() -> None:
                with open(path, "wb") as fh:
                    for at in range(0, len(data), UNIT + 1):
                        fh.write(data[at : at + UNIT + 1])
                        fh.flush()

            threading.Thread(target=feed, daemon=True).start()
        else:
            path = os.devnull
        with open(path, "rb") as stdin:
            process = tee_process(env, f"gs://{bucket}/src", stdin=stdin)
            shown, err = collect(process, timeout=40)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    names = {blob.name for blob in client.list_blobs(bucket)}
    if data or "src/build.log" in names:
        assert data == read_object(client, bucket, "src/build.log")


def test_tee_buffer_smaller_than_a_read_drops_under_stalls_and_verifies(
    env: dict[str, str], client: Any, bucket: str, proxy: FaultProxy
) -> None:
    """--buffer-size 100K (less than one 256 KiB read) while every POST and PUT is delayed
    1 s and 8 MiB arrive in 256 KiB + 1 writes: build.log verifies (the CRC32C kept by the buffer
    covers what was kept, markers included), each kept piece sits at its exact offset and
    each marker counts exactly the gap."""
    data = _letters(8 * 1024 * KIB, seed=45)
    proxy.stall_seconds = 1.0
    proxy.plan(rate=1.0, kinds=["delay_before"], match=lambda req: req.method in ("POST", "PUT"))
    process = tee_process(emulator_env(proxy.url), f"gs://{bucket}/drop", "--buffer-size", "100K")
    assert process.stdin is not None
    writes = [data[at : at + UNIT + 1] for at in range(0, len(data), UNIT + 1)]
    feeder = feed_in_background(process.stdin, writes)
    shown, err = collect(process, timeout=50)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "drop/build.log")
    assert f"drop/build.log ({len(stored):,} bytes)\n".encode() in err, err[-2000:]
    pieces = MARKER.split(stored)
    kept, counts = pieces[0::2], [int(n) for n in pieces[1::2]]
    offset = 0
    for index, piece in enumerate(kept):
        assert data[offset : offset + len(piece)] == piece, f"kept piece {index} misplaced"
        offset += len(piece) + (counts[index] if index < len(counts) else 0)
    assert len(data) == offset
    assert counts, "nothing was dropped: the test did not fill the buffer"


def _numbered(blocks: int) -> bytes:
    """``blocks`` blocks of 256 KiB, each a distinct repeated 8-digit number."""
    return b"".join((b"%08d" % n) * (UNIT // 8) for n in range(blocks))


def test_run_sigterm_to_the_process_group_mid_flood_ships_a_verified_prefix(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """``run`` in its own process group, the command printing 256 KiB blocks (exactly one
    read each) every 20 ms; SIGTERM to the whole group after 1 s: run exits 128+15 within
    its bounds, and build.log is exactly a prefix of what the command printed, at least the
    first blocks, whole reads only (no read doubled or torn)."""
    code = f"""
        import os, time
        n = 0
        while True:
            block = (b"%08d" % n) * ({UNIT} // 8)
            view = memoryview(block)
            while view:
                view = view[os.write(1, view):]
            n += 1
            time.sleep(0.02)
        """
    process = subprocess.Popen(
        [*CLI, "run", f"gs://{bucket}/term", "--", *child(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timer = threading.Timer(1.0, os.killpg, (process.pid, signal.SIGTERM))
    timer.start()
    shown, err = collect(process, timeout=40)
    timer.join()
    assert 128 + signal.SIGTERM == process.returncode, err[-2000:]
    stored = read_object(client, bucket, "term/build.log")
    assert len(stored) >= UNIT
    blocks = len(stored) // UNIT + 1
    assert _numbered(blocks)[: len(stored)] == stored
    assert shown[: len(stored)] == stored
    assert f"term/build.log ({len(stored):,} bytes)\n".encode() in err, err[-2000:]


def test_run_printing_exactly_a_read_and_one_byte_either_side(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """The command prints exactly 256 KiB, pauses, 256 KiB - 1, pauses, 256 KiB + 1 on
    stdout, and 256 KiB on stderr: build.log holds each stream's bytes exactly (disjoint
    alphabets) and verifies."""
    code = f"""
        import os, time
        def put(fd, data):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        put(1, b"a" * {UNIT})
        time.sleep(0.2)
        put(1, b"b" * ({UNIT} - 1))
        time.sleep(0.2)
        put(2, b"E" * {UNIT})
        put(1, b"c" * ({UNIT} + 1))
        """
    result = subprocess.run(
        [*CLI, "run", f"gs://{bucket}/edges", "--", *child(code)],
        env=env,
        capture_output=True,
        timeout=40,
        check=False,
    )
    assert 0 == result.returncode, result.stderr[-2000:]
    stored = read_object(client, bucket, "edges/build.log")
    expected_out = b"a" * UNIT + b"b" * (UNIT - 1) + b"c" * (UNIT + 1)
    assert expected_out == result.stdout
    assert expected_out == bytes(b for b in stored if b != ord("E"))
    assert UNIT == stored.count(b"E")
    assert f"edges/build.log ({len(stored):,} bytes)\n".encode() in result.stderr


# -- the shipper: runs of <= 16 records written one by one ---------------------------------


def test_large_and_tiny_records_through_a_spool_under_faults_are_stored_once_each(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """The same mix of 100 KiB-1 MiB and tiny records with a spool (each record of a short
    run goes to the segment on its own) while a third of the chunk uploads fail: every
    record stored once, whole, in order, and no segment is left in the spool (its lock
    file aside)."""
    proxy.plan(rate=0.3, kinds=["partial", "503_after", "reset_after"], match=is_chunk_upload)
    with tempfile.TemporaryDirectory() as spool:
        handler = GCSHandler(
            bucket,
            client=proxied,
            rotate_seconds=None,
            chunk_size=UNIT,
            close_timeout=40,
            timeout=5,
            spool_dir=spool,
        )
        handler.setFormatter(logging.Formatter("@@%(message)s"))
        logger.addHandler(handler)
        expected = []
        for n in range(40):
            if n % 3 == 0:
                message = (
                    f"big {n} " + _letters([100 * KIB, UNIT, 1024 * KIB][(n // 3) % 3], n).decode()
                )
            else:
                message = f"tiny {n}"
            logger.info("%s", message)
            expected.append("@@" + message)
        handler.close()
        left = [name for _, _, names in os.walk(spool) for name in names if name != "lock"]
    assert 0 == handler.dropped
    assert expected == normalize(records_in(client, bucket))
    assert [] == left


def test_large_and_tiny_records_under_chunk_faults_are_stored_once_each(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Records of 100 KiB-2 MiB mixed with tiny ones (batches of a few records: the
    record-by-record path; and runs of many tiny ones: the joined path), through a proxy
    that cuts, fails after storing or resets a third of the chunk uploads: every record is
    stored once, whole, in order."""
    proxy.plan(
        rate=0.3,
        kinds=["partial", "503_after", "reset_before", "reset_after"],
        match=is_chunk_upload,
        seed=4404,
    )
    handler = GCSHandler(
        bucket,
        client=proxied,
        rotate_seconds=None,
        chunk_size=UNIT,
        close_timeout=40,
        timeout=5,
    )
    handler.setFormatter(logging.Formatter("@@%(message)s"))
    logger.addHandler(handler)
    rng = random.Random(4404)
    expected = []
    for n in range(60):
        if n % 4 == 0:
            size = rng.choice([100 * KIB, UNIT - 3, UNIT, 700 * KIB, 2 * 1024 * KIB])
            message = f"big {n} " + _letters(size, n).decode()
        else:
            message = f"tiny {n}"
        logger.info("%s", message)
        expected.append("@@" + message)
        if n % 10 == 0:
            for m in range(40):  # a run of many tiny records: joined
                logger.info("run %d.%d", n, m)
                expected.append(f"@@run {n}.{m}")
    handler.close()
    assert 0 == handler.dropped
    stored = normalize(records_in(client, bucket))
    assert len(expected) == len(stored)
    assert expected == stored
    assert proxy.faults(), "no fault was injected"


def test_runs_of_16_and_17_records_across_rotations_from_threads(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Three threads each log runs of exactly 16, then 17, then 15 records of ~40 KiB
    (on both sides of the record-by-record limit) with flush() between runs, while
    max_bytes 600K rolls to a new object every few runs (each object's stream takes the
    last one's recycled chunk memory) and a fifth of the chunk uploads fail: every record
    is stored once, whole, and each thread's records are in its order."""
    proxy.plan(rate=0.2, kinds=["partial", "503_after", "reset_before"], match=is_chunk_upload)
    handler = GCSHandler(
        bucket,
        client=proxied,
        rotate_seconds=None,
        max_bytes=600 * KIB,
        chunk_size=UNIT,
        close_timeout=40,
        timeout=5,
    )
    handler.setFormatter(logging.Formatter("@@%(message)s"))
    logger.addHandler(handler)
    body = {n: _letters(40 * KIB, 100 + n).decode() for n in range(3)}

    def work(n: int) -> None:
        count = 0
        for run in (16, 17, 15, 16, 17):
            for _ in range(run):
                logger.info("t%d %d %s", n, count, body[n])
                count += 1
            handler.flush()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    handler.close()
    assert 0 == handler.dropped
    stored = normalize(records_in(client, bucket))
    assert 3 * 81 == len(stored)
    for n in range(3):
        assert [f"@@t{n} {i} {body[n]}" for i in range(81)] == [
            r for r in stored if r.startswith(f"@@t{n} ")
        ]
    assert len({blob.name for blob in client.list_blobs(bucket)}) > 3  # it rolled
