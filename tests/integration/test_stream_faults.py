"""GCSObjectStream through the fault proxy: every fault recovered exactly, or refused clearly.

Each test writes its faults next to its asserts (as urllib3's socket-level tests do) and
reads the object back from the server directly, not through the proxy.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest
from faultproxy import FAULT_KINDS, FaultProxy, is_chunk_upload, is_session_request
from helpers import crc32c_b64, random_writes, read_object

from gcs_log_sink import (
    GCSObjectStream,
    PermissionDeniedError,
    RetryDeadlineExceededError,
    SessionLostError,
    UploadError,
)

UNIT = 256 * 1024
CHUNK = 4 * UNIT
# Client timeout under the proxy's stall, so a stall is met as a timeout.
FAST = {"timeout": 1.0, "retry_deadline": 60.0}


def _with_fast_retries(stream: GCSObjectStream) -> GCSObjectStream:
    """Make backoff waits short: the schedule is what _retry tests, not this."""
    from dataclasses import replace

    stream._policy = replace(stream._policy, initial_delay=0.01, max_delay=0.05)
    return stream


def _fault_kinds(proxy: FaultProxy, expected: int) -> list[str | None]:
    """The faults applied; a stall is recorded only when it ends, so wait for that."""
    deadline = time.monotonic() + proxy.stall_seconds + 2
    while len(proxy.faults()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return [event.kind for event in proxy.faults()]


def _upload(proxied: Any, bucket: str, name: str, data: bytes, write_size: int) -> GCSObjectStream:
    out = _with_fast_retries(
        GCSObjectStream(bucket, name, client=proxied, chunk_size=CHUNK, **FAST)
    )
    with out:
        for offset in range(0, len(data), write_size):
            out.write(data[offset : offset + write_size])
    return out


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_on_a_middle_chunk_is_recovered_exactly(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, kind: str
) -> None:
    """One fault on the second chunk: the object is still byte for byte what was written."""
    data = random.Random(kind).randbytes(3 * CHUNK + 12345)
    proxy.script([None, kind], match=is_chunk_upload)
    out = _upload(proxied, bucket, "obj", data, 64 * 1024)
    assert [kind] == _fault_kinds(proxy, 1)
    assert data == read_object(client, bucket, "obj")
    assert crc32c_b64(data) == out.crc32c


@pytest.mark.parametrize("kind", ["503_after", "reset_after", "503_before", "stall"])
def test_fault_on_the_final_request_is_recovered(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, kind: str
) -> None:
    """A lost finalize answer: the status query finds the object finalized, nothing resent."""
    data = os.urandom(CHUNK + 777)
    proxy.script([None, kind], match=is_chunk_upload)  # chunk 1 passes, the final one faults
    out = _upload(proxied, bucket, "final", data, CHUNK)
    assert [kind] == _fault_kinds(proxy, 1)
    assert data == read_object(client, bucket, "final")
    assert len(data) == out.size


def test_faults_on_initiate_and_status_queries_are_retried(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Faults on the session's opening and on the recovery queries themselves."""
    data = os.urandom(2 * CHUNK + 5)
    proxy.script(["503_before", "reset_after", None, "reset_after", "503_after", "429_before"])
    out = _upload(proxied, bucket, "queries", data, 100_000)
    expected = ["503_before", "reset_after", "reset_after", "503_after", "429_before"]
    assert expected == _fault_kinds(proxy, 5)
    assert data == read_object(client, bucket, "queries")
    assert crc32c_b64(data) == out.crc32c


def test_50_mib_with_one_request_in_five_faulted(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """50 MiB in random writes, 20% of session requests faulted: byte-exact, CRC32C checked."""
    rng = random.Random(5)
    data = rng.randbytes(50 * 1024 * 1024)
    proxy.plan(rate=0.2, kinds=FAULT_KINDS, match=is_session_request)
    out = _with_fast_retries(
        GCSObjectStream(bucket, "fifty", client=proxied, chunk_size=CHUNK, **FAST)
    )
    with out:
        for piece in random_writes(data, rng, 300_000):
            out.write(piece)
    faults = proxy.faults()
    assert len(faults) >= 10, faults
    assert {"partial", "reset_after", "stall"} <= {event.kind for event in faults}
    assert crc32c_b64(data) == out.crc32c
    assert data == read_object(client, bucket, "fifty")
    assert all("upload_id" not in repr(event) for event in proxy.events)


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("404_before", SessionLostError, 404),
        ("410_before", SessionLostError, 410),
        ("403_before", PermissionDeniedError, 403),
        # google-auth answers a 401 by refreshing the credentials; anonymous ones cannot be.
        ("401_before", PermissionDeniedError, None),
        ("400_before", UploadError, 400),
    ],
)
def test_refusals_raise_typed_errors_without_retrying(
    proxy: FaultProxy,
    proxied: Any,
    bucket: str,
    kind: str,
    error: type[UploadError],
    status: int | None,
) -> None:
    """A lost session or a refusal: one request, a typed error naming the object, no URL."""
    out = GCSObjectStream(bucket, "refused", client=proxied, chunk_size=UNIT, **FAST)
    proxy.script([kind], match=is_chunk_upload)
    with pytest.raises(error) as caught:
        out.write(os.urandom(UNIT))
    assert 1 == len([event for event in proxy.events if event.content_range])
    assert status == caught.value.status
    assert (bucket, "refused") == (caught.value.bucket, caught.value.name)
    assert f"gs://{bucket}/refused" in str(caught.value)
    assert "upload_id" not in str(caught.value)
    assert "upload_id" not in repr(caught.value.__cause__ or "")
    with pytest.raises(error):
        out.write(b"again")  # the stream stays failed rather than guessing
    out.close()  # and closing it neither raises nor sends
    assert out.closed


def test_permission_denied_when_opening_names_the_object(
    proxy: FaultProxy, proxied: Any, bucket: str
) -> None:
    """A 403 on initiate is a PermissionDeniedError at construction."""
    proxy.script(["403_before"])
    with pytest.raises(PermissionDeniedError, match=rf"gs://{bucket}/denied.*403"):
        GCSObjectStream(bucket, "denied", client=proxied, **FAST)


def test_outage_past_retry_deadline_is_a_clear_error(
    proxy: FaultProxy, proxied: Any, bucket: str
) -> None:
    """GCS unreachable for longer than retry_deadline: RetryDeadlineExceededError, no hang."""
    out = GCSObjectStream(
        bucket, "outage", client=proxied, chunk_size=UNIT, timeout=0.5, retry_deadline=1.0
    )
    proxy.go_down()
    with pytest.raises(RetryDeadlineExceededError, match="retry_deadline") as caught:
        out.write(os.urandom(UNIT))
    assert "upload_id" not in str(caught.value)
    out.close()


def test_outage_shorter_than_retry_deadline_loses_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """GCS away for a while, then back: the upload resumes where the server stopped."""
    data = os.urandom(4 * CHUNK)
    out = _with_fast_retries(
        GCSObjectStream(bucket, "comeback", client=proxied, chunk_size=CHUNK, **FAST)
    )
    out.write(data[:CHUNK])
    proxy.go_down()
    threading.Timer(1.5, proxy.come_up).start()
    out.write(data[CHUNK:])
    out.close()
    assert data == read_object(client, bucket, "comeback")
