"""The fault proxy does what each fault claims, driven with plain ``requests`` through it.

The resumable protocol is spoken by hand here (not by the library), so each fault's effect
on the server is checked directly: with a status query, or by reading the object back.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from faultproxy import (
    FAULT_KINDS,
    UPLOAD_UNIT,
    FaultProxy,
    ProxiedRequest,
    is_chunk_upload,
    is_initiate,
    is_session_request,
    is_status_query,
)

from gcs_log_sink._localgcs import LocalGCS

BUCKET = "faultproxy"
STALL_SECONDS = 1.0


@pytest.fixture(scope="module")
def local_gcs() -> Iterator[LocalGCS]:
    """A server of this module's own, with one bucket."""
    with LocalGCS() as server:
        answer = requests.post(
            f"{server.url}/storage/v1/b",
            params={"project": "test"},
            json={"name": BUCKET},
            timeout=5,
        )
        answer.close()
        assert 200 == answer.status_code
        yield server


@pytest.fixture(scope="module")
def module_proxy(local_gcs: LocalGCS) -> Iterator[FaultProxy]:
    """One proxy in front of the server for the whole module; no thread of it outlives it."""
    with FaultProxy(local_gcs.url, seed=11, stall_seconds=STALL_SECONDS) as proxy:
        name = f"faultproxy:{port_of(proxy)}"
        yield proxy
    assert [] == [t.name for t in threading.enumerate() if t.name == name]


@pytest.fixture
def proxy(module_proxy: FaultProxy) -> FaultProxy:
    """The module's proxy with no events, no script, no plan, and up."""
    module_proxy.reset()
    return module_proxy


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A keep-alive client session, closed after the test."""
    with requests.Session() as client:
        yield client


def port_of(proxy: FaultProxy) -> int:
    """The proxy's port (its threads are named ``faultproxy:<port>``)."""
    return int(proxy.url.rsplit(":", 1)[1])


def open_session(session: requests.Session, proxy: FaultProxy) -> str:
    """Start a resumable upload of a fresh object; its session URL."""
    params = {"uploadType": "resumable", "name": f"obj-{uuid.uuid4().hex}"}
    url = f"{proxy.url}/upload/storage/v1/b/{BUCKET}/o"
    with session.post(url, params=params, json={}, timeout=5) as answer:
        assert 200 == answer.status_code
        return answer.headers["Location"]


def put(
    session: requests.Session, session_url: str, body: bytes, content_range: str, timeout: float = 5
) -> requests.Response:
    """PUT to the session; the answer, already read and closed."""
    headers = {"Content-Range": content_range}
    with session.put(session_url, data=body, headers=headers, timeout=timeout) as answer:
        return answer


def held(answer: requests.Response) -> int:
    """How many bytes a 308 says the server holds."""
    assert 308 == answer.status_code
    rng = answer.headers.get("Range")
    return 0 if rng is None else int(rng.removeprefix("bytes=0-")) + 1


def query_held(session: requests.Session, session_url: str) -> int:
    """Ask the server (through the proxy) how many bytes the session holds."""
    return held(put(session, session_url, b"", "bytes */*"))


def chunk(size: int, start: int = 0, total: int | None = None) -> tuple[bytes, str]:
    """A body of ``size`` bytes and its Content-Range (non-final unless ``total``)."""
    body = bytes((start + i) % 251 for i in range(size))
    return body, f"bytes {start}-{start + size - 1}/{'*' if total is None else total}"


def read_object(session: requests.Session, proxy: FaultProxy, session_url: str) -> bytes:
    """The finalized object's bytes (the session's final answer names it)."""
    name = put(session, session_url, b"", "bytes */*").json()["name"]
    url = f"{proxy.url}/storage/v1/b/{BUCKET}/o/{name}"
    with session.get(url, params={"alt": "media"}, timeout=5) as answer:
        assert 200 == answer.status_code
        return answer.content


