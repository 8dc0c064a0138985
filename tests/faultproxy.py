"""A fault-injecting HTTP/1.1 proxy between a resumable-upload client and the local GCS server.

Why a proxy: the local server (:mod:`gcs_log_sink._localgcs`) is single-threaded, so a fault
can never be made by holding a request open against it; and the client must meet the
failures GCS really produces: answers lost after the server acted, throttling, chunks only
partly persisted (a 308 whose ``Range`` is shorter than what was sent), resets, stalls and
outages. The proxy listens on 127.0.0.1, reads each client request in full, picks a fault
(:meth:`FaultProxy.script` first, then :meth:`FaultProxy.plan`), and forwards the request
over a fresh upstream connection only when the fault needs the server to act. The client's
``Host`` header is forwarded unchanged, so the session URLs the server hands out point back
at the proxy.

The session URL (anything with ``upload_id=``) is a bearer secret: nothing here logs or
records a query string; :class:`Event` and log lines carry the path only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import re
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FAULT_KINDS",
    "UPLOAD_UNIT",
    "Event",
    "FaultProxy",
    "ProxiedRequest",
    "is_chunk_upload",
    "is_final_request",
    "is_initiate",
    "is_session_request",
    "is_status_query",
]

logger = logging.getLogger(__name__)

UPLOAD_UNIT = 256 * 1024
"""Non-final resumable chunks are multiples of this many bytes."""

FAULT_KINDS: tuple[str, ...] = (
    "503_before",  # answer 503 without forwarding: the server never sees the request
    "429_before",  # answer 429 without forwarding
    "503_after",  # forward, drop the server's answer, answer 503: the server acted
    "reset_before",  # TCP RST without forwarding
    "reset_after",  # forward, drop the answer, TCP RST: the server acted
    "partial",  # forward part of a non-final chunk, relay the 308 with the shorter Range
    "partial_reset",  # forward part of a non-final chunk, then TCP RST
    "stall",  # hold the request for stall_seconds without forwarding, then TCP RST
    "stall_after",  # forward, then hold the answer for stall_seconds, then TCP RST
    "delay_before",  # hold the request for stall_seconds, then forward it normally: a slow GCS
    "cut_body",  # forward, relay the answer's head, cut its body after cut_bytes and close:
    #   no Content-Length, so the client cannot tell (an answer "cut short")
    "not_json",  # forward, relay the status but replace the body with an HTML page
    "no_size",  # forward, drop "size" from a JSON object answer (as proto3 JSON drops zeros)
    "drip",  # forward, then send the answer one byte every drip_seconds: a dripping server
)

# Besides FAULT_KINDS, "NNN_before" answers any status NNN without forwarding (a 403, a 404
# for a lost session...): the refusals GCS makes that the local server never does.
_STATUS_BEFORE = re.compile(r"[1-5]\d\d_before")
_NON_FINAL = re.compile(r"bytes (\d+)-(\d+)/\*")
_FINAL = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
)


class Event(NamedTuple):
    """One request the proxy handled; ``path`` never includes the query string."""

    method: str
    path: str
    content_range: str | None  # as the client sent it
    kind: str | None  # the fault actually applied, None when passed through
    upstream_status: int | None  # None when the request never reached the server


@dataclass(frozen=True)
class ProxiedRequest:
    """A client request read in full, as handed to ``match`` predicates.

    ``query`` may hold the session's ``upload_id``: it is kept out of ``repr``.
    """

    method: str
    path: str
    query: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def is_chunk_upload(req: ProxiedRequest) -> bool:
    """A PUT carrying data: a non-final or final chunk."""
    return req.method == "PUT" and bool(req.body) and req.header("Content-Range") is not None


def is_status_query(req: ProxiedRequest) -> bool:
    """A PUT asking how many bytes the session holds (``Content-Range: bytes */*``)."""
    return req.method == "PUT" and (req.header("Content-Range") or "").strip() == "bytes */*"


def is_session_request(req: ProxiedRequest) -> bool:
    """Any PUT or DELETE on a session URL (chunks, status queries, finalize, cancel)."""
    return req.method in ("PUT", "DELETE") and "upload_id" in parse_qs(req.query)


def is_final_request(req: ProxiedRequest) -> bool:
    """A PUT that finalizes: its Content-Range names the total (``bytes a-b/N``, ``*/N``)."""
    content_range = (req.header("Content-Range") or "").strip()
    return req.method == "PUT" and bool(re.fullmatch(r"bytes (\d+-\d+|\*)/\d+", content_range))


def is_initiate(req: ProxiedRequest) -> bool:
    """The POST that opens a resumable session."""
    query = parse_qs(req.query)
    return (
        req.method == "POST"
        and query.get("uploadType") == ["resumable"]
        and ("upload_id" not in query)
    )


class _Answer(NamedTuple):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    # How to send it: "" in full; "cut" head and the first cut_bytes of the body, then
    # close; "drip" a byte at a time.
    how: str = ""


def _error_answer(status: int) -> _Answer:
    """A GCS-shaped JSON error, made up by the proxy."""
    phrase = HTTPStatus(status).phrase
    error = {"error": {"code": status, "message": f"{phrase} (injected by faultproxy)"}}
    headers = [("Content-Type", "application/json; charset=UTF-8")]
    return _Answer(status, phrase, headers, json.dumps(error).encode())


def _is_hop_by_hop(name: str) -> bool:
    lowered = name.lower()
    return lowered in _HOP_BY_HOP or lowered.startswith("proxy-")


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (SO_LINGER on, 0 s) rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_exact(rfile: BinaryIO, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise ConnectionError("client closed mid-body")
    return data


def _read_chunked(rfile: BinaryIO) -> bytes:
    """A ``Transfer-Encoding: chunked`` body, trailers skipped."""
    parts = []
    while size := int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
        parts.append(_read_exact(rfile, size))
        rfile.readline(1024)
    while rfile.readline(65537).strip():
        pass
    return b"".join(parts)


def _read_request(sock: socket.socket, rfile: BinaryIO) -> tuple[ProxiedRequest, bool] | None:
    """The next request on a client connection and whether to keep it alive; None at EOF."""
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):  # stray line ends between requests are allowed
        line = rfile.readline(65537)
    if not line:
        return None
    method, target, version = line.decode("latin-1").split()
    headers = http.client.parse_headers(rfile)
    if (headers.get("Expect") or "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        body = _read_chunked(rfile)
    else:
        body = _read_exact(rfile, int(headers.get("Content-Length") or 0))
    connection = (headers.get("Connection") or "").lower()
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    path, _, query = target.partition("?")
    return ProxiedRequest(method, path, query, tuple(headers.items()), body), keep_alive


def _answer_bytes(answer: _Answer, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
    lines += [f"{name}: {value}" for name, value in answer.headers]
    if not any(name.lower() == "content-length" for name, _ in answer.headers):
        lines.append(f"Content-Length: {len(answer.body)}")
    lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body


def _cut_answer_bytes(answer: _Answer, cut: int) -> bytes:
    """The head without Content-Length (the body ends when the connection does), cut body."""
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
    lines += [f"{n}: {v}" for n, v in answer.headers if n.lower() != "content-length"]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body[:cut]


class _Server(socketserver.ThreadingTCPServer):
    """One named daemon thread per client connection, each kept so that stop() can join it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        name = f"faultproxy:{self.server_address[1]}"
        args = (request, client_address)
        thread = threading.Thread(target=self.process_request_thread, args=args, name=name)
        thread.daemon = True
        with self.proxy._lock:
            self.proxy._threads = {t for t in self.proxy._threads if t.is_alive()} | {thread}
        thread.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.proxy._serve_connection(request)


class FaultProxy:
    """A threaded forwarding proxy on an ephemeral 127.0.0.1 port that injects faults.

    ``upstream`` is the server's base URL (``http://127.0.0.1:PORT``; loopback only). Faults
    are picked with ``random.Random(seed)`` so a run reproduces. ``events`` records every
    request handled (appended under a lock).
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        stall_seconds: float = 3.0,
        drip_seconds: float = 1.0,
        cut_bytes: int = 1,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("upstream must be an http:// URL on loopback")
        self._upstream = (parts.hostname, parts.port or 80)
        self.seed = seed
        self.stall_seconds = stall_seconds
        self.drip_seconds = drip_seconds  # "drip": the pause between two bytes of an answer
        self.cut_bytes = cut_bytes  # "cut_body": how many bytes of the body get through
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rate = 0.0
        self._kinds: tuple[str, ...] = ()
        self._plan_match: Callable[[ProxiedRequest], bool] | None = None
        self._script: list[str | None] = []
        self._script_match: Callable[[ProxiedRequest], bool] | None = None
        self._down = False
        self._stopping = threading.Event()
        # Set when a stall begins: a test can act (kill a client) while the request hangs.
        self.faulting = threading.Event()
        self._clients: set[socket.socket] = set()
        self._upstreams: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, once started."""
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        if self._server is not None:
            raise RuntimeError("FaultProxy is already started")
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy:{self._server.server_address[1]}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wake stalls, shut every open socket down, join every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            for sock in self._clients | self._upstreams:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        with self._lock:
            threads, self._threads = self._threads, set()
        for thread in threads:
            thread.join(timeout=5)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def plan(
        self,
        *,
        rate: float,
        kinds: Sequence[str],
        match: Callable[[ProxiedRequest], bool] | None = None,
        seed: int | None = None,
    ) -> None:
        """Fault each matching request with probability ``rate``, the kind drawn from ``kinds``.

        Re-seeds the generator (``seed``, else the constructor's) so that the same plan over
        the same requests faults the same ones. ``rate=0`` turns random faults off.
        """
        if not 0.0 <= rate <= 1.0 or (rate and not kinds):
            raise ValueError("rate must be in [0, 1], with kinds when above 0")
        _check_kinds(kinds)
        with self._lock:
            self._rate, self._kinds, self._plan_match = rate, tuple(kinds), match
            self._rng = random.Random(self.seed if seed is None else seed)

    def script(
        self, kinds: Sequence[str | None], *, match: Callable[[ProxiedRequest], bool] | None = None
    ) -> None:
        """Give the next ``len(kinds)`` matching requests these faults in order (None: pass).

        Takes precedence over :meth:`plan`, which applies again once the script is used up.
        """
        _check_kinds([kind for kind in kinds if kind is not None])
        with self._lock:
            self._script, self._script_match = list(kinds), match

    def reset(self) -> None:
        """Forget events, script and plan, and come up: a clean proxy for the next test."""
        with self._lock:
            self.events.clear()
            self._script, self._rate, self._kinds = [], 0.0, ()
            self._rng = random.Random(self.seed)
            self._down = False

    def go_down(self) -> None:
        """Reset every open and new client connection at once: GCS is unreachable.

        A request already read is still answered; connections reset here record no event.
        """
        with self._lock:
            self._down = True
            for sock in self._clients:  # wakes the reader, which then resets
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)

    def come_up(self) -> None:
        """Serve new connections again."""
        with self._lock:
            self._down = False

    def faults(self) -> list[Event]:
        """The events that got a fault."""
        with self._lock:
            return [event for event in self.events if event.kind is not None]

    def _serve_connection(self, sock: socket.socket) -> None:
        """Serve one keep-alive client connection; end it with an RST when a fault says so."""
        rfile = sock.makefile("rb")
        with self._lock:
            self._clients.add(sock)
        reset = True
        try:
            while not (self._down or self._stopping.is_set()):
                read = _read_request(sock, rfile)
                if read is None:
                    reset = self._down or self._stopping.is_set()
                    break
                req, keep_alive = read
                answer = self._handle(req)
                if answer is None:
                    break
                if answer.how == "cut":
                    sock.sendall(_cut_answer_bytes(answer, self.cut_bytes))
                    reset = False  # an orderly close: the client reads a short body, no error
                    break
                if answer.how == "drip":
                    if not self._drip(sock, _answer_bytes(answer, keep_alive)):
                        break
                else:
                    sock.sendall(_answer_bytes(answer, keep_alive))
                if not keep_alive:
                    reset = False
                    break
        except (OSError, ValueError, http.client.HTTPException) as exc:
            logger.debug("client connection ended: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._clients.discard(sock)
            rfile.close()
            if reset:
                _reset(sock)

    def _drip(self, sock: socket.socket, data: bytes) -> bool:
        """Send ``data`` a byte at a time; False when the client left or the proxy stops."""
        self.faulting.set()
        for index in range(len(data)):
            if self._stopping.wait(self.drip_seconds if index else 0):
                return False
            try:
                sock.sendall(data[index : index + 1])
            except OSError:
                return False
        return True

    def _decide(self, req: ProxiedRequest) -> tuple[str | None, int]:
        """The fault for ``req`` and, for partial kinds, how many upload units to forward."""
        with self._lock:
            kind: str | None = None
            if self._script and (self._script_match is None or self._script_match(req)):
                kind = self._script.pop(0)
            elif (
                self._rate
                and (self._plan_match is None or self._plan_match(req))
                and self._rng.random() < self._rate
            ):
                kind = self._rng.choice(self._kinds)
            if kind not in ("partial", "partial_reset"):
                return kind, 0
            # Partial needs a non-final chunk of 2+ units. A final chunk gets the fault that
            # also lets the server act while the client loses the answer; others pass.
            content_range = (req.header("Content-Range") or "").strip()
            units = len(req.body) // UPLOAD_UNIT
            if req.method == "PUT" and _NON_FINAL.fullmatch(content_range) and units >= 2:
                return kind, self._rng.randint(1, units - 1)
            if req.method == "PUT" and req.body and _FINAL.fullmatch(content_range):
                return ("503_after" if kind == "partial" else "reset_after"), 0
            return None, 0

    def _handle(self, req: ProxiedRequest) -> _Answer | None:
        """Apply the fault decided for ``req``; the answer to send, or None to reset.

        When the upstream cannot be reached the client gets a 502 (event status None).
        """
        kind, units = self._decide(req)
        status: int | None = None
        answer: _Answer | None = None
        if kind == "delay_before":
            self._stopping.wait(self.stall_seconds)
        if kind is not None and _STATUS_BEFORE.fullmatch(kind):
            answer = _error_answer(int(kind[:3]))
        elif kind == "stall":
            self.faulting.set()
            self._stopping.wait(self.stall_seconds)
        elif kind != "reset_before":
            forwarded = req
            if units:
                match = _NON_FINAL.fullmatch((req.header("Content-Range") or "").strip())
                assert match is not None
                start, size = int(match.group(1)), units * UPLOAD_UNIT
                content_range = f"bytes {start}-{start + size - 1}/*"
                headers = [(k, v) for k, v in req.headers if k.lower() != "content-range"]
                forwarded = replace(
                    req,
                    headers=(*headers, ("Content-Range", content_range)),
                    body=req.body[:size],
                )
            upstream = self._forward(forwarded)
            status = upstream.status if upstream else None
            if upstream is None:
                answer = _error_answer(502)
            elif kind == "503_after":
                answer = _error_answer(503)
            elif kind == "stall_after":
                self.faulting.set()  # the server has it; the client waits for an answer
                self._stopping.wait(self.stall_seconds)
            elif kind in ("cut_body", "drip"):
                answer = upstream._replace(how="cut" if kind == "cut_body" else "drip")
            elif kind == "not_json":
                page = b"<html><body>OK</body></html>"
                answer = upstream._replace(
                    headers=[(n, v) for n, v in upstream.headers if n.lower() != "content-type"]
                    + [("Content-Type", "text/html")],
                    body=page,
                )
            elif kind == "no_size":
                answer = upstream._replace(body=_without_size(upstream.body))
            elif kind not in ("reset_after", "partial_reset", "stall_after"):
                answer = upstream
        event = Event(req.method, req.path, req.header("Content-Range"), kind, status)
        with self._lock:
            self.events.append(event)
        logger.debug("%s %s fault=%s upstream=%s", req.method, req.path, kind, status)
        return answer

    def _forward(self, req: ProxiedRequest) -> _Answer | None:
        """Send ``req`` over a fresh upstream connection and read the answer in full."""
        conn = http.client.HTTPConnection(*self._upstream, timeout=60)
        upstream_sock: socket.socket | None = None
        try:
            conn.connect()
            upstream_sock = conn.sock
            with self._lock:
                self._upstreams.add(upstream_sock)
            target = f"{req.path}?{req.query}" if req.query else req.path
            conn.putrequest(req.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in req.headers:
                if not _is_hop_by_hop(name) and name.lower() != "content-length":
                    conn.putheader(name, value)
            if req.body or req.header("Content-Length") or req.header("Transfer-Encoding"):
                conn.putheader("Content-Length", str(len(req.body)))
            conn.endheaders(req.body or None)
            with conn.getresponse() as response:
                body = response.read()
                keep_length = req.method == "HEAD"
                headers = [
                    (name, value)
                    for name, value in response.getheaders()
                    if not _is_hop_by_hop(name)
                    and (keep_length or name.lower() != "content-length")
                ]
                return _Answer(response.status, response.reason, headers, body)
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("upstream failed: %s %s: %s", req.method, req.path, type(exc).__name__)
            return None
        finally:
            if upstream_sock is not None:
                with self._lock:
                    self._upstreams.discard(upstream_sock)
            conn.close()


def _without_size(body: bytes) -> bytes:
    """A JSON object answer without its ``size`` field; any other body unchanged."""
    try:
        resource = json.loads(body)
    except ValueError:
        return body
    if not isinstance(resource, dict):
        return body
    resource.pop("size", None)
    return json.dumps(resource).encode()


def _check_kinds(kinds: Sequence[str]) -> None:
    unknown = sorted(
        kind for kind in set(kinds) - set(FAULT_KINDS) if not _STATUS_BEFORE.fullmatch(kind)
    )
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {FAULT_KINDS}")
