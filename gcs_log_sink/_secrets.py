"""Keep secrets out of log records, exception text and reprs: pure, no I/O.

Three things are secrets here: a resumable session URL (its ``upload_id`` is a bearer
capability: anyone holding it can write the object), an access token (``Authorization:
Bearer ...``) and any other credential (refresh tokens, client secrets, API keys).

Libraries on our request path log them at DEBUG: urllib3 puts the request URL (with
``upload_id``) into its message arguments, and google-auth puts the URL *and the request
headers* (with the bearer token) into ``extra={"httpRequest": ...}``, which a JSON formatter
then writes out. :class:`ScrubSecrets` is a ``logging.Filter`` that rewrites such records in
place (message, arguments and every ``extra`` field, recursively); :func:`guard_loggers`
puts it on the loggers that carry our requests. A logger filter sees only the records
created on that very logger, so it goes on each of them, not on a parent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "ScrubSecrets", "guard_loggers", "redact", "scrub"]

REDACTED = "<redacted>"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A session id in a URL, plain or percent-encoded (a URL inside another URL).
    (re.compile(r"(upload_id(?:=|%3D))[^&\s\"'<>]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # An access token in a header value or a message.
    (re.compile(r"(\bBearer\s+)[^\s\"',;]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # OAuth fields in a query string, a form body or a JSON/repr text.
    (
        re.compile(
            r"((?:access_token|refresh_token|id_token|client_secret|private_key|api_key)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\"'&\s,}]+",
            re.IGNORECASE,
        ),
        rf"\1{REDACTED}",
    ),
    # An API key in a query string.
    (re.compile(r"([?&]key=)[^&\s\"'<>]+"), rf"\1{REDACTED}"),
    # Google OAuth access tokens, wherever they appear.
    (re.compile(r"\bya29\.[\w.\-]+"), REDACTED),
)

# Mapping keys whose value is a credential whatever it looks like (headers, bodies).
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-goog-api-key",
        "x-goog-iam-authorization-token",
        "cookie",
        "set-cookie",
        "accesstoken",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "private_key",
        "password",
    }
)

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact(text: str) -> str:
    """``text`` with session ids, tokens and credentials replaced by ``<redacted>``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub(value: Any, _depth: int = 0) -> Any:
    """``value`` with every secret redacted: strings, and mappings/sequences of them.

    Other objects are kept as they are unless their ``str`` holds a secret, in which case
    the redacted ``str`` replaces them (a ``requests`` exception holds its URL, say).
    """
    if _depth > 20:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
        cleaned = redact(text)
        return value if cleaned == text else cleaned.encode("utf-8")
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and key.lower() in _SECRET_KEYS
                else scrub(item, _depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        items = [scrub(item, _depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    try:
        text = str(value)
    except Exception:
        return value
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class ScrubSecrets(logging.Filter):
    """Rewrite a record so that no secret reaches any handler; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, Mapping):
                record.args = scrub(record.args)
            elif isinstance(record.args, tuple):
                record.args = tuple(scrub(arg) for arg in record.args)
            for key, value in list(vars(record).items()):
                if key not in _STANDARD_ATTRS:
                    setattr(record, key, scrub(value))
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        except Exception:  # a filter must never break the caller's logging
            record.msg, record.args = "<a log record withheld: it could not be scrubbed>", ()
        return True


SCRUB_SECRETS = ScrubSecrets()

# The loggers our requests pass through (google-auth's request/response log, urllib3's
# request lines, google-cloud-storage and its resumable-media copies), named before the
# libraries create them: getLogger() returns the same object, filter included.
_KNOWN = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.util.retry",
    "urllib3.response",
    "requests",
    "google.auth.transport.requests",
    "google.auth.transport._http_client",
    "google.auth._default",
    "google.auth.compute_engine._metadata",
    "google.auth.credentials",
    "google.oauth2._client",
    "google.cloud.storage._http",
    "google.cloud.storage._helpers",
    "google.cloud.storage.blob",
    "google.cloud.storage.client",
    "google.cloud.storage._media._helpers",
    "google.resumable_media._helpers",
    "google.api_core.retry",
    "google.api_core.client_logging",
)
_PREFIXES = ("google", "urllib3", "requests", "gcs_log_sink")


def guard_loggers(extra: Iterable[str] = ()) -> None:
    """Put :data:`SCRUB_SECRETS` on the known loggers and every existing one of the libraries.

    Cheap and idempotent: called at import and again whenever a transport is made, so
    loggers that libraries created since are covered too.
    """
    manager = logging.Logger.manager
    names = set(_KNOWN) | set(extra)
    names.update(name for name in list(manager.loggerDict) if name.split(".", 1)[0] in _PREFIXES)
    for name in names:
        logger = logging.getLogger(name)
        if SCRUB_SECRETS not in logger.filters:
            logger.addFilter(SCRUB_SECRETS)
