"""AsyncGCSObjectStream and the FastAPI example, against the local GCS server."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import google_crc32c
import httpx
import psutil
import pytest
import uvicorn
from helpers import crc32c_b64, read_object

from gcs_log_sink import AsyncGCSObjectStream, ConfigurationError
from gcs_log_sink._chunks import crc32c_base64
from gcs_log_sink._transport import Transport
from gcs_log_sink.testing import free_port

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from fastapi_upload import create_app

UNIT = 256 * 1024


def test_async_stream_round_trip_never_does_io_on_the_loop_thread(
    gcs: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every HTTP request runs off the event loop's thread; the object arrives intact."""
    client = gcs.client()
    request_threads: set[int] = set()
    send = Transport.send

    def recording_send(self: Transport, *args: Any, **kwargs: Any) -> Any:
        request_threads.add(threading.get_ident())
        return send(self, *args, **kwargs)

    monkeypatch.setattr(Transport, "send", recording_send)
    data = os.urandom(10 * UNIT + 123)

    async def run() -> tuple[int, AsyncGCSObjectStream]:
        async with AsyncGCSObjectStream(bucket, "async.bin", client=client, chunk_size=UNIT) as out:
            for offset in range(0, len(data), 50_000):
                await out.write(data[offset : offset + 50_000])
            await out.flush()
        return threading.get_ident(), out

    loop_thread, out = asyncio.run(run())
    monkeypatch.undo()  # stop recording: the reads below run on this thread
    assert data == read_object(client, bucket, "async.bin")
    assert crc32c_b64(data) == out.crc32c
    assert len(data) == out.size
    assert request_threads
    assert loop_thread not in request_threads


def test_async_errors_are_clear(client: Any, bucket: str) -> None:
    """Bad arguments fail at construction; use before open and after close say so."""
    with pytest.raises(ConfigurationError, match="multiple of 256 KiB"):
        AsyncGCSObjectStream(bucket, "x", client=client, chunk_size=100)

    async def run() -> None:
        out = AsyncGCSObjectStream(bucket, "x", client=client)
        with pytest.raises(ConfigurationError, match="not open"):
            await out.write(b"a")
        await out.open()
        await out.write(b"abc")
        with pytest.raises(TypeError, match="not str"):
            await out.write("abc")  # type: ignore[arg-type]
        await out.close()
        await out.close()
        with pytest.raises(ValueError, match="closed"):
            await out.write(b"more")

    asyncio.run(run())
    assert b"abc" == read_object(client, bucket, "x")


def test_async_abort_creates_nothing(client: Any, bucket: str) -> None:
    """abort() cancels the session."""

    async def run() -> None:
        async with AsyncGCSObjectStream(bucket, "gone", client=client, chunk_size=UNIT) as out:
            await out.write(os.urandom(2 * UNIT))
            await out.abort()

    asyncio.run(run())
    assert not client.bucket(bucket).blob("gone").exists()


@pytest.fixture
def app_url(client: Any, bucket: str) -> Iterator[str]:
    """The FastAPI example app, served by uvicorn on loopback, uploading into ``bucket``."""
    app = create_app(bucket, client=client, chunk_size=4 * UNIT)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_fastapi_streams_a_50_mib_body_with_bounded_memory(
    client: Any, bucket: str, app_url: str
) -> None:
    """A 50 MiB PUT body lands byte for byte while the process grows far less than 50 MiB."""
    piece = os.urandom(64 * 1024)
    count = 50 * 1024 * 1024 // len(piece)
    process = psutil.Process()
    peak = baseline = process.memory_info().rss

    def body() -> Iterator[bytes]:
        nonlocal peak
        for _ in range(count):
            peak = max(peak, process.memory_info().rss)
            yield piece

    with httpx.Client(timeout=120) as http:
        answer = http.put(f"{app_url}/objects/uploads/body.bin", content=body())
    assert 200 == answer.status_code, answer.text
    crc = 0
    for _ in range(count):
        crc = google_crc32c.extend(crc, piece)
    assert {
        "name": "uploads/body.bin",
        "size": count * len(piece),
        "crc32c": crc32c_base64(crc),
    } == {key: answer.json()[key] for key in ("name", "size", "crc32c")}
    assert piece * count == read_object(client, bucket, "uploads/body.bin")
    # An endpoint that buffered the body would grow by 50 MiB or more.
    assert peak - baseline < 40 * 1024 * 1024


def test_fastapi_maps_errors_to_statuses(client: Any, bucket: str, app_url: str) -> None:
    """A bad object name is a 400; an existing object is a 409, and is left untouched."""
    with httpx.Client(timeout=30) as http:
        assert 200 == http.put(f"{app_url}/objects/kept", content=b"first").status_code
        conflict = http.put(f"{app_url}/objects/kept", content=b"second")
        bad = http.put(f"{app_url}/objects/a%01b", content=b"x")
    assert 409 == conflict.status_code
    assert 400 == bad.status_code
    assert "control character" in bad.json()["detail"]
    assert b"first" == read_object(client, bucket, "kept")


def test_an_async_stream_dropped_unfinished_is_aborted(gcs: Any, bucket: str) -> None:
    """Opened, written, never closed, garbage-collected: no (truncated) object appears."""
    import gc

    client = gcs.client()

    async def run() -> None:
        out = await AsyncGCSObjectStream(
            bucket, "dropped.bin", client=client, chunk_size=UNIT
        ).open()
        await out.write(os.urandom(UNIT + 10))

    asyncio.run(run())
    gc.collect()
    assert not client.bucket(bucket).blob("dropped.bin").exists()
