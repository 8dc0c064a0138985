"""The writer's fast paths (issue 13): staged small writes and recycled chunk memory.

Small ``bytes`` writes are staged by reference and enter the chunk buffer ~64 KiB at a time;
a finished stream's chunk memory serves the next stream. Each test reads the object back
from the server and compares it byte for byte with what was written.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, is_chunk_upload
from helpers import crc32c_b64, emulator_env, read_object

from gcs_log_sink import GCSObjectStream, SessionLostError, _chunks
from gcs_log_sink._localgcs import LocalGCS

UNIT = 256 * 1024
CHUNK = 2 * UNIT
# Sizes on both sides of the staging limits (16 KiB per write, 64 KiB per join) and of a
# chunk: staged, direct, and direct after staged writes.
SIZES = [1, 100, 4096, 16 * 1024 - 1, 16 * 1024, 64 * 1024, 70_000, CHUNK - 1, CHUNK + 3]


def _fast(out: GCSObjectStream) -> GCSObjectStream:
    out._policy = replace(out._policy, initial_delay=0.01, max_delay=0.05)
    return out


def _writes(rng: random.Random, total: int) -> list[bytes]:
    """Random bytes cut into mostly small pieces, with some of every size in SIZES."""
    pieces: list[bytes] = []
    written = 0
    while written < total:
        size = rng.choice(SIZES) if rng.random() < 0.15 else rng.randint(1, 6000)
        pieces.append(rng.randbytes(size))
        written += size
    return pieces


def test_small_and_large_writes_with_flush_and_tell_are_exact(client: Any, bucket: str) -> None:
    """Small (staged) and large (direct) writes interleaved, of every type, with flush()
    at random: tell() counts every byte at once, ``buffered`` never exceeds what was
    written, and the object is byte for byte the writes in order."""
    rng = random.Random(1301)
    pieces = _writes(rng, 5 * CHUNK)
    with GCSObjectStream(bucket, "mixed", client=client, chunk_size=CHUNK) as out:
        written = 0
        for index, piece in enumerate(pieces):
            kind = index % 7
            data: Any = bytearray(piece) if kind == 5 else memoryview(piece) if kind == 6 else piece
            assert len(piece) == out.write(data)
            written += len(piece)
            assert written == out.tell()
            assert 0 <= out.buffered <= written
            if rng.random() < 0.1:
                out.flush()
                assert written == out.tell()
                assert out.buffered < UNIT  # only the part below a unit is left
    expected = b"".join(pieces)
    assert expected == read_object(client, bucket, "mixed")
    assert crc32c_b64(expected) == out.crc32c
    assert len(expected) == out.size == out.tell()


def test_small_writes_reaching_a_chunk_send_it_at_once(client: Any, bucket: str) -> None:
    """A staged write that completes a chunk sends it in that write, as an unstaged one
    did: ``buffered`` drops below a chunk; and the chunk is filled exactly before it is
    sent, so small writes never grow the buffer past its chunk."""
    with GCSObjectStream(bucket, "due", client=client, chunk_size=CHUNK) as out:
        piece = b"x" * 1000
        for _ in range(CHUNK // 1000):
            out.write(piece)
        assert CHUNK // 1000 * 1000 == out.buffered  # not yet a chunk: nothing sent
        out.write(piece)  # now past a whole chunk
        assert out.buffered < CHUNK
        assert out.buffered == out.tell() - CHUNK
        for _ in range(3 * CHUNK // 1000):
            out.write(piece)
            assert CHUNK == out._buffer.capacity  # filled exactly, sent, never grown
        out.write(b"tail")
    expected = piece * (CHUNK // 1000 + 1 + 3 * CHUNK // 1000) + b"tail"
    assert expected == read_object(client, bucket, "due")


def test_abort_after_staged_writes_publishes_nothing(client: Any, bucket: str) -> None:
    """abort() with writes still staged: no object, and the stream refuses more writes."""
    out = GCSObjectStream(bucket, "aborted", client=client, chunk_size=CHUNK)
    out.write(b"a" * 5000)
    out.write(b"b" * (CHUNK + 1))  # sends a chunk
    out.write(b"c" * 100)  # staged
    assert 5000 + CHUNK + 1 + 100 == out.tell()
    out.abort()
    assert out.closed
    assert [] == [blob.name for blob in client.list_blobs(bucket)]
    with pytest.raises((ValueError, SessionLostError)):
        out.write(b"more")


def test_faults_during_uploads_of_staged_writes_lose_and_double_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Chunks made of staged 4 KiB writes are partly persisted, answered 503 after being
    stored, or reset before the server saw them; flush() in between: the object is exact."""
    proxy.script(
        ["partial", None, "503_after", "reset_before", "partial", None, "partial", "503_after"],
        match=is_chunk_upload,
    )
    rng = random.Random(1302)
    data = rng.randbytes(6 * CHUNK + 333)
    out = _fast(GCSObjectStream(bucket, "faulty", client=proxied, chunk_size=CHUNK, timeout=5))
    with out:
        for offset in range(0, len(data), 4096):
            out.write(data[offset : offset + 4096])
            if rng.random() < 0.02:
                out.flush()
    kinds = [event.kind for event in proxy.events]
    assert {"partial", "503_after", "reset_before"} <= set(kinds), kinds
    assert data == read_object(client, bucket, "faulty")
    assert crc32c_b64(data) == out.crc32c