def test_passes_through_a_whole_upload(session: requests.Session, proxy: FaultProxy) -> None:
    """Without faults an upload works and session URLs point back at the proxy."""
    session_url = open_session(session, proxy)
    assert session_url.startswith(proxy.url + "/")
    first, first_range = chunk(2 * UPLOAD_UNIT)
    assert 2 * UPLOAD_UNIT == held(put(session, session_url, first, first_range))
    rest, rest_range = chunk(1000, start=2 * UPLOAD_UNIT, total=2 * UPLOAD_UNIT + 1000)
    assert 200 == put(session, session_url, rest, rest_range).status_code
    assert first + rest == read_object(session, proxy, session_url)
    assert [] == proxy.faults()
    assert [first_range, rest_range] == [e.content_range for e in proxy.events[1:3]]


def test_forwards_a_chunked_request_body(session: requests.Session, proxy: FaultProxy) -> None:
    """A client body sent with Transfer-Encoding: chunked reaches the server whole."""
    session_url = open_session(session, proxy)
    headers = {"Content-Range": "bytes 0-5/6"}
    with session.put(
        session_url, data=iter([b"abc", b"def"]), headers=headers, timeout=5
    ) as answer:
        assert 200 == answer.status_code
    assert b"abcdef" == read_object(session, proxy, session_url)


@pytest.mark.parametrize("kind", ["503_before", "429_before"])
def test_before_faults_never_reach_the_server(
    session: requests.Session, proxy: FaultProxy, kind: str
) -> None:
    """503_before and 429_before answer with an error and leave the offset unchanged."""
    session_url = open_session(session, proxy)
    proxy.script([kind], match=is_chunk_upload)
    answer = put(session, session_url, *chunk(UPLOAD_UNIT))
    assert int(kind[:3]) == answer.status_code
    assert int(kind[:3]) == answer.json()["error"]["code"]
    assert 0 == query_held(session, session_url)
    assert [(kind, None)] == [(e.kind, e.upstream_status) for e in proxy.faults()]


def test_reset_before_never_reaches_the_server(
    session: requests.Session, proxy: FaultProxy
) -> None:
    """reset_before resets the connection and leaves the offset unchanged."""
    session_url = open_session(session, proxy)
    proxy.script(["reset_before"], match=is_chunk_upload)
    with pytest.raises(requests.ConnectionError):
        put(session, session_url, *chunk(UPLOAD_UNIT))
    assert 0 == query_held(session, session_url)
    assert [("reset_before", None)] == [(e.kind, e.upstream_status) for e in proxy.faults()]


def test_503_after_persists_the_chunk(session: requests.Session, proxy: FaultProxy) -> None:
    """503_after answers 503 although the server stored the chunk."""
    session_url = open_session(session, proxy)
    proxy.script(["503_after"], match=is_chunk_upload)
    assert 503 == put(session, session_url, *chunk(UPLOAD_UNIT)).status_code
    assert UPLOAD_UNIT == query_held(session, session_url)
    assert [("503_after", 308)] == [(e.kind, e.upstream_status) for e in proxy.faults()]


def test_reset_after_persists_the_chunk(session: requests.Session, proxy: FaultProxy) -> None:
    """reset_after resets the connection although the server stored the chunk."""
    session_url = open_session(session, proxy)
    proxy.script(["reset_after"], match=is_chunk_upload)
    with pytest.raises(requests.ConnectionError):
        put(session, session_url, *chunk(UPLOAD_UNIT))
    assert UPLOAD_UNIT == query_held(session, session_url)
    assert [("reset_after", 308)] == [(e.kind, e.upstream_status) for e in proxy.faults()]


