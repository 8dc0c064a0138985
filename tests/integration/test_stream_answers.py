"""GCSObjectStream against GCS as it really answers: cut-short, non-JSON, sparse and dripping.

Each case comes from a server other than the local one, reproduced by the fault proxy next
to its assert. Every test reads the object back from the server directly (not through the
proxy) and compares it byte for byte.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import replace
from typing import Any

import pytest
from faultproxy import FaultProxy, ProxiedRequest, is_final_request, is_initiate, is_status_query
from helpers import crc32c_b64, read_object

from gcs_log_sink import GCSObjectStream, RetryDeadlineExceededError, UploadError

UNIT = 256 * 1024


def _stream(proxied: Any, bucket: str, name: str, **options: Any) -> GCSObjectStream:
    """A stream through the proxy, with short waits between tries (the schedule is _retry's)."""
    settings = {"chunk_size": UNIT, "timeout": 2.0, "retry_deadline": 10.0} | options
    out = GCSObjectStream(bucket, name, client=proxied, **settings)
    out._policy = replace(out._policy, initial_delay=0.01, max_delay=0.05)
    return out


def _is_final_or_status(req: ProxiedRequest) -> bool:
    return is_final_request(req) or is_status_query(req)


def _is_object_get(req: ProxiedRequest) -> bool:
    return req.method == "GET" and "/storage/v1/b/" in req.path and "/o/" in req.path


def _after_initiate(req: ProxiedRequest) -> bool:
    return not is_initiate(req)


@pytest.mark.parametrize(("kind", "cut"), [("cut_body", 1), ("cut_body", 40), ("not_json", 0)])
def test_final_answer_cut_short_or_not_json_is_settled_by_asking(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, kind: str, cut: int
) -> None:
    """GCS finalizes and answers 200, but the body is cut or not JSON: close() asks, succeeds."""
    data = os.urandom(UNIT + 1000)
    out = _stream(proxied, bucket, "cut.log")
    proxy.cut_bytes = cut
    proxy.script([kind], match=is_final_request)
    out.write(data)
    out.close()
    assert [kind] == [event.kind for event in proxy.faults()]
    assert "PUT" == proxy.events[-1].method  # the status query that settled it
    assert "bytes */*" == proxy.events[-1].content_range
    assert data == read_object(client, bucket, "cut.log")
    assert (len(data), crc32c_b64(data)) == (out.size, out.crc32c)
    assert out.generation is not None


def test_final_answer_and_status_query_both_unreadable_use_the_object_metadata(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Both answers unreadable: a metadata GET says what the object holds, and it is verified."""
    data = os.urandom(3000)
    out = _stream(proxied, bucket, "both.log")
    proxy.script(["not_json", "cut_body"], match=_is_final_or_status)
    out.write(data)
    out.close()
    assert ["not_json", "cut_body"] == [event.kind for event in proxy.faults()]
    assert _is_object_get(
        ProxiedRequest(proxy.events[-1].method, proxy.events[-1].path, "", (), b"")
    )
    assert data == read_object(client, bucket, "both.log")
    assert (len(data), crc32c_b64(data)) == (out.size, out.crc32c)


def test_nothing_readable_anywhere_is_a_clear_upload_error(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Every answer unreadable: an UploadError within retry_deadline, never a KeyError."""
    out = _stream(proxied, bucket, "never.log", retry_deadline=1.0)
    proxy.plan(rate=1.0, kinds=["not_json"], match=_after_initiate)
    out.write(b"some bytes")
    started = time.monotonic()
    with pytest.raises(RetryDeadlineExceededError, match="retry_deadline") as caught:
        out.close()
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, UploadError)
    assert "upload_id" not in str(caught.value)
    proxy.reset()
    assert b"some bytes" == read_object(client, bucket, "never.log")  # GCS has it all


@pytest.mark.parametrize("everywhere", [False, True])
def test_empty_object_answered_without_size(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, everywhere: bool
) -> None:
    """A 0-byte object whose answers lack ``size`` (proto3 drops zeros) closes cleanly."""
    out = _stream(proxied, bucket, "empty.log")
    if everywhere:
        proxy.plan(rate=1.0, kinds=["no_size"], match=_after_initiate)
    else:
        proxy.script(["no_size"], match=is_final_request)
    out.close()
    assert ["no_size"] == list({event.kind for event in proxy.faults()})
    assert b"" == read_object(client, bucket, "empty.log")
    assert (0, crc32c_b64(b"")) == (out.size, out.crc32c)
    assert out.generation is not None


def test_object_answered_without_size_asks_the_server(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """A non-empty object's final answer without ``size``: the status query supplies it."""
    data = os.urandom(5000)
    out = _stream(proxied, bucket, "sizeless.log")
    proxy.script(["no_size"], match=is_final_request)
    out.write(data)
    out.close()
    assert data == read_object(client, bucket, "sizeless.log")
    assert (len(data), crc32c_b64(data)) == (out.size, out.crc32c)


def test_size_never_given_is_a_clear_upload_error(
    proxy: FaultProxy, proxied: Any, bucket: str
) -> None:
    """No answer ever names the size of a non-empty object: UploadError saying so, at once."""
    out = _stream(proxied, bucket, "nosize.log")
    proxy.plan(rate=1.0, kinds=["no_size"], match=_after_initiate)
    out.write(b"x" * 10)
    with pytest.raises(UploadError, match="no size") as caught:
        out.close()
    assert type(caught.value) is UploadError
    assert out.closed


def test_dripping_final_answer_is_cut_at_the_deadline_and_settled(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """The final answer drips a byte a second: the request ends at ``timeout``, then a status
    query settles it; close() takes about ``timeout``, not the drip's minutes."""
    data = os.urandom(UNIT + 10)
    proxy.drip_seconds = 0.5  # under the read timeout, so only wall time can end it
    out = _stream(proxied, bucket, "drip.log", timeout=1.0)
    out.write(data)
    proxy.script(["drip"], match=is_final_request)
    started = time.monotonic()
    out.close()
    elapsed = time.monotonic() - started
    assert elapsed < 4, elapsed
    assert ["drip"] == [event.kind for event in proxy.faults()]
    assert data == read_object(client, bucket, "drip.log")
    assert (len(data), crc32c_b64(data)) == (out.size, out.crc32c)


def test_a_server_that_always_drips_is_given_up_on_in_bounded_time(
    proxy: FaultProxy, proxied: Any, bucket: str
) -> None:
    """Every answer drips: close() with timeout=1, retry_deadline=2 fails within ~timeout +
    retry_deadline (the issue saw > 60 s with timeout=3, retry_deadline=5)."""
    proxy.drip_seconds = 0.5
    out = _stream(proxied, bucket, "stuck.log", timeout=1.0, retry_deadline=2.0)
    out.write(b"x" * 100)
    proxy.plan(rate=1.0, kinds=["drip"], match=_after_initiate)
    started = time.monotonic()
    with pytest.raises(RetryDeadlineExceededError):
        out.close()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 2.0 + 1.5, elapsed


def test_a_dripping_initiate_is_bounded_too(proxy: FaultProxy, proxied: Any, bucket: str) -> None:
    """The constructor's session POST against a dripping server ends within the deadlines."""
    proxy.drip_seconds = 0.5
    proxy.plan(rate=1.0, kinds=["drip"])
    started = time.monotonic()
    with pytest.raises(RetryDeadlineExceededError):
        _stream(proxied, bucket, "slow-open.log", timeout=1.0, retry_deadline=1.0)
    assert time.monotonic() - started < 1.0 + 1.0 + 1.5


def test_a_stream_dropped_unfinished_is_aborted_not_finalized(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Garbage-collected without close(): the session is cancelled; no truncated object."""
    out = _stream(proxied, bucket, "dropped.log")
    out.write(os.urandom(UNIT + 77))  # one unit sent, a tail buffered
    del out
    gc.collect()
    assert "DELETE" == proxy.events[-1].method
    assert not client.bucket(bucket).blob("dropped.log").exists()


def test_with_block_and_close_still_finalize_after_the_gc_change(
    proxied: Any, client: Any, bucket: str
) -> None:
    """Only a dropped stream aborts: ``with`` and close() publish what was written."""
    with _stream(proxied, bucket, "with.log") as out:
        out.write(b"with\n")
    explicit = _stream(proxied, bucket, "close.log")
    explicit.write(b"close\n")
    explicit.close()
    del out, explicit
    gc.collect()
    assert b"with\n" == read_object(client, bucket, "with.log")
    assert b"close\n" == read_object(client, bucket, "close.log")


@pytest.mark.parametrize("kind", ["not_json", "cut_body", "no_size"])
def test_resuming_a_finalized_session_whose_answer_is_unreadable(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, kind: str
) -> None:
    """Recovery resumes a session that finalized before the crash; the status query's 200 is
    unreadable or sizeless: the object's metadata gives the size recovery compares."""
    data = os.urandom(4000)
    first = _stream(proxied, bucket, "resumed.log")
    first.write(data)
    first.close()
    proxy.script([kind], match=is_status_query)
    again = GCSObjectStream(
        bucket,
        "resumed.log",
        client=proxied,
        timeout=2.0,
        _resume=(first._session_url, lambda offset: 0),
    )
    again.close()
    assert [kind] == [event.kind for event in proxy.faults()]
    assert _is_object_get(
        ProxiedRequest(proxy.events[-1].method, proxy.events[-1].path, "", (), b"")
    )
    assert (len(data), len(data)) == (again.resumed_at, again.size)
    assert data == read_object(client, bucket, "resumed.log")
