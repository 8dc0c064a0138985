"""The only place that sends HTTP: a request out, a status, headers and body back.

It rides on the google-cloud-storage client's credentials, so their refresh,
``STORAGE_EMULATOR_HOST`` and ``api_endpoint`` all behave as in the rest of the Google client
libraries. Failures of the wire become :class:`TransportError`, which the caller treats as
"the server may or may not have seen it": ask it, never resend blindly.

Every request has a wall-clock deadline. ``requests``' timeout bounds each socket operation,
so a server that drips a byte a second restarts it forever; here a watchdog shuts the
request's socket down at the deadline, which fails the request at once, whether it is
connecting, sending its body or reading the answer. That needs to know the request's
connection, so requests go through a session of our own (sharing the client's credentials)
whose connection pools register each connection they hand out (:class:`_WatchedAdapter`).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import itertools
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
import requests
import requests.adapters
import urllib3.connectionpool

from ._protocol import Request
from ._secrets import guard_loggers, redact

__all__ = [
    "MIN_SEND_RATE",
    "Answer",
    "CredentialsError",
    "InvalidRequestError",
    "Transport",
    "TransportError",
    "user_agent",
]

# A request body may take this long on top of ``timeout``: one second per 256 KiB, so an
# 8 MiB chunk may take 32 s more on a slow uplink, while a server that reads a byte a
# second still fails in bounded time.
MIN_SEND_RATE = 256 * 1024

guard_loggers()


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


class InvalidRequestError(Exception):
    """The URL cannot be sent at all (no scheme, no host, bad port): configuration."""


@functools.cache
def user_agent() -> str:
    """Our User-Agent: looked up once (the package metadata read cost ~0.8 ms of CPU, paid
    twice per stream, i.e. per rotated object or ``tee`` part)."""
    try:
        version = metadata.version("gcs-log-sink")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "0"
    return f"gcs-log-sink/{version} {requests.utils.default_user_agent()}"


# -- the watchdog ------------------------------------------------------------------------


class _Watch:
    """One request's deadline and the connections it used; shut down when it expires."""

    __slots__ = ("_connections", "_done", "_lock", "expired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._done = False
        self.expired = False

    @property
    def done(self) -> bool:
        return self._done

    def add(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            if self.expired:
                _shut(connection)

    def discard(self, connection: Any) -> None:
        """``connection`` went back to the pool: another request may take it, never shut it."""
        with self._lock, contextlib.suppress(ValueError):
            self._connections.remove(connection)

    def expire(self) -> None:
        """Shut every connection down; again shortly, for one that had no socket yet."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            for connection in self._connections:
                _shut(connection)
        _WATCHDOG.schedule(self, time.monotonic() + 0.05)

    def finish(self) -> None:
        with self._lock:
            self._done = True


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        # shutdown, not close: it wakes a thread blocked in recv/send on this socket.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One long-lived daemon thread per process that expires watches at their deadlines.

    A ``threading.Timer`` per request cost a thread start and stop (~100 us of CPU) for
    every chunk sent; this keeps a heap of deadlines instead. A finished watch stays in
    the heap until its deadline comes up, and is then dropped unexpired (cheaper than
    searching the heap at every request's end). So that many quick requests with long
    deadlines cannot grow the heap without bound, it is rebuilt from its live watches
    whenever it doubles past :data:`COMPACT_AT` entries: memory follows the requests in
    flight, not the request rate times the timeout.
    """

    COMPACT_AT = 256

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Watch]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None
        self._compact_at = self.COMPACT_AT

    def schedule(self, watch: _Watch, deadline: float) -> bool:
        """Expire ``watch`` at monotonic ``deadline``; False when no thread can watch it.

        From Python 3.12 no thread starts while the interpreter exits (an atexit hook
        shipping the last records): if the watchdog is not running by then, the request
        goes unwatched, bounded only by the per-read timeout of requests, rather than not
        sent at all.
        """
        with self._condition:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name="gcs-log-sink-watchdog", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:
                    return False
                self._thread = thread
            if len(self._heap) >= self._compact_at:
                self._heap[:] = [item for item in self._heap if not item[2].done]
                heapq.heapify(self._heap)
                self._compact_at = max(self.COMPACT_AT, 2 * len(self._heap))
            entry = (deadline, next(self._counter), watch)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._condition.notify()
        return True

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._condition:
                while True:
                    while heap and heap[0][2].done:
                        heapq.heappop(heap)
                    if not heap:
                        self._condition.wait()
                        continue
                    wait = heap[0][0] - time.monotonic()
                    if wait <= 0:
                        due = heapq.heappop(heap)[2]
                        break
                    self._condition.wait(wait)
            due.expire()  # outside the condition: expire() schedules again

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's thread is not here; start afresh when needed."""
        self._condition = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None
        self._compact_at = self.COMPACT_AT


_WATCHDOG = _Watchdog()
_current = threading.local()


@contextlib.contextmanager
def _watched(seconds: float) -> Iterator[_Watch | None]:
    watch = _Watch()
    if not _WATCHDOG.schedule(watch, time.monotonic() + max(seconds, 0.0)):
        yield None  # unwatched (interpreter exit, see _Watchdog.schedule)
        return
    _current.watch = watch
    try:
        yield watch
    finally:
        _current.watch = None
        watch.finish()


class _WatchedPoolMixin:
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        watch: _Watch | None = getattr(_current, "watch", None)
        if watch is not None:
            watch.add(connection)
        return connection

    def _put_conn(self, connection: Any) -> None:
        # The answer was read and requests hands the connection back before our request
        # ends: from here a deadline passing must not shut it under another request.
        watch: _Watch | None = getattr(_current, "watch", None)
        if watch is not None:
            watch.discard(connection)
        super()._put_conn(connection)  # type: ignore[misc]


class _WatchedHTTPPool(_WatchedPoolMixin, urllib3.connectionpool.HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_WatchedPoolMixin, urllib3.connectionpool.HTTPSConnectionPool):
    pass


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` whose pools tell the current request's watch their connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


# One private session per client session: connections are pooled across streams.
_SESSIONS: weakref.WeakKeyDictionary[Any, requests.Session] = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def _forget_sessions() -> None:
    """In a forked child: never reuse the parent's pooled connections (shared sockets),
    nor count on the parent's watchdog thread (threads do not survive a fork)."""
    global _SESSIONS_LOCK
    _SESSIONS_LOCK = threading.Lock()  # the parent may have held it while forking
    _SESSIONS.clear()
    _WATCHDOG.forget_after_fork()


os.register_at_fork(after_in_child=_forget_sessions)


def _watched_session(http: Any) -> tuple[Any, bool]:
    """A session like ``http`` (same credentials and settings) with watched pools.

    Only for google-auth's ``AuthorizedSession`` without mutual TLS, which is what a
    ``storage.Client`` makes; any other session (``Client(_http=...)``) is used as given,
    and its requests are bounded by ``requests``' per-operation timeout only.
    """
    from google.auth.transport.requests import AuthorizedSession

    if type(http) is not AuthorizedSession or getattr(http, "is_mtls", False):
        return http, False
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(http)
        if session is None:
            # The same credentials object: a token refreshed by either session serves both.
            options = {
                key: getattr(http, f"_{key}")
                for key in (
                    "refresh_status_codes",
                    "max_refresh_attempts",
                    "refresh_timeout",
                    "auth_request",
                    "default_host",
                )
                if hasattr(http, f"_{key}")
            }
            session = AuthorizedSession(http.credentials, **options)  # type: ignore[no-untyped-call]
            for attribute in ("verify", "cert", "proxies"):
                setattr(session, attribute, getattr(http, attribute))
            # The environment (proxy variables, REQUESTS_CA_BUNDLE) is read once per origin
            # by the Transport (:meth:`Transport._environment`), not on every request:
            # requests walks all of os.environ twice per request (~0.6 ms) when trust_env.
            # (No .netrc either: the credentials sign every request.)
            session.trust_env = False
            adapter = _WatchedAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _SESSIONS[http] = session
        return session, True


class Transport:
    """Send :class:`Request` values, each within a wall-clock deadline.

    ``timeout`` bounds a request without a body; a body adds ``len(body) / MIN_SEND_RATE``
    seconds. ``send(..., not_after=t)`` ends the request by monotonic time ``t`` at the
    latest (the caller's retry deadline).
    """

    def __init__(
        self, session: Any, timeout: float, *, watched: bool = True, environment: Any = None
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._watched = watched
        # A session whose trust_env settings are looked up once per origin (scheme://host),
        # on behalf of ``session`` that does not look: see _watched_session.
        self._environment = environment
        self._settings: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_client(cls, client: Any, timeout: float) -> Transport:
        # ``_http`` is the client's google.auth AuthorizedSession; google-cloud-storage's own
        # Blob uploads go through it the same way.
        guard_loggers()  # loggers the libraries created since import
        http = client._http
        session, watched = _watched_session(http)
        environment = http if session is not http and getattr(http, "trust_env", False) else None
        return cls(session, timeout, watched=watched, environment=environment)

    def _environment_settings(self, url: str) -> dict[str, Any]:
        """``proxies``/``verify``/``cert`` for ``url`` as requests would read them from the
        environment, looked up once per origin and this transport (a new stream sees a
        changed environment; a running one keeps what it started with)."""
        if self._environment is None:
            return {}
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        settings = self._settings.get(origin)
        if settings is None:
            merged = self._environment.merge_environment_settings(url, {}, None, None, None)
            settings = {key: merged[key] for key in ("proxies", "verify", "cert")}
            self._settings[origin] = settings
        return settings

    def deadline(self, request: Request, now: float, not_after: float | None = None) -> float:
        """The monotonic time by which ``request``, sent at ``now``, must be done."""
        own = now + self._timeout + len(request.body) / MIN_SEND_RATE
        return own if not_after is None else min(own, not_after)

    def send(self, request: Request, *, not_after: float | None = None) -> Answer:
        now = time.monotonic()
        deadline = self.deadline(request, now, not_after)
        seconds = max(deadline - now, 0.001)
        watch = _watched(seconds) if self._watched else contextlib.nullcontext(None)
        try:
            with watch as watching:
                response = self._session.request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    data=request.body,
                    timeout=min(self._timeout, seconds),
                    # GCS's 308 means "resume incomplete", not a redirect to follow.
                    allow_redirects=False,
                    **self._environment_settings(request.url),
                )
                body = response.content
        except (
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.URLRequired,
        ) as exc:
            raise InvalidRequestError(type(exc).__name__) from None
        except (requests.RequestException, google.auth.exceptions.TransportError) as exc:
            if watching is not None and watching.expired:
                raise TransportError(f"no answer in {seconds:.1f} s (request deadline)") from None
            # No chaining of the original: its message holds the session URL.
            raise TransportError(type(exc).__name__) from None
        except google.auth.exceptions.GoogleAuthError as exc:
            # Refresh failed (after a 401, or before the first request): no usable credentials.
            raise CredentialsError(redact(str(exc))) from None
        except (OSError, http.client.HTTPException) as exc:
            # The watchdog's shutdown can surface below requests' own exception mapping.
            if watching is not None and watching.expired:
                raise TransportError(f"no answer in {seconds:.1f} s (request deadline)") from None
            raise TransportError(type(exc).__name__) from None
        if watching is not None and watching.expired:
            # Cut at the deadline: what was read may be a truncated answer (a status line
            # without its headers), never to be believed.
            raise TransportError(f"no answer in {seconds:.1f} s (request deadline)")
        return Answer(response.status_code, response.headers, body)
