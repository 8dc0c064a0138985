"""The environment requests reads (proxy variables) still applies, read once per stream."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from helpers import read_object

from gcs_log_sink import GCSObjectStream, RetryDeadlineExceededError
from gcs_log_sink._transport import Transport


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_http_proxy_from_the_environment_is_used(
    client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The private session does not read the environment per request, but the transport
    does once per origin: HTTP_PROXY pointing nowhere fails the stream (the variable was
    honoured), and a stream opened after it is unset ships as usual."""
    _no_proxy_variables(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_dead_port()}")
    with pytest.raises(RetryDeadlineExceededError):
        GCSObjectStream(bucket, "obj", client=client, retry_deadline=0.3)
    monkeypatch.delenv("HTTP_PROXY")
    with GCSObjectStream(bucket, "obj", client=client) as out:
        out.write(b"through no proxy")
    assert b"through no proxy" == read_object(client, bucket, "obj")


def test_no_proxy_from_the_environment_is_respected(
    client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY naming the server's host bypasses HTTP_PROXY, as requests does it."""
    _no_proxy_variables(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with GCSObjectStream(bucket, "obj", client=client, retry_deadline=5) as out:
        out.write(b"bypassed")
    assert b"bypassed" == read_object(client, bucket, "obj")


def test_the_environment_is_read_once_per_origin(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once per transport and origin: a running stream keeps the settings it started with
    (requests alone would walk os.environ twice per request)."""
    _no_proxy_variables(monkeypatch)
    transport = Transport.for_client(client, 5.0)
    url = client._connection.API_BASE_URL + "/upload/x"
    assert {} == transport._environment_settings(url)["proxies"]
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert {} == transport._environment_settings(url)["proxies"]
    fresh = Transport.for_client(client, 5.0)
    assert "http://127.0.0.1:9" == fresh._environment_settings(url)["proxies"].get("http")