def test_partial_persists_fewer_units(session: requests.Session, proxy: FaultProxy) -> None:
    """partial answers 308 with a shorter Range, a multiple of 256 KiB; resuming completes."""
    session_url = open_session(session, proxy)
    proxy.script(["partial"], match=is_chunk_upload)
    body, content_range = chunk(4 * UPLOAD_UNIT)
    kept = held(put(session, session_url, body, content_range))
    assert 0 == kept % UPLOAD_UNIT
    assert UPLOAD_UNIT <= kept < len(body)
    assert kept == query_held(session, session_url)
    rest, rest_range = chunk(len(body) - kept, start=kept, total=len(body))
    assert 200 == put(session, session_url, rest, rest_range).status_code
    assert body == read_object(session, proxy, session_url)
    assert [("partial", content_range, 308)] == [
        (e.kind, e.content_range, e.upstream_status) for e in proxy.faults()
    ]


def test_partial_reset_persists_fewer_units(session: requests.Session, proxy: FaultProxy) -> None:
    """partial_reset stores part of the chunk, then resets the connection."""
    session_url = open_session(session, proxy)
    proxy.script(["partial_reset"], match=is_chunk_upload)
    with pytest.raises(requests.ConnectionError):
        put(session, session_url, *chunk(4 * UPLOAD_UNIT))
    kept = query_held(session, session_url)
    assert 0 == kept % UPLOAD_UNIT
    assert UPLOAD_UNIT <= kept < 4 * UPLOAD_UNIT
    assert ["partial_reset"] == [e.kind for e in proxy.faults()]


def test_partial_falls_back_when_not_applicable(
    session: requests.Session, proxy: FaultProxy
) -> None:
    """partial passes a one-unit chunk through and turns into 503_after on a final chunk."""
    session_url = open_session(session, proxy)
    proxy.script(["partial", "partial"], match=is_chunk_upload)
    assert UPLOAD_UNIT == held(put(session, session_url, *chunk(UPLOAD_UNIT)))
    final = chunk(10, start=UPLOAD_UNIT, total=UPLOAD_UNIT + 10)
    assert 503 == put(session, session_url, *final).status_code
    assert UPLOAD_UNIT + 10 == len(read_object(session, proxy, session_url))
    chunks = [e for e in proxy.events if e.method == "PUT" and e.content_range != "bytes */*"]
    assert [None, "503_after"] == [e.kind for e in chunks]


def test_stall_times_out_the_client_only(session: requests.Session, proxy: FaultProxy) -> None:
    """A stalled request times out its client while other requests still get through."""
    session_url = open_session(session, proxy)
    proxy.script(["stall"], match=is_chunk_upload)
    with pytest.raises(requests.Timeout):
        put(session, session_url, *chunk(UPLOAD_UNIT), timeout=0.5)
    with requests.Session() as other:
        assert 0 == query_held(other, session_url)  # during the stall
    deadline = time.monotonic() + 5 * STALL_SECONDS
    while not proxy.faults() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [("stall", None)] == [(e.kind, e.upstream_status) for e in proxy.faults()]
    assert "stall" == proxy.events[-1].kind  # recorded when it ended, after the other request
    assert 0 == query_held(session, session_url)


def test_go_down_resets_connections_and_come_up_restores(
    session: requests.Session, proxy: FaultProxy
) -> None:
    """go_down resets open and new connections at once; come_up serves again."""
    session_url = open_session(session, proxy)
    idle = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=5)
    try:
        idle.request("GET", f"/storage/v1/b/{BUCKET}")
        with idle.getresponse() as answer:
            answer.read()
        proxy.go_down()
        assert idle.sock is not None
        with pytest.raises(ConnectionResetError):
            idle.sock.recv(1)
    finally:
        idle.close()
    with pytest.raises(requests.ConnectionError):
        put(session, session_url, *chunk(UPLOAD_UNIT))
    with requests.Session() as fresh, pytest.raises(requests.ConnectionError):
        fresh.get(f"{proxy.url}/storage/v1/b/{BUCKET}", timeout=5)
    proxy.come_up()
    assert 0 == query_held(session, session_url)


