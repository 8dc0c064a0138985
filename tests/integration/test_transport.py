"""The transport: the environment requests reads (proxy variables) still applies, read once
per stream; one watchdog thread bounds every request's wall time."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from helpers import read_object

from gcs_log_sink import GCSObjectStream, RetryDeadlineExceededError
from gcs_log_sink._transport import Transport, _watched


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


class _Socket:
    def __init__(self) -> None:
        self.shut = 0.0

    def shutdown(self, how: int) -> None:
        # The first time: an expired watch shuts its connections again every 50 ms.
        self.shut = self.shut or time.monotonic()


class _Connection:
    def __init__(self) -> None:
        self.sock = _Socket()

    def close(self) -> None:  # a pool closes what it holds when it goes
        pass


def test_one_watchdog_thread_expires_each_watch_at_its_deadline() -> None:
    """Requests share one long-lived watchdog thread (no thread per request): each watch's
    connections are shut down at its own deadline, in deadline order, and a watch whose
    request finished in time is never expired."""
    before = {t.ident for t in threading.enumerate()}
    started = time.monotonic()
    watches = []
    for seconds in (0.3, 0.1, 0.2, 0.15):
        context = _watched(seconds)
        watch = context.__enter__()
        assert watch is not None
        connection = _Connection()
        watch.add(connection)
        watches.append((seconds, context, watch, connection))
    finished = watches.pop(3)  # 0.15 s: its request is answered at once
    finished[1].__exit__(None, None, None)
    new_threads = [t for t in threading.enumerate() if t.ident not in before]
    assert [] == [t.name for t in new_threads if t.name != "gcs-log-sink-watchdog"]
    deadline = time.monotonic() + 5
    while not all(watch.expired for _, _, watch, _ in watches) and time.monotonic() < deadline:
        time.sleep(0.01)
    for _, context, _, _ in watches:
        context.__exit__(None, None, None)
    assert [True, True, True] == [watch.expired for _, _, watch, _ in watches]
    assert (False, 0.0) == (finished[2].expired, finished[3].sock.shut)
    for seconds, _, _, connection in watches:
        assert seconds <= connection.sock.shut - started < seconds + 1.0
    shut_order = sorted(watches, key=lambda item: item[3].sock.shut)
    assert [0.1, 0.2, 0.3] == [seconds for seconds, _, _, _ in shut_order]


def test_a_connection_added_after_expiry_is_shut_at_once() -> None:
    """A request that gets its connection after the deadline passed fails right away."""
    with _watched(0.0) as watch:
        assert watch is not None
        deadline = time.monotonic() + 5
        while not watch.expired and time.monotonic() < deadline:
            time.sleep(0.005)
        late = _Connection()
        watch.add(late)
        assert 0.0 != late.sock.shut


def test_finished_watches_do_not_pile_up_while_their_deadlines_are_far() -> None:
    """Thousands of quick requests with a long timeout: the watchdog's heap holds about the
    requests in flight, not every request of the last timeout (memory is not rate x time)."""
    from gcs_log_sink._transport import _WATCHDOG

    live = []
    for i in range(5000):
        with _watched(600.0) as watch:
            assert watch is not None
        if i % 1000 == 0:  # a few still in flight, and kept
            context = _watched(600.0)
            live.append((context, context.__enter__()))
    assert len(_WATCHDOG._heap) <= 2 * _WATCHDOG.COMPACT_AT + len(live)
    assert all(any(entry[2] is watch for entry in _WATCHDOG._heap) for _, watch in live)
    for context, _ in live:
        context.__exit__(None, None, None)


def test_a_connection_handed_back_to_the_pool_is_not_shut_at_the_deadline() -> None:
    """requests returns a connection to the pool as soon as the answer is read, before the
    request's watch ends: a deadline passing in between must not shut that connection, which
    another request (another stream on the same session) may already be using."""
    from gcs_log_sink._transport import _WatchedHTTPPool

    pool = _WatchedHTTPPool("127.0.0.1", 9, maxsize=1)
    pool._get_conn()  # room in the pool for the one handed back
    with _watched(0.05) as watch:
        assert watch is not None
        handed_back = _Connection()
        watch.add(handed_back)  # as _get_conn does for the request's connection
        pool._put_conn(handed_back)  # the answer was read
        deadline = time.monotonic() + 5
        while not watch.expired and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (True, 0.0) == (watch.expired, handed_back.sock.shut)
    assert handed_back in pool.pool.queue  # type: ignore[union-attr]
