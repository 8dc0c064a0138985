"""The only place that sends HTTP: a request out, a status, headers and body back.

It rides on the google-cloud-storage client's authorized session, so credentials, their
refresh, ``STORAGE_EMULATOR_HOST`` and ``api_endpoint`` all behave as in the rest of the
Google client libraries. Failures of the wire become :class:`TransportError`, which the
caller treats as "the server may or may not have seen it": ask it, never resend blindly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import google.auth.exceptions
import requests

from ._protocol import Request, redact

__all__ = [
    "Answer",
    "CredentialsError",
    "Transport",
    "TransportError",
    "user_agent",
]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as plain values."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """The request failed on the wire (reset, timeout, refused); its fate is unknown."""


class CredentialsError(Exception):
    """google-auth could not produce credentials for the request (no or bad credentials)."""


class _RedactSessionIds(logging.Filter):
    """Keep resumable session ids out of urllib3's DEBUG lines ("PUT /upload/...?upload_id=").

    A session URL is a bearer capability: anyone holding it can write the object. urllib3
    logs request URLs at DEBUG, which many programs turn on while debugging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "upload_id=" in arg for arg in record.args
        ):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


_SESSION_ID_FILTER = _RedactSessionIds()
for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_SESSION_ID_FILTER)


def user_agent() -> str:
    try:
        version = metadata.version("gcs-log-sink")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "0"
    return f"gcs-log-sink/{version} {requests.utils.default_user_agent()}"


class Transport:
    """Send :class:`Request` values over a ``requests.Session`` with a per-request timeout."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        self._session = session
        self._timeout = timeout

    @classmethod
    def for_client(cls, client: Any, timeout: float) -> Transport:
        # ``_http`` is the client's google.auth AuthorizedSession; google-cloud-storage's own
        # Blob uploads go through it the same way.
        return cls(client._http, timeout)

    def send(self, request: Request) -> Answer:
        try:
            response = self._session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=self._timeout,
                # GCS's 308 means "resume incomplete", not a redirect to follow.
                allow_redirects=False,
            )
            body = response.content
        except (requests.RequestException, google.auth.exceptions.TransportError) as exc:
            # No chaining of the original: its message holds the session URL.
            raise TransportError(type(exc).__name__) from None
        except google.auth.exceptions.GoogleAuthError as exc:
            # Refresh failed (after a 401, or before the first request): no usable credentials.
            raise CredentialsError(str(exc)) from None
        return Answer(response.status_code, response.headers, body)
