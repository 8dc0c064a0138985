"""The resumable protocol as plain values: requests built, answers read."""

from __future__ import annotations

import json

import pytest

from gcs_log_sink._protocol import (
    Finalized,
    Persisted,
    chunk_request,
    error_message,
    initiate_request,
    object_request,
    parse_object_resource,
    parse_session_url,
    parse_upload_answer,
    redact,
    status_request,
)

SESSION = "https://storage.example/upload/storage/v1/b/logs/o?uploadType=resumable&upload_id=SECRET"


def test_initiate_request_carries_name_type_metadata_and_precondition() -> None:
    """The POST names the object in its JSON body and asks for the precondition."""
    request = initiate_request(
        "http://127.0.0.1:1/",
        "logs",
        "a/b c.log",
        content_type="text/plain",
        metadata={"k": "v"},
        if_generation_match=0,
        user_agent="ua",
    )
    assert "POST" == request.method
    assert (
        "http://127.0.0.1:1/upload/storage/v1/b/logs/o?uploadType=resumable&ifGenerationMatch=0"
        == request.url
    )
    assert {"name": "a/b c.log", "contentType": "text/plain", "metadata": {"k": "v"}} == json.loads(
        request.body
    )
    assert "text/plain" == request.headers["X-Upload-Content-Type"]


def test_chunk_requests_say_where_the_bytes_go() -> None:
    """Non-final chunks have an open total; the final one names it and the CRC32C."""
    assert (
        "bytes 0-3/*"
        == chunk_request(SESSION, 0, b"abcd", total=None, crc32c=1).headers["Content-Range"]
    )
    final = chunk_request(SESSION, 4, b"ef", total=6, crc32c=0)
    assert "bytes 4-5/6" == final.headers["Content-Range"]
    assert "crc32c=AAAAAA==" == final.headers["X-Goog-Hash"]
    assert "bytes */6" == chunk_request(SESSION, 6, b"", total=6, crc32c=0).headers["Content-Range"]
    assert "bytes */*" == status_request(SESSION).headers["Content-Range"]


def test_308_range_is_the_persisted_prefix() -> None:
    """Range: bytes=0-N means N+1 bytes held; no Range means none."""
    assert Persisted(1024) == parse_upload_answer(308, {"range": "bytes=0-1023"}, b"")
    assert Persisted(0) == parse_upload_answer(308, {}, b"")


def test_200_is_the_object() -> None:
    """A 200 carries the object's metadata: generation, size, CRC32C."""
    body = json.dumps({"generation": "17", "size": "3", "crc32c": "abc="}).encode()
    outcome = parse_upload_answer(200, {}, body)
    assert isinstance(outcome, Finalized)
    assert (17, 3, "abc=") == (outcome.generation, outcome.size, outcome.crc32c)


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [(308, {"Range": "bytes 0-5"}, b""), (200, {}, b"not json"), (200, {}, b"{}"), (500, {}, b"")],
)
def test_malformed_answers_are_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    """An answer that cannot be read is a ValueError, not a guess."""
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by case
        parse_upload_answer(status, headers, body)


def test_session_url_is_read_from_location_and_never_shown() -> None:
    """The session URL comes from Location; reprs and messages never show its id."""
    assert SESSION == parse_session_url({"Location": SESSION})
    assert "SECRET" not in repr(status_request(SESSION))
    assert "upload_id=<redacted>" in redact(f"failed: {SESSION}")
    body = json.dumps({"error": {"message": f"bad {SESSION}"}}).encode()
    assert "SECRET" not in error_message(body)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"name": "o", "generation": "7", "size": "3", "crc32c": "abc="}, (7, 3, "abc=")),
        ({"name": "o", "generation": 7, "size": 3}, (7, 3, None)),  # numbers, not strings
        ({"name": "o", "generation": "7"}, (7, None, None)),  # a 0-byte object, proto3-style
        ({"name": "o"}, (None, None, None)),
        ({"kind": "storage#object", "size": "0", "crc32c": ""}, (None, 0, None)),
    ],
)
def test_object_metadata_is_read_with_any_field_absent(
    resource: dict[str, object], expected: tuple[object, ...]
) -> None:
    """size, generation, crc32c and md5Hash may be absent, strings or numbers."""
    info = parse_object_resource(json.dumps(resource).encode())
    assert expected == (info.generation, info.size, info.crc32c)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"name": "o", "si',  # cut short
        b"<html>OK</html>",
        b"[1, 2]",
        b'{"error": {"code": 500}}',  # JSON, but not an object resource
        b'{"name": "o", "size": "12x"}',
        b'{"name": "o", "size": -1}',
        b'{"name": "o", "size": true}',
        b'{"name": "o", "generation": [1]}',
        b'{"name": "o", "crc32c": 5}',
        b"\xff\xfe",
    ],
)
def test_unreadable_object_metadata_is_a_value_error_never_key_or_type(body: bytes) -> None:
    """Whatever the body, the only exception is ValueError (the caller then asks GCS)."""
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by case
        parse_object_resource(body)


def test_what_verification_needs() -> None:
    """An empty object needs no field; a non-empty one needs size and CRC32C."""
    sparse = Finalized(generation=1, size=None, crc32c=None)
    assert sparse.missing_for(0) is None
    assert "no size" == sparse.missing_for(5)
    assert "no CRC32C" == Finalized(generation=1, size=5, crc32c=None).missing_for(5)
    assert Finalized(generation=None, size=5, crc32c="x").missing_for(5) is None


def test_object_request_names_the_generation() -> None:
    """The metadata GET escapes the name and asks for the generation this upload made."""
    request = object_request("http://h:1/", "b", "a/b c", generation=9, user_agent="ua")
    assert ("GET", "http://h:1/storage/v1/b/b/o/a%2Fb%20c?ifGenerationMatch=9") == (
        request.method,
        request.url,
    )
    assert (
        "http://h:1/storage/v1/b/b/o/x"
        == object_request("http://h:1", "b", "x", generation=None, user_agent="ua").url
    )
