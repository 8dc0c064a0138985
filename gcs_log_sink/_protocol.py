"""The GCS resumable-upload protocol as plain values: requests out, answers in. No I/O.

Why not google-resumable-media's ``ResumableUpload``? Its state machine is the model for this
one, but three of its choices break the promises this library makes:

- it reads chunks from a caller's stream and, after a 308 whose ``Range`` is shorter than
  what was sent, refuses to go on ("Bytes stream is in unexpected state") instead of
  resending the rest;
- its ``recover()`` accepts only a 308, so a finalize whose answer was lost (GCS answers the
  status query with 200 and the object) cannot be told apart from a failure;
- its processing takes response objects, so its asyncio copy had to fork the core.

Here every function takes and returns plain values (status, headers, body bytes), the
bytes live in :mod:`._chunks`, and the caller (sync or async) only sends.
Protocol reference: https://cloud.google.com/storage/docs/performing-resumable-uploads
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from google.resumable_media import common as resumable_common

from ._chunks import crc32c_base64

__all__ = [
    "Finalized",
    "Persisted",
    "Request",
    "cancel_request",
    "chunk_request",
    "error_message",
    "initiate_request",
    "parse_session_url",
    "parse_upload_answer",
    "redact",
    "status_request",
]

_RANGE = re.compile(r"bytes=0-(?P<end>\d+)")
assert resumable_common.PERMANENT_REDIRECT == 308


@dataclass(frozen=True)
class Request:
    """One HTTP request to send, as plain values."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        # The URL of a session is a bearer capability: keep it out of reprs and tracebacks.
        return f"Request({self.method}, <{len(self.body)} bytes>)"


@dataclass(frozen=True)
class Persisted:
    """A 308: GCS holds the first ``offset`` bytes; the upload is not finalized."""

    offset: int


@dataclass(frozen=True)
class Finalized:
    """A 200/201: the object exists; ``resource`` is its JSON metadata."""

    resource: Mapping[str, Any]

    @property
    def generation(self) -> int:
        return int(self.resource["generation"])

    @property
    def size(self) -> int:
        return int(self.resource["size"])

    @property
    def crc32c(self) -> str | None:
        value = self.resource.get("crc32c")
        return str(value) if value else None


def initiate_request(
    api_endpoint: str,
    bucket: str,
    name: str,
    *,
    content_type: str,
    metadata: Mapping[str, str] | None,
    if_generation_match: int | None,
    user_agent: str,
) -> Request:
    """The POST that opens a resumable session for ``gs://bucket/name``."""
    query: dict[str, str] = {"uploadType": "resumable"}
    if if_generation_match is not None:
        query["ifGenerationMatch"] = str(if_generation_match)
    url = (
        f"{api_endpoint.rstrip('/')}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
        f"?{urlencode(query)}"
    )
    resource: dict[str, Any] = {"name": name, "contentType": content_type}
    if metadata:
        resource["metadata"] = dict(metadata)
    headers = {
        "Content-Type": "application/json; charset=UTF-8",
        "X-Upload-Content-Type": content_type,
        "User-Agent": user_agent,
    }
    return Request("POST", url, headers, json.dumps(resource).encode("utf-8"))


def parse_session_url(headers: Mapping[str, str]) -> str | None:
    """The session URL from a successful initiate answer (``Location``), if present."""
    for key, value in headers.items():
        if key.lower() == "location":
            return value
    return None


def chunk_request(
    session_url: str, offset: int, data: bytes, *, total: int | None, crc32c: int | None
) -> Request:
    """A PUT of ``data`` at ``offset``; with ``total`` it is the final request.

    The final request carries the CRC32C of the whole object (``X-Goog-Hash``), so GCS itself
    refuses to create an object whose bytes differ from what was written.
    """
    if data:
        last = offset + len(data) - 1
        content_range = f"bytes {offset}-{last}/{'*' if total is None else total}"
    else:
        content_range = f"bytes */{'*' if total is None else total}"
    headers = {"Content-Range": content_range}
    if total is not None and crc32c is not None:
        headers["X-Goog-Hash"] = f"crc32c={crc32c_base64(crc32c)}"
    return Request("PUT", session_url, headers, data)


def status_request(session_url: str) -> Request:
    """The empty PUT that asks how many bytes the session holds."""
    return Request("PUT", session_url, {"Content-Range": "bytes */*"})


def cancel_request(session_url: str) -> Request:
    """The DELETE that cancels a session (GCS answers 499)."""
    return Request("DELETE", session_url, {})


def parse_upload_answer(
    status: int, headers: Mapping[str, str], body: bytes
) -> Persisted | Finalized:
    """Interpret a 308 or a 200/201 from the session URL.

    A 308 without ``Range`` means GCS holds nothing yet. Other statuses are the caller's to
    classify (:func:`._retry.classify_status`); this raises ``ValueError`` on a malformed
    answer, which no retry can fix.
    """
    if status == 308:
        range_header = next((v for k, v in headers.items() if k.lower() == "range"), None)
        if range_header is None:
            return Persisted(0)
        match = _RANGE.fullmatch(range_header.strip())
        if match is None:
            raise ValueError(f"unexpected Range header {range_header!r} in a 308 answer")
        return Persisted(int(match["end"]) + 1)
    if status in (200, 201):
        try:
            resource = json.loads(body)
        except ValueError:
            raise ValueError("the finalize answer is not JSON object metadata") from None
        if not isinstance(resource, dict) or "generation" not in resource:
            raise ValueError("the finalize answer lacks the object's generation")
        return Finalized(resource)
    raise ValueError(f"status {status} is neither 308 nor 200/201")


def error_message(body: bytes) -> str:
    """GCS's own words from an error answer, short, for an exception message."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")
    text = " ".join(str(message).split())
    return redact(text[:200])


_SESSION_ID = re.compile(r"(upload_id=)[^&\s\"'<>]+")


def redact(text: str) -> str:
    """``text`` with any resumable session id replaced, so it can be logged or raised."""
    return _SESSION_ID.sub(r"\1<redacted>", text)