def test_plan_reproduces_with_the_same_seed(session: requests.Session, proxy: FaultProxy) -> None:
    """plan(rate=0.2) with the same seed faults the same requests the same way."""
    session_url = open_session(session, proxy)

    def run() -> list[int]:
        proxy.plan(rate=0.2, kinds=["503_before", "429_before"], match=is_status_query, seed=5)
        return [put(session, session_url, b"", "bytes */*").status_code for _ in range(40)]

    first = run()
    second = run()
    assert first == second
    assert 0 < sum(status != 308 for status in first) < 40
    kinds = [e.kind for e in proxy.events if e.content_range == "bytes */*"]
    assert kinds[:40] == kinds[40:]


def test_script_takes_precedence_over_plan(session: requests.Session, proxy: FaultProxy) -> None:
    """A script's faults come first, in order; then the plan applies again."""
    session_url = open_session(session, proxy)
    proxy.plan(rate=1.0, kinds=["429_before"], match=is_status_query)
    proxy.script([None, "503_before"], match=is_status_query)
    statuses = [put(session, session_url, b"", "bytes */*").status_code for _ in range(4)]
    assert [308, 503, 429, 429] == statuses


def test_nothing_recorded_holds_the_upload_id(session: requests.Session, proxy: FaultProxy) -> None:
    """Neither events nor log lines nor request reprs contain the session's upload_id."""
    log_lines: list[str] = []
    capture = logging.Handler(logging.DEBUG)
    capture.emit = lambda record: log_lines.append(record.getMessage())  # type: ignore[method-assign]
    proxy_logger = logging.getLogger("faultproxy")
    proxy_logger.addHandler(capture)
    old_level = proxy_logger.level
    proxy_logger.setLevel(logging.DEBUG)
    seen: list[str] = []

    def match(req: ProxiedRequest) -> bool:
        seen.append(repr(req))
        return is_chunk_upload(req)

    session_url = open_session(session, proxy)
    upload_id = session_url.split("upload_id=", 1)[1]
    quick = [kind for kind in FAULT_KINDS if not kind.startswith("stall") and kind != "drip"]
    proxy.script(quick, match=match)
    for _ in quick:
        start = query_held(session, session_url)
        with contextlib.suppress(requests.ConnectionError):
            put(session, session_url, *chunk(2 * UPLOAD_UNIT, start=start))
    proxy_logger.removeHandler(capture)
    proxy_logger.setLevel(old_level)
    assert len(quick) == len(proxy.faults())
    assert log_lines
    recorded = repr(proxy.events) + "".join(log_lines) + "".join(seen)
    assert "upload_id" not in recorded
    assert upload_id not in recorded


