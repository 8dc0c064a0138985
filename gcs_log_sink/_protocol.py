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
from ._secrets import redact

__all__ = [
    "Finalized",
    "Persisted",
    "Request",
    "cancel_request",
    "chunk_request",
    "error_message",
    "initiate_request",
    "object_request",
    "parse_object_resource",
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
    # A chunk is a read-only view of the writer's buffer (no copy per chunk); the transport
    # sends it as it is. Empty bodies are always ``b""``.
    body: bytes | memoryview = b""

    def __repr__(self) -> str:
        # The URL of a session is a bearer capability: keep it out of reprs and tracebacks.
        return f"Request({self.method}, <{len(self.body)} bytes>)"


@dataclass(frozen=True)
class Persisted:
    """A 308: GCS holds the first ``offset`` bytes; the upload is not finalized."""

    offset: int


@dataclass(frozen=True)
class Finalized:
    """A 200/201: the object exists, as :func:`parse_object_resource` read it.

    Every field GCS may leave out is optional. Servers that write the object resource as
    proto3 JSON drop zero and empty values, so a 0-byte object can come without ``size``
    (and even without ``crc32c``); what the writer cannot do without is its caller's call
    (:meth:`missing_for`).
    """

    generation: int | None
    size: int | None
    crc32c: str | None
    md5_hash: str | None = None
    resource: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def missing_for(self, written: int) -> str | None:
        """What this answer lacks to verify an object of ``written`` bytes, or ``None``.

        An empty object needs nothing: its size is 0 and it has no byte to corrupt.
        """
        if written == 0:
            return None
        if self.size is None:
            return "no size"
        if self.crc32c is None:
            return "no CRC32C"
        return None


# Keys of which one at least is in any object resource: a JSON dict with none of them is
# an error document or something else, not the object (a 0-byte object may lack the rest).
_OBJECT_KEYS = ("name", "generation", "bucket", "kind", "id")


def _count(resource: Mapping[str, Any], key: str) -> int | None:
    """A non-negative integer field, given by GCS as a decimal string (int64 in JSON)."""
    value = resource.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"the object's {key} is not a number: {type(value).__name__}")
    if isinstance(value, str) and not value.strip().isdigit():
        raise ValueError(f"the object's {key} is not a number")
    number = int(value)
    if number < 0:
        raise ValueError(f"the object's {key} is negative")
    return number


def _hash(resource: Mapping[str, Any], key: str) -> str | None:
    """A digest as GCS gives it (base64); compared, not decoded, so any string will do."""
    value = resource.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"the object's {key} is not a string: {type(value).__name__}")
    return value


def parse_object_resource(body: bytes) -> Finalized:
    """Read GCS object metadata (a finalize answer, a status query's 200, a metadata GET).

    Defensive by design, because the answer may be cut short, come from a proxy, or come
    from a server that omits zero fields: ``size``, ``generation``, ``crc32c`` and
    ``md5Hash`` may each be absent, and numbers may be JSON strings (as GCS sends them) or
    numbers. Raises ``ValueError`` with a message that names no URL when the body is not
    JSON object metadata or a field is malformed; never ``KeyError``/``TypeError``.
    """
    try:
        resource = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the answer is not JSON object metadata") from None
    if not isinstance(resource, dict) or not any(key in resource for key in _OBJECT_KEYS):
        raise ValueError("the answer is JSON but not object metadata")
    return Finalized(
        generation=_count(resource, "generation"),
        size=_count(resource, "size"),
        crc32c=_hash(resource, "crc32c"),
        md5_hash=_hash(resource, "md5Hash"),
        resource=resource,
    )


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
    session_url: str,
    offset: int,
    data: bytes | memoryview,
    *,
    total: int | None,
    crc32c: int | None,
) -> Request:
    """A PUT of ``data`` at ``offset``; with ``total`` it is the final request.

    ``data`` may be a view (of bytes, format ``B``): it is the body as it is, not copied.

    The final request carries the CRC32C of the whole object (``X-Goog-Hash``), so GCS itself
    refuses to create an object whose bytes differ from what was written.
    """
    if len(data):
        last = offset + len(data) - 1
        content_range = f"bytes {offset}-{last}/{'*' if total is None else total}"
    else:
        content_range = f"bytes */{'*' if total is None else total}"
    headers = {"Content-Range": content_range}
    if total is not None and crc32c is not None:
        headers["X-Goog-Hash"] = f"crc32c={crc32c_base64(crc32c)}"
    return Request("PUT", session_url, headers, data if len(data) else b"")


def object_request(
    api_endpoint: str, bucket: str, name: str, *, generation: int | None, user_agent: str
) -> Request:
    """The metadata GET of ``gs://bucket/name`` (under ``ifGenerationMatch`` when known).

    Used when the final answer was lost or unreadable twice: the object itself says what
    it holds, and the precondition makes sure it is the generation this upload made.
    """
    query = f"?ifGenerationMatch={generation}" if generation is not None else ""
    url = (
        f"{api_endpoint.rstrip('/')}/storage/v1/b/{quote(bucket, safe='')}"
        f"/o/{quote(name, safe='')}{query}"
    )
    return Request("GET", url, {"User-Agent": user_agent})


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
    answer. For a 200 that means "finalized, but the answer is unreadable" (cut short, not
    JSON): the caller asks the server what it holds rather than giving up.
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
        return parse_object_resource(body)
    raise ValueError(f"status {status} is neither 308 nor 200/201")


def error_message(body: bytes) -> str:
    """GCS's own words from an error answer, short, for an exception message."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")
    text = " ".join(str(message).split())
    return redact(text[:200])