def test_large_writes_sent_from_the_callers_bytes_survive_faults_and_reuse(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Writes of a chunk or more (sent from the caller's bytes, not copied) partly persisted
    or answered 503 after being stored, between small writes, and a bytearray of two chunks
    the caller refills right after write() returns: the object is exactly the writes."""
    proxy.script(
        ["partial", "503_after", None, "partial", "reset_before", "partial"] * 2,
        match=is_chunk_upload,
    )
    rng = random.Random(1303)
    reused = bytearray(2 * CHUNK + 5)
    pieces: list[bytes] = []
    out = _fast(GCSObjectStream(bucket, "large", client=proxied, chunk_size=CHUNK, timeout=5))
    with out:
        for size in [CHUNK, 100, 5 * CHUNK // 2, CHUNK + 1, 3, 2 * CHUNK + 5, 7, 3 * CHUNK]:
            if size == 2 * CHUNK + 5:
                reused[:] = rng.randbytes(size)
                out.write(reused)
                pieces.append(bytes(reused))
                reused[:] = b"\0" * size  # the caller reuses its buffer at once
            else:
                pieces.append(rng.randbytes(size))
                out.write(pieces[-1])
            assert out._buffer.capacity <= 4 * CHUNK
    kinds = [event.kind for event in proxy.events]
    assert {"partial", "503_after", "reset_before"} <= set(kinds), kinds
    expected = b"".join(pieces)
    assert expected == read_object(client, bucket, "large")
    assert crc32c_b64(expected) == out.crc32c


def test_recycled_chunk_memory_never_mixes_two_streams(
    client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads each write three streams in turn, one chunk size, both closing a part
    before either opens the next: each next pair of streams takes chunk memory the other
    pair recycled, and every object holds exactly its own writer's bytes (one thread
    writes bytes below 128, the other bytes from 128 up)."""
    results: dict[str, bytes] = {}
    reused: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=30)
    take = _chunks._memory

    def counting_take(capacity: int) -> bytearray:
        free = _chunks._FREE.get(capacity)
        memory = take(capacity)
        if free is not None and memory is free:
            reused.append(capacity)
        return memory

    monkeypatch.setattr(_chunks, "_memory", counting_take)

    def writer(tag: str, high: bool, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for part in range(3):
                name = f"{tag}-{part}"
                raw = rng.randbytes(2 * CHUNK + rng.randint(0, UNIT))
                data = bytes(b | 0x80 if high else b & 0x7F for b in raw)
                with GCSObjectStream(bucket, name, client=client, chunk_size=CHUNK) as out:
                    for offset in range(0, len(data), 3000):
                        out.write(data[offset : offset + 3000])
                results[name] = data
                barrier.wait()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=writer, args=("low", False, 1)),
        threading.Thread(target=writer, args=("high", True, 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [] == errors
    assert 6 == len(results)
    for name, data in results.items():
        assert data == read_object(client, bucket, name)
    assert len(reused) >= 2  # memory was in fact recycled, once per later pair at least


SPOOLED_CHILD = """
    import sys
    from gcs_log_sink import GCSObjectStream
    out = GCSObjectStream(sys.argv[1], "staged.bin", spool_dir=sys.argv[2],
                          chunk_size=256 * 1024)
    for i in range(200):
        out.write(bytes([i]) * (1000 + i))  # staged: below 16 KiB each
        if i == 150:
            out.write(bytes([7]) * 300_000)  # a direct write after staged ones
    print("written", out.tell(), flush=True)
    import time
    time.sleep(3600)
    """


def test_a_killed_stream_with_staged_writes_recovers_every_write(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """SIGKILL while writes are staged (never joined into the chunk buffer, never flushed):
    the spool holds every write in order, so 'recover' makes the object of exactly what was
    written, nothing lost or doubled."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SPOOLED_CHILD), bucket, str(tmp_path)],
        env=emulator_env(gcs.url),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    written = b"".join(
        bytes([i]) * (1000 + i) + (bytes([7]) * 300_000 if i == 150 else b"") for i in range(200)
    )
    assert f"written {len(written)}\n" == line
    result = subprocess.run(
        [sys.executable, "-m", "gcs_log_sink", "recover", str(tmp_path)],
        env=emulator_env(gcs.url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert written == read_object(client, bucket, "staged.bin")


def test_a_failed_write_with_staged_bytes_fails_every_later_call(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """The session vanishes (404) under a chunk made of staged writes: that write raises,
    later writes raise, close() publishes nothing."""
    proxy.script(["404_before"], match=is_chunk_upload)
    out = _fast(GCSObjectStream(bucket, "lost", client=proxied, chunk_size=CHUNK, timeout=2.0))
    for _ in range(CHUNK // 4096 - 1):
        out.write(b"s" * 4096)  # staged: below a chunk, nothing sent
    with pytest.raises(SessionLostError):
        out.write(b"s" * 4096)  # completes a chunk: sent, and the session is gone
    with pytest.raises(SessionLostError):
        out.write(b"x")
    out.close()
    assert [] == [blob.name for blob in client.list_blobs(bucket)]


def test_threads_writing_staged_records_into_one_stream_lose_none(client: Any, bucket: str) -> None:
    """Four threads write small records into one stream (staged, joined, chunks sent from
    whichever thread completes one) while a fifth flushes and reads tell(): every record is
    in the object once, whole, each thread's in its order, and tell() never went back."""
    out = GCSObjectStream(bucket, "shared", client=client, chunk_size=CHUNK)
    done = threading.Event()
    told: list[int] = []
    errors: list[BaseException] = []

    def writer(tag: int) -> None:
        try:
            for n in range(6000):
                out.write(b"%d-%06d|" % (tag, n) + b"." * (n % 50) + b"\n")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def watcher() -> None:
        while not done.is_set():
            told.append(out.tell())
            out.flush()

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in range(4)]
    spy = threading.Thread(target=watcher)
    spy.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    spy.join(60)
    out.close()
    assert [] == errors
    assert told == sorted(told)
    lines = read_object(client, bucket, "shared").split(b"\n")
    assert b"" == lines.pop()
    for tag in range(4):
        expected = [b"%d-%06d|" % (tag, n) + b"." * (n % 50) for n in range(6000)]
        assert expected == [line for line in lines if line.startswith(b"%d-" % tag)]
    assert out.size == out.tell() == sum(len(line) + 1 for line in lines)


def test_a_small_buffer_reused_by_the_caller_is_taken_as_it_was_at_write(
    client: Any, bucket: str
) -> None:
    """The caller refills one small bytearray (and a memoryview of it) after every write:
    small writes that are not ``bytes`` are copied at write(), never staged by reference,
    so the object holds each write's bytes as they were when written."""
    scratch = bytearray(3000)
    expected = []
    with GCSObjectStream(bucket, "refilled", client=client, chunk_size=CHUNK) as out:
        for n in range(400):
            scratch[:] = bytes([n % 251]) * len(scratch)
            out.write(scratch if n % 2 else memoryview(scratch)[: 1000 + n])
            expected.append(bytes(scratch if n % 2 else scratch[: 1000 + n]))
    assert b"".join(expected) == read_object(client, bucket, "refilled")
