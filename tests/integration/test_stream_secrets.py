"""No secret at DEBUG: session URLs, upload ids and access tokens never reach a log line,
an ``extra`` field, an exception, a repr, at any level, from any library logger.

The client carries a real-looking bearer token (google.oauth2 ``Credentials(token=...)``), so
google-auth puts it into the request headers it logs; every logger on the request path is at
DEBUG with a JSONFormatter (which writes ``extra`` fields such as google-auth's
``httpRequest``), and faults make the retry and error paths log too.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from faultproxy import FaultProxy, is_chunk_upload, is_final_request
from helpers import read_object

from gcs_log_sink import GCSHandler, GCSObjectStream, JSONFormatter, PermissionDeniedError
from gcs_log_sink._secrets import redact, scrub

UNIT = 256 * 1024
TOKEN = "ya29.a0AfB_byC-not-a-real-token-but-shaped-like-one_0123456789"
LOGGERS = ("", "google", "urllib3", "requests", "gcs_log_sink")


def _token_client(endpoint: str) -> Any:
    from google.cloud import storage
    from google.oauth2.credentials import Credentials

    credentials = Credentials(token=TOKEN)  # type: ignore[no-untyped-call]
    return storage.Client(
        project="test", credentials=credentials, client_options={"api_endpoint": endpoint}
    )


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of the request path's loggers at DEBUG, JSON-formatted, with extras."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    handler.setLevel(logging.DEBUG)
    saved = []
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.setLevel(logging.DEBUG)
        if name:
            log.propagate = False
        log.addHandler(handler)
    try:
        yield out
    finally:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    assert "upload_id=" not in text.replace("upload_id=<redacted>", "")


def test_debug_logs_with_a_token_client_hold_no_secret(
    proxy: FaultProxy, client: Any, bucket: str, captured: io.StringIO
) -> None:
    """Uploads with faults, a lost final answer and a refusal: nothing secret is logged."""
    proxied = _token_client(proxy.url)
    data = os.urandom(2 * UNIT + 9)
    proxy.script(["503_after", "partial", "reset_after"], match=is_chunk_upload)
    with GCSObjectStream(bucket, "ok.log", client=proxied, chunk_size=2 * UNIT, timeout=2) as out:
        session_id = out._session_url.split("upload_id=")[1]
        out.write(data)
    assert data == read_object(client, bucket, "ok.log")

    proxy.script(["not_json"], match=is_final_request)
    with GCSObjectStream(bucket, "cut.log", client=proxied, timeout=2) as second:
        second_id = second._session_url.split("upload_id=")[1]
        second.write(b"cut")

    refused = GCSObjectStream(bucket, "refused.log", client=proxied, chunk_size=UNIT)
    third_id = refused._session_url.split("upload_id=")[1]
    proxy.script(["403_before"], match=is_chunk_upload)
    with pytest.raises(PermissionDeniedError) as caught:
        refused.write(os.urandom(UNIT))
    refused.close()

    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert any("httpRequest" in line for line in lines), "google-auth logged no request"
    assert any("<redacted>" in line for line in text.splitlines())
    everything = "\n".join(
        [text, str(caught.value), repr(caught.value), repr(out), repr(second), repr(refused)]
    )
    _assert_no_secret(everything, TOKEN, session_id, second_id, third_id)


def test_a_gcs_handler_on_the_google_logger_ships_no_secret(
    client: Any, bucket: str, captured: io.StringIO
) -> None:
    """GCSHandler with JSONFormatter on logging.getLogger("google") at DEBUG: shipped logs and
    the local copy name no token and no session id."""
    proxied = _token_client(client.api_endpoint)
    handler = GCSHandler(bucket, prefix="google/", client=client, rotate_seconds=3600)
    handler.setFormatter(JSONFormatter())
    google = logging.getLogger("google")
    google.addHandler(handler)
    try:
        with GCSObjectStream(bucket, "traced.log", client=proxied, chunk_size=UNIT) as out:
            session_id = out._session_url.split("upload_id=")[1]
            out.write(os.urandom(UNIT + 3))
    finally:
        google.removeHandler(handler)
        handler.close()
    shipped = "".join(
        client.bucket(bucket).blob(blob.name).download_as_text()
        for blob in client.list_blobs(bucket, prefix="google/")
    )
    assert "httpRequest" in shipped
    _assert_no_secret(shipped + captured.getvalue(), TOKEN, session_id)


@pytest.mark.parametrize(
    "value",
    [
        "PUT https://h/upload/storage/v1/b/x/o?uploadType=resumable&upload_id=ABC123 HTTP/1.1",
        {"headers": {"Authorization": f"Bearer {TOKEN}"}, "url": "https://h/o?upload_id=ABC123"},
        [("https://h/?x=1&upload_id%3DABC123",)],
        f'{{"access_token": "{TOKEN}", "refresh_token": "1//ABC123"}}',
        f"Authorization: Bearer {TOKEN}",
        "https://h/storage/v1/b?key=ABC123",
    ],
)
def test_scrub_redacts_every_shape_a_secret_comes_in(value: Any) -> None:
    """Strings, mappings (by key too), sequences, URL-encoded ids, JSON text, API keys."""
    text = json.dumps(scrub(value))
    assert "ABC123" not in text
    assert TOKEN not in text
    assert "<redacted>" in text
    assert "the id is ABC123 in plain words" == redact("the id is ABC123 in plain words")
