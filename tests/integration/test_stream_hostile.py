"""Hostile tests of the issue-13 writer internals (ChunkBuffer views, the write() fast path,
the one watchdog thread per process), against the real local server and the fault proxy.

Each test reads the object back from the server directly and compares bytes and CRC32C.
"""

from __future__ import annotations

import array
import asyncio
import os
import random
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from faultproxy import FaultProxy, is_chunk_upload
from helpers import crc32c_b64, read_object

from gcs_log_sink import GCSObjectStream
from gcs_log_sink._chunks import ChunkBuffer
from gcs_log_sink.aio import AsyncGCSObjectStream

UNIT = 256 * 1024
CHUNK = 2 * UNIT


def _fast(stream: GCSObjectStream) -> GCSObjectStream:
    """Short backoff waits: the retry schedule is _retry's business, not this file's."""
    stream._policy = replace(stream._policy, initial_delay=0.01, max_delay=0.05)
    return stream


def _assert_object(client: Any, bucket: str, name: str, data: bytes, out: Any) -> None:
    assert data == read_object(client, bucket, name)
    assert crc32c_b64(data) == out.crc32c
    assert len(data) == out.size


def test_awkward_sizes_with_every_chunk_partly_persisted(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Writes of 1 byte, 256K-1, chunk-1, chunk+1, 3*chunk+7 ... while the server keeps
    only part of every non-final chunk: the stream rewinds to the server's offset each time,
    so the object is exactly what was written, and the buffer stays within one chunk plus the
    largest write."""
    sizes = [1, UNIT - 1, CHUNK - 1, CHUNK + 1, 3 * CHUNK + 7, 1, UNIT + 1, UNIT, CHUNK, 2]
    data = random.Random(1).randbytes(sum(sizes))
    proxy.plan(rate=1.0, kinds=["partial"], match=is_chunk_upload)
    out = _fast(GCSObjectStream(bucket, "awkward", client=proxied, chunk_size=CHUNK, timeout=5.0))
    with out:
        offset = 0
        for size in sizes:
            out.write(data[offset : offset + size])
            offset += size
            assert out._buffer.capacity <= CHUNK + max(sizes)
    assert any(event.kind == "partial" for event in proxy.events)
    _assert_object(client, bucket, "awkward", data, out)


def test_write_larger_than_a_chunk_right_after_a_partial_persist(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """A chunk is partly persisted (its rest stays at the buffer's front), then one write of
    4 chunks + 3 bytes lands on top of that rest and must grow the buffer without losing or
    doubling a byte."""
    rng = random.Random(2)
    head = rng.randbytes(CHUNK)
    big = rng.randbytes(4 * CHUNK + 3)
    proxy.script(["partial"], match=is_chunk_upload)
    out = _fast(GCSObjectStream(bucket, "big", client=proxied, chunk_size=CHUNK, timeout=5.0))
    with out:
        out.write(head)  # sent; the proxy forwards one unit of two
        assert out._buffer.confirmed == UNIT
        out.write(big)
    _assert_object(client, bucket, "big", head + big, out)


def test_caller_mutates_bytearray_and_memoryview_right_after_write(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """The caller reuses its bytearray (and views of it, and an array of ints) right after
    each write() returns, as a read loop into one buffer does, while chunks are partly
    persisted and resent: the stream must have copied every byte it was given."""
    rng = random.Random(3)
    proxy.plan(rate=0.5, kinds=["partial", "reset_after"], match=is_chunk_upload)
    out = _fast(GCSObjectStream(bucket, "mut", client=proxied, chunk_size=CHUNK, timeout=5.0))
    scratch = bytearray(CHUNK + UNIT // 3)
    expected = bytearray()
    with out:
        for round_ in range(8):
            piece = rng.randbytes(len(scratch))
            scratch[:] = piece
            if round_ % 3 == 0:
                out.write(scratch)
            elif round_ % 3 == 1:
                out.write(memoryview(scratch)[7:])
                piece = piece[7:]
            else:
                ints = array.array("I", piece[: len(piece) // 4 * 4])
                assert len(piece) // 4 * 4 == out.write(ints)
                piece = ints.tobytes()
                ints[:] = array.array("I", bytes(len(ints) * 4))
            expected += piece
            scratch[:] = b"\xee" * len(scratch)  # the caller reuses its buffer at once
    _assert_object(client, bucket, "mut", bytes(expected), out)


def test_flush_then_more_writes_after_partial_persists(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """flush() after odd-sized writes sends only whole units, the server keeps part of
    them, more writes follow: the tail and the rewound rest all arrive once, in order."""
    rng = random.Random(4)
    proxy.plan(rate=1.0, kinds=["partial"], match=is_chunk_upload)
    out = _fast(GCSObjectStream(bucket, "fl", client=proxied, chunk_size=4 * UNIT, timeout=5.0))
    expected = b""
    with out:
        for size in (3 * UNIT + 5, 1, 2 * UNIT - 1, 5 * UNIT + 11, 17, UNIT):
            piece = rng.randbytes(size)
            out.write(piece)
            expected += piece
            out.flush()
            assert out.buffered < 4 * UNIT + UNIT
    _assert_object(client, bucket, "fl", expected, out)


def test_many_streams_in_threads_one_dripping_none_cut_by_anothers_deadline(
    gcs: Any, proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Six streams share one client (one pool, one watchdog thread). One has a short
    timeout and meets a dripping answer (its request must be cut at its own deadline and
    recovered); the others, with long timeouts, stream chunks at the same time and must
    never be cut by its deadline. Every object is exact."""
    proxy.drip_seconds = 0.2
    rng = random.Random(5)
    datas = {f"s{i}": rng.randbytes(6 * CHUNK + i * 999) for i in range(6)}
    # s0's first chunk (recognised by its bytes): the other streams' requests pass.
    s0_head = datas["s0"][:64]
    proxy.script(["drip"], match=lambda req: is_chunk_upload(req) and req.body[:64] == s0_head)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(datas))

    def run(name: str) -> None:
        try:
            # The dripper goes through the proxy; the healthy ones too, but with a deadline
            # far away, sharing the proxied client's pool and the process's watchdog.
            timeout = 0.5 if name == "s0" else 30.0
            out = _fast(
                GCSObjectStream(bucket, name, client=proxied, chunk_size=CHUNK, timeout=timeout)
            )
            start.wait(10)
            with out:
                data = datas[name]
                for offset in range(0, len(data), 100_000):
                    out.write(data[offset : offset + 100_000])
            results[name] = out
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in datas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [] == errors
    assert ["drip"] == [event.kind for event in proxy.faults()]
    for name, data in datas.items():
        _assert_object(client, bucket, name, data, results[name])
    # The drip of ~300 bytes at 0.2 s would take a minute: the watchdog cut it.
    assert time.monotonic() - began < 20


def test_a_dripped_308_cut_by_the_watchdog_is_not_taken_as_an_answer(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """The server keeps a whole chunk, then drips its 308 a byte every 60 ms; the request
    deadline (0.3 s + 1 s of body time) cuts it after "HTTP/1.1 308 Res..." and before
    the Range header. What was read is not an answer: the stream must ask the session
    (which says it holds the chunk) and go on, not believe "308 without Range, nothing
    kept" and resend the chunk at offset 0 (which GCS refuses, or doubles)."""
    proxy.drip_seconds = 0.06
    proxy.script(["drip"], match=is_chunk_upload)
    data = random.Random(9).randbytes(3 * UNIT + 11)
    out = _fast(GCSObjectStream(bucket, "cut308", client=proxied, chunk_size=UNIT, timeout=0.3))
    with out:
        out.write(data)
    starts = [event.content_range for event in proxy.events if event.method == "PUT"]
    assert "bytes 0-262143/*" == starts[0]
    assert "bytes 0-262143/*" not in starts[1:]  # never resent: the server had it
    _assert_object(client, bucket, "cut308", data, out)


def test_timeout_expires_on_a_stalled_large_chunk_while_another_stream_is_healthy(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """A stream whose whole chunk is held by a stalling proxy hits its deadline (timeout
    plus body time) and recovers by asking the session; a direct, healthy stream in another
    thread finishes meanwhile, uncut. Both objects are exact."""
    proxy.stall_seconds = 6.0
    proxy.script(["stall_after"], match=is_chunk_upload)
    rng = random.Random(6)
    slow_data, fast_data = rng.randbytes(2 * CHUNK + 5), rng.randbytes(8 * CHUNK + 5)
    healthy: list[Any] = []

    def other() -> None:
        out = GCSObjectStream(bucket, "healthy", client=client, chunk_size=CHUNK, timeout=0.8)
        with out:
            for offset in range(0, len(fast_data), 50_000):
                out.write(fast_data[offset : offset + 50_000])
                time.sleep(0.01)
        healthy.append(out)

    slow = _fast(GCSObjectStream(bucket, "slow", client=proxied, chunk_size=CHUNK, timeout=0.3))
    thread = threading.Thread(target=other)
    began = time.monotonic()
    thread.start()
    with slow:
        slow.write(slow_data)
    elapsed = time.monotonic() - began
    thread.join(20)
    # 0.3 s + 2 units of body time, not the proxy's 6 s stall.
    assert proxy.faulting.is_set()
    assert elapsed < 5.0
    _assert_object(client, bucket, "slow", slow_data, slow)
    _assert_object(client, bucket, "healthy", fast_data, healthy[0])


def test_fork_in_the_middle_of_streaming_child_finishes_its_own_stream(
    client: Any, bucket: str
) -> None:
    """The parent has a stream with a chunk sent (pooled connection, running watchdog
    thread) and another thread streaming while it forks. The child, without the parent's
    threads, opens its own stream on the same client, ships several chunks and finishes
    within a short timeout; the parent finishes too. Both objects are exact."""
    rng = random.Random(7)
    parent_data, child_data, bg_data = (rng.randbytes(5 * CHUNK + 3) for _ in range(3))
    out = GCSObjectStream(bucket, "parent", client=client, chunk_size=CHUNK, timeout=5.0)
    out.write(parent_data[: 2 * CHUNK])
    stop = threading.Event()

    def background() -> None:
        with GCSObjectStream(bucket, "bg", client=client, chunk_size=CHUNK, timeout=5.0) as bg:
            for offset in range(0, len(bg_data), 30_000):
                bg.write(bg_data[offset : offset + 30_000])
        stop.set()

    thread = threading.Thread(target=background)
    thread.start()
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            with GCSObjectStream(
                bucket,
                "child",
                client=client,
                chunk_size=CHUNK,
                timeout=2.0,
                retry_deadline=5.0,
            ) as child:
                for offset in range(0, len(child_data), 70_000):
                    child.write(child_data[offset : offset + 70_000])
            code = 0
        finally:
            os._exit(code)
    out.write(parent_data[2 * CHUNK :])
    out.close()
    thread.join(20)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:  # a child stuck (a lock held by a parent thread)
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    assert 0 == os.waitstatus_to_exitcode(status)
    assert stop.is_set()
    _assert_object(client, bucket, "parent", parent_data, out)
    assert child_data == read_object(client, bucket, "child")
    assert bg_data == read_object(client, bucket, "bg")


def test_close_after_a_failed_write_raises_and_publishes_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """A write fails for good (the session is gone, 404): close() must not finalize a
    truncated object, write() keeps failing, and close() twice is quiet after the first."""
    from gcs_log_sink import SessionLostError

    proxy.script(["404_before"], match=is_chunk_upload)
    out = _fast(GCSObjectStream(bucket, "failed", client=proxied, chunk_size=CHUNK, timeout=2.0))
    out.write(b"a" * (CHUNK - 1))
    with pytest.raises(SessionLostError):
        out.write(b"b" * 10)
    with pytest.raises(SessionLostError):
        out.write(b"c")
    out.close()  # closes without finalizing: the failure was already raised
    out.close()
    assert out.closed
    assert [] == [blob.name for blob in client.list_blobs(bucket)]


def test_async_streams_in_concurrent_tasks_with_partial_persists(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Four AsyncGCSObjectStreams in concurrent tasks (their chunk sends run in worker
    threads, so their requests overlap on one client and one watchdog), the server keeping
    part of chunks at random, and tasks reusing a bytearray they write from: all exact."""
    proxy.plan(rate=0.4, kinds=["partial", "503_after", "reset_before"], match=is_chunk_upload)
    rng = random.Random(8)
    datas = {f"a{i}": rng.randbytes(4 * CHUNK + 77 * i) for i in range(4)}

    async def one(name: str) -> AsyncGCSObjectStream:
        stream = AsyncGCSObjectStream(bucket, name, client=proxied, chunk_size=CHUNK, timeout=5.0)
        async with stream as out:
            _fast(out._stream)  # type: ignore[arg-type]
            data = datas[name]
            scratch = bytearray()
            for offset in range(0, len(data), 90_001):
                scratch[:] = data[offset : offset + 90_001]
                await out.write(scratch)
                scratch[:] = b"\0" * len(scratch)
                await asyncio.sleep(0)
        return stream

    async def main() -> list[AsyncGCSObjectStream]:
        return await asyncio.gather(*(one(name) for name in datas))

    streams = asyncio.run(main())
    for name, out in zip(datas, streams, strict=True):
        _assert_object(client, bucket, name, datas[name], out)


def test_one_large_write_is_released_in_linear_time() -> None:
    """One write of many chunks is sent chunk by chunk, and after each, release_to moves
    the unconfirmed rest to the front of the buffer. If each move copies all of the rest,
    a write of N chunks costs N^2/2 chunk copies (CPU, the very thing issue 13 cuts): 4x
    the bytes must cost about 4x the time, not 16x."""

    def cost(size: int) -> float:
        buffer = ChunkBuffer(UNIT)
        buffer.append(bytes(size))
        began = time.perf_counter()
        while buffer.pending:
            buffer.release_to(buffer.confirmed + UNIT)
        return time.perf_counter() - began

    small = min(cost(8 * 1024 * 1024) for _ in range(3))
    large = cost(32 * 1024 * 1024)
    assert large < 8 * small + 0.05
