"""The redaction of secrets from log records: pure, no server."""

from __future__ import annotations

import io
import json
import logging

from gcs_log_sink import JSONFormatter
from gcs_log_sink._secrets import REDACTED, ScrubSecrets, guard_loggers

SESSION = "https://h/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=SECRET1"
TOKEN = "ya29.SECRET2"


def _format(record: logging.LogRecord) -> str:
    assert ScrubSecrets().filter(record)
    return JSONFormatter().format(record)


def test_message_args_and_extras_are_scrubbed_in_place() -> None:
    """google-auth's shape: the URL and headers in ``extra``; urllib3's: the URL in args."""
    record = logging.LogRecord(
        "google.auth.transport.requests", 10, "f", 1, "%s %s", ("PUT", SESSION), None
    )
    record.httpRequest = {"url": SESSION, "headers": {"Authorization": f"Bearer {TOKEN}"}}
    line = _format(record)
    assert "SECRET1" not in line
    assert "SECRET2" not in line
    assert REDACTED in json.loads(line)["httpRequest"]["headers"]["Authorization"]
    assert "upload_id=<redacted>" in json.loads(line)["message"]


def test_exception_text_is_scrubbed() -> None:
    """A traceback text that quotes the session URL is redacted too."""
    record = logging.LogRecord("urllib3.connectionpool", 40, "f", 1, "failed", (), None)
    record.exc_text = f"ConnectionError: {SESSION}"
    assert "SECRET1" not in _format(record)


def test_guard_loggers_covers_loggers_created_later_and_is_idempotent() -> None:
    """Known names get the filter before the library creates them; a second call adds none."""
    guard_loggers(["google.some.future.module"])
    guard_loggers(["google.some.future.module"])
    logger = logging.getLogger("google.some.future.module")
    assert 1 == sum(isinstance(f, ScrubSecrets) for f in logger.filters)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("url %s", SESSION)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert "SECRET1" not in out.getvalue()
    assert "upload_id=<redacted>" in out.getvalue()