def test_stop_is_prompt_with_stalled_and_idle_connections(local_gcs: LocalGCS) -> None:
    """stop() returns within 2 s with a stalled and an idle connection, leaving no threads."""
    stalled = threading.Event()

    def match(req: ProxiedRequest) -> bool:
        stalled.set()
        return True

    errors: list[BaseException] = []

    def stalled_client(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", f"/storage/v1/b/{BUCKET}")
            conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(exc)
        finally:
            conn.close()

    proxy = FaultProxy(local_gcs.url, stall_seconds=30).start()
    port = port_of(proxy)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        idle.request("GET", f"/storage/v1/b/{BUCKET}")
        with idle.getresponse() as answer:
            answer.read()
        proxy.script(["stall"], match=match)
        client = threading.Thread(target=stalled_client, args=(port,))
        client.start()
        assert stalled.wait(5)
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 2.0
        client.join(5)
    finally:
        idle.close()
        proxy.stop()
    assert 1 == len(errors)
    assert [] == [t.name for t in threading.enumerate() if t.name == f"faultproxy:{port}"]


def test_predicates_classify_requests() -> None:
    """The ready-made predicates tell initiates, chunks, status queries and session requests."""

    def request(method: str, query: str, content_range: str | None, body: bytes) -> ProxiedRequest:
        headers = (("content-range", content_range),) if content_range else ()
        return ProxiedRequest(method, "/upload/storage/v1/b/b/o", query, headers, body)

    on_session = "uploadType=resumable&name=x&upload_id=secret"
    initiate = request("POST", "uploadType=resumable&name=x", None, b"{}")
    chunk_upload = request("PUT", on_session, "bytes 0-3/4", b"abcd")
    status = request("PUT", on_session, "bytes */*", b"")
    cancel = request("DELETE", on_session, None, b"")
    predicates = [is_initiate, is_chunk_upload, is_status_query, is_session_request]
    table = [[p(r) for p in predicates] for r in (initiate, chunk_upload, status, cancel)]
    expected = [
        [True, False, False, False],
        [False, True, False, True],
        [False, False, True, True],
        [False, False, False, True],
    ]
    assert expected == table
    assert "bytes 0-3/4" == chunk_upload.header("Content-Range")
    assert "secret" not in repr(status)


def test_rejects_unknown_kinds_and_non_loopback_upstreams(proxy: FaultProxy) -> None:
    """Unknown fault kinds and upstreams off loopback are refused."""
    with pytest.raises(ValueError, match="unknown fault kinds"):
        proxy.plan(rate=0.5, kinds=["teapot"])
    with pytest.raises(ValueError, match="unknown fault kinds"):
        proxy.script(["503_before", "teapot"])
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("http://192.0.2.1:80")


def test_cut_body_finalizes_but_the_client_reads_a_short_answer(
    session: requests.Session, proxy: FaultProxy
) -> None:
    """cut_body: the server finalizes; the client gets 200 and cut_bytes of the JSON, no error."""
    session_url = open_session(session, proxy)
    body, content_range = chunk(10, total=10)
    proxy.cut_bytes = 3
    proxy.script(["cut_body"], match=is_chunk_upload)
    try:
        answer = put(session, session_url, body, content_range)
    finally:
        proxy.cut_bytes = 1
    assert 200 == answer.status_code
    assert 3 == len(answer.content)
    assert body == read_object(session, proxy, session_url)


def test_not_json_keeps_the_status_and_replaces_the_body(
    session: requests.Session, proxy: FaultProxy
) -> None:
    """not_json: 200 with an HTML page; the server finalized all the same."""
    session_url = open_session(session, proxy)
    body, content_range = chunk(10, total=10)
    proxy.script(["not_json"], match=is_chunk_upload)
    answer = put(session, session_url, body, content_range)
    assert (200, "text/html") == (answer.status_code, answer.headers["Content-Type"])
    with pytest.raises(ValueError):  # noqa: PT011 - whatever json says
        answer.json()
    assert body == read_object(session, proxy, session_url)


def test_no_size_drops_only_the_size(session: requests.Session, proxy: FaultProxy) -> None:
    """no_size: the object answer keeps its other fields and loses ``size``."""
    session_url = open_session(session, proxy)
    proxy.script(["no_size"], match=lambda req: req.method == "PUT")
    resource = put(session, session_url, b"", "bytes */0").json()
    assert "size" not in resource
    assert "generation" in resource
    assert "0" == put(session, session_url, b"", "bytes */*").json()["size"]


def test_drip_sends_the_answer_a_byte_at_a_time(
    session: requests.Session, proxy: FaultProxy
) -> None:
    """drip: requests' read timeout restarts with every byte, so only wall time tells."""
    proxy.drip_seconds = 0.02
    proxy.script(["drip"], match=is_status_query)
    session_url = open_session(session, proxy)
    started = time.monotonic()
    try:
        assert 0 == query_held(session, session_url)
    finally:
        proxy.drip_seconds = 1.0
    elapsed = time.monotonic() - started
    assert elapsed > 1.5, elapsed  # over 75 bytes at 0.02 s, under a 5 s read timeout
