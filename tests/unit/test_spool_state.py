"""Untrusted spool input: state files, saved session URLs, unfinished gzip streams. No server."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import pytest

from gcs_log_sink._gzipend import GzipEnd
from gcs_log_sink.recovery import session_url_allowed
from gcs_log_sink.spool import validate_state

ENDPOINT = "https://storage.googleapis.com"
GOOD_URL = (
    "https://storage.googleapis.com/upload/storage/v1/b/my-logs/o"
    "?uploadType=resumable&upload_id=ABC123"
)


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ([1, 2], "JSON list"),
        ("x", "JSON str"),
        ({"bucket": "my-logs"}, "'name' is missing"),
        ({"bucket": 3, "name": "a"}, "'bucket' is missing or not a string"),
        ({"bucket": "my-logs", "name": "a\nb"}, "control character"),
        ({"bucket": "my-logs", "name": "../etc/passwd"}, "'..'"),
        ({"bucket": "Not A Bucket", "name": "a"}, "bucket name"),
        ({"bucket": "my-logs", "name": "a", "session_url": 5}, "'session_url'"),
        ({"bucket": "my-logs", "name": "a", "sealed": "yes"}, "'sealed'"),
        ({"bucket": "my-logs", "name": "a", "records": -1}, "'records'"),
        ({"bucket": "my-logs", "name": "a", "compression": "zstd"}, "'compression'"),
    ],
)
def test_a_state_file_that_is_not_ours_is_refused_with_a_reason(state: Any, why: str) -> None:
    """Every malformed state names what is wrong (recovery reports it, never a traceback)."""
    problem = validate_state(state)
    assert problem is not None
    assert why in problem


def test_a_state_file_as_written_is_accepted() -> None:
    """What Spool.create and the uploader write passes."""
    state = {
        "bucket": "my-logs",
        "name": "2026/01/02/x.log.gz",
        "sealed": True,
        "records": 12,
        "session_url": GOOD_URL,
        "compression": "gzip",
    }
    assert None is validate_state(state)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (GOOD_URL, True),
        (GOOD_URL.replace("my-logs", "other-bucket"), False),
        (GOOD_URL.replace("https://", "http://"), False),
        (GOOD_URL.replace("googleapis.com/", "googleapis.com:8443/"), False),
        (GOOD_URL.replace("storage.googleapis.com", "storage.googleapis.com.evil.example"), False),
        (GOOD_URL.replace("https://", "https://user:pw@"), False),
        (GOOD_URL.replace("/upload/storage/v1", "/x/upload/storage/v1"), False),
        (GOOD_URL.replace("upload_id=ABC123", "upload_ids=1"), False),
        (GOOD_URL + "#frag", False),
        ("https://storage.googleapis.com:99999/upload/storage/v1/b/my-logs/o?upload_id=1", False),
        ("file:///etc/passwd", False),
        ("", False),
    ],
)
def test_a_session_url_is_used_only_on_the_clients_own_endpoint(url: str, allowed: bool) -> None:
    """Scheme, host, port, path and upload_id must match: the token goes nowhere else."""
    assert allowed == session_url_allowed(url, ENDPOINT, "my-logs")


def test_an_emulator_endpoint_with_its_port_is_matched() -> None:
    """http://127.0.0.1:PORT (STORAGE_EMULATOR_HOST) is an endpoint like any other."""
    url = "http://127.0.0.1:9023/upload/storage/v1/b/b-x/o?uploadType=resumable&upload_id=z"
    assert session_url_allowed(url, "http://127.0.0.1:9023", "b-x")
    assert not session_url_allowed(url, "http://127.0.0.1:9024", "b-x")


def frames_of(lines: list[bytes], flush_every: int) -> list[tuple[bytes, int]]:
    """What a gzip GCSHandler spools: compressed records, a sync flush every few (no finish)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    frames = []
    for i, line in enumerate(lines, 1):
        frames.append((compressor.compress(line), 1))
        if i % flush_every == 0:
            frames.append((compressor.flush(zlib.Z_SYNC_FLUSH), 0))
    return frames


def ended(frames: list[tuple[bytes, int]]) -> tuple[GzipEnd, bytes]:
    """Feed ``frames``; the object recovery would ship (prefix through the cut, then tail)."""
    check = GzipEnd()
    position = 0
    for payload, records in frames:
        position += len(payload)
        check.feed(payload, records, position)
    data = b"".join(payload for payload, _ in frames)
    assert check.cut is not None
    return check, data[: check.cut.size] + check.cut.tail


def test_an_unfinished_gzip_stream_ends_at_its_last_flush_and_decompresses() -> None:
    """No Z_FINISH (the writer died): cut at the last sync flush, empty block + trailer."""
    lines = [f"rec {i:06d} {'r' * 60}\n".encode() for i in range(1000)]
    check, data = ended(frames_of(lines, 300))
    assert b"".join(lines[:900]) == gzip.decompress(data)
    assert check.cut is not None
    assert (900, 900) == (check.cut.records, check.cut.lines)


def test_a_finished_gzip_stream_is_shipped_as_it_is() -> None:
    """Z_FINISH written: nothing cut, nothing appended."""
    lines = [f"line {i}\n".encode() for i in range(50)]
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    frames = [(compressor.compress(line), 1) for line in lines]
    frames.append((compressor.flush(zlib.Z_FINISH), 0))
    check, data = ended(frames)
    assert check.complete
    assert check.cut is not None
    assert b"" == check.cut.tail
    assert b"".join(payload for payload, _ in frames) == data


def test_garbage_after_a_flush_point_is_left_out() -> None:
    """Bytes that do not inflate end the usable stream: the flush point before them stands."""
    lines = [f"line {i}\n".encode() for i in range(20)]
    frames = frames_of(lines, 10)
    frames.append((b"\xff" * 40, 3))
    check, data = ended(frames)
    assert check.broken
    assert b"".join(lines) == gzip.decompress(data)
