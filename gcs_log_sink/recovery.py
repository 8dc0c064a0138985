"""Upload one spooled segment into its object: resuming its session where GCS stands.

Used by the handler's upload thread (for segments still being written, ``wait_for_more``
waits for frames) and by ``gcs-log-sink recover`` / a handler starting on a dead process's
spool (every segment is then complete: no more frames will come).

A segment's session URL is saved before its first byte is sent, so after a crash the
session is resumed: GCS says how many bytes it holds, exactly the rest is sent from the
spool, and the object is finalized and checked (CRC32C and size of every spooled byte). A
session GCS no longer knows (expired after about a week) becomes a new object whose name
ends in ``.recovered-<time>``.

What a segment holds is untrusted input (see :func:`.spool.validate_state`): a session URL
is used only if it points at the client's own storage endpoint and upload path, so the
client's credentials and the spooled data never go anywhere else. Damage stays in its
segment: the intact prefix is shipped, the rest reported, and the caller goes on with the
next segment. Only :class:`~gcs_log_sink.UploadError` (GCS or the network failed; the
segment stays for a later try) and ``OSError`` (the spool's disk) leave this module.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c

from . import errors
from ._chunks import crc32c_base64
from ._gzipend import GzipCut, GzipEnd
from ._protocol import Finalized, Request, chunk_request, parse_upload_answer, redact
from ._transport import Answer, CredentialsError, Transport, TransportError
from .spool import Frame, Segment, SpoolCorruptError, dead_spools
from .stream import GCSObjectStream

__all__ = ["Tally", "recover_all", "recover_spools", "session_url_allowed", "ship_segment"]

Report = Callable[[str, str], None]


@dataclass
class Tally:
    """What recovery shipped and what it could not, for a one-line summary."""

    objects: int = 0
    records: int = 0  # as the writer counted them (a CLI capture counts chunks, not lines)
    lines: int = 0  # newline-terminated lines in the shipped objects (decompressed)
    bytes: int = 0  # object bytes finalized
    lost_records: int = 0  # records spooled but not shippable (damage, data gone)
    bad: list[str] = field(default_factory=list)  # one line per segment not fully shipped
    builds: list[str] = field(default_factory=list)  # gs:// URLs of build.logs composed


def recovered_name(name: str) -> str:
    return f"{name}.recovered-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def session_url_allowed(url: str, api_endpoint: str, bucket: str) -> bool:
    """Whether ``url`` is a resumable session of ``bucket`` on the client's own endpoint.

    Scheme, host, port and path must be exactly those :func:`._protocol.initiate_request`
    would have opened the session at; anything else (another host, another port, userinfo,
    a different path) could hand the bearer token and the data to someone else.
    """
    try:
        url_parts, endpoint = urlsplit(url), urlsplit(api_endpoint)
        url_port, endpoint_port = url_parts.port, endpoint.port
    except ValueError:
        return False
    defaults = {"http": 80, "https": 443}
    expected_path = f"{endpoint.path.rstrip('/')}/upload/storage/v1/b/{bucket}/o"
    return (
        url_parts.scheme in defaults
        and url_parts.scheme == endpoint.scheme
        and url_parts.hostname is not None
        and url_parts.hostname == endpoint.hostname
        and (url_port or defaults[url_parts.scheme]) == (endpoint_port or defaults[endpoint.scheme])
        and url_parts.username is None
        and url_parts.password is None
        and not url_parts.fragment
        and unquote(url_parts.path) == expected_path
        and bool(parse_qs(url_parts.query).get("upload_id"))
    )


def _is_gzip(segment: Segment) -> bool:
    if "compression" in segment.state:
        return bool(segment.state["compression"] == "gzip")
    # Written before segments said so: a GCSHandler's gzip objects end in .gz; a
    # GCSObjectStream's spool (directory object-<name>) holds bytes we must not change.
    return segment.name.endswith(".gz") and not os.path.basename(segment.directory).startswith(
        "object-"
    )


class _Beyond(Exception):
    """GCS holds ``size`` bytes, more than the spool's shippable prefix."""

    def __init__(self, size: int) -> None:
        self.size = size


@dataclass
class _Plan:
    """What the object will hold: frames through file ``position`` capped at ``size``
    object bytes, then ``tail``."""

    position: int
    size: int
    crc: int
    tail: bytes
    records: int
    lines: int
    why_short: str | None = None  # what was left out, for the report

    @property
    def total(self) -> int:
        return self.size + len(self.tail)

    @property
    def total_crc(self) -> int:
        return google_crc32c.extend(self.crc, self.tail) if self.tail else self.crc


class _Scan:
    """Running totals over a segment's frames, and where the object can end."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.gzip = GzipEnd() if _is_gzip(segment) else None
        self.position = 0
        self.size = 0
        self.crc = 0
        self.records = 0
        self.lines = 0
        self.damage: SpoolCorruptError | None = None

    def frames(self, position: int) -> Iterator[Frame]:
        """The segment's frames from ``position``; damage stops them and is remembered."""
        try:
            yield from self.segment.frames(position)
        except SpoolCorruptError as exc:
            self.damage = exc

    def add(self, frame: Frame) -> None:
        self.position = frame.end
        self.size += len(frame.payload)
        self.crc = google_crc32c.extend(self.crc, frame.payload)
        self.records += frame.records
        if self.gzip is not None:
            failed_at = self.segment.state.get("failed_at")
            if failed_at is not None and frame.end > failed_at:
                # After a write that failed, the compressor's output lacks that frame: the
                # deflate stream cannot be trusted past it.
                self.gzip.broken = True
                self.gzip.trailing += len(frame.payload)
            else:
                self.gzip.feed(frame.payload, frame.records, frame.end)
        else:
            self.lines += frame.payload.count(b"\n")

    def plan(self) -> _Plan:
        damage = f"{self.damage}" if self.damage is not None else None
        if self.gzip is None:
            return _Plan(self.position, self.size, self.crc, b"", self.records, self.lines, damage)
        cut: GzipCut | None = self.gzip.cut
        if self.gzip.complete and cut is not None and not self.gzip.trailing:
            return _Plan(cut.position, cut.size, self.crc, b"", cut.records, cut.lines, damage)
        if cut is None:
            why = "no complete gzip block was spooled"
            return _Plan(0, 0, 0, b"", 0, 0, f"{damage}; {why}" if damage else why)
        crc = self.segment.prefix_crc(cut.size) if cut.size != self.size else self.crc
        why = (
            f"the gzip stream was not finished; ended after its last flush point "
            f"({self.size - cut.size} compressed bytes after it left out)"
        )
        return _Plan(
            cut.position, cut.size, crc, cut.tail, cut.records, cut.lines,
            f"{damage}; {why}" if damage else why,
        )  # fmt: skip


def ship_segment(
    segment: Segment,
    *,
    client: Any,
    options: dict[str, Any],
    report: Report,
    wait_for_more: Callable[[], bool] | None = None,
    tally: Tally | None = None,
    on_lost: Callable[[int], None] | None = None,
) -> int:
    """Send ``segment`` to GCS, finalize, verify, delete it; the number of records shipped.

    ``wait_for_more()`` is called when no complete frame is left and the segment is not
    sealed; it returns False to stop waiting (the segment then stays in the spool).
    Raises :class:`~gcs_log_sink.UploadError` when GCS fails (the segment stays: try
    again later; an :class:`~gcs_log_sink.IntegrityError` will not change by retrying),
    ``OSError`` when the spool's disk does. Everything else about a segment (a bad state
    file, damage, a foreign session URL) is reported through ``report`` and the segment
    shipped as far as it can be: the caller goes on with the next one.
    ``on_lost(n)`` is told of records that were spooled but cannot be shipped.
    """
    tally = tally if tally is not None else Tally()
    guard = segment.guard()  # held below: one shipper per segment in this process
    with guard.lock:
        if segment.handed_over:
            return 0  # a live stream of this process took the directory: it ships this
        if wait_for_more is None and not segment.reload():
            return 0  # shipped and removed by another shipper meanwhile
        if segment.problem is not None:
            message = f"spool segment {segment.state_path} is not used: {segment.problem}"
            tally.bad.append(message)
            report("bad-state", message)
            return 0
        shipment = _Shipment(segment, client, options, report, wait_for_more, tally, on_lost)
        try:
            return shipment.run()
        except (errors.UploadError, OSError):
            raise
        except Exception as exc:  # a bug or a surprise: keep the segment, go on with the next
            message = (
                f"spool segment {segment.data_path} was not shipped (kept for the next start): "
                f"unexpected {type(exc).__name__}: {redact(str(exc))}"
            )
            tally.bad.append(message)
            report("ship-error", message)
            return 0


class _Shipment:
    """One segment on its way: the session, the frames, the end, the check."""

    def __init__(
        self,
        segment: Segment,
        client: Any,
        options: dict[str, Any],
        report: Report,
        wait_for_more: Callable[[], bool] | None,
        tally: Tally,
        on_lost: Callable[[int], None] | None,
    ) -> None:
        self.segment = segment
        self.client = client
        self.options = options
        self.report = report
        self.wait_for_more = wait_for_more
        self.tally = tally
        self.on_lost = on_lost
        self.stream: GCSObjectStream | None = None
        self.scan: _Scan | None = None  # the frames read, once they are

    # -- the outline --------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            stream = self.stream
            if stream is not None and not stream.closed:
                # Never left for the garbage collector: IOBase.__del__ would finalize it.
                stream._detach()

    def _run(self) -> int:
        segment = self.segment
        plan: _Plan | None = None
        if self.wait_for_more is None or segment.sealed:
            # A leftover (or a sealed segment tried again): every frame is on disk. Decide
            # where the object ends before a byte is sent, so nothing past a damaged frame or
            # a gzip stream's end goes out.
            scan = self.scan = _Scan(segment)
            for frame in scan.frames(0):
                scan.add(frame)
            plan = scan.plan()
            if plan.total == 0:
                return self._nothing_to_ship(scan, plan)
        skip = self._start(plan)
        if skip is None:
            return 0  # done without sending (already finalized, or kept what GCS holds)
        if plan is None:
            plan = self._stream_live(skip)
            if plan is None:
                return 0  # stopped waiting: the segment stays for later
        else:
            self._send(plan, skip)
        return self._finish(plan)

    def _start(self, plan: _Plan | None) -> int | None:
        """Open or resume the session; how many object bytes GCS already holds.

        None when the segment needs no more sending: it was finalized before the crash, or
        GCS holds more than the spool can give and that is what was kept.
        """
        segment = self.segment
        url = segment.session_url
        endpoint = str(self.client.api_endpoint)
        if url is not None and not session_url_allowed(url, endpoint, segment.bucket):
            self._bad(
                "its saved session URL does not point at this client's storage endpoint; "
                "not used, the data goes up under a new session"
            )
            segment.state["session_url"] = None
            url = None
        if url is not None:
            limit = plan.size if plan is not None else None

            def prefix_crc(size: int) -> int:
                if limit is not None and size > limit:
                    raise _Beyond(size)
                return segment.prefix_crc(size)

            try:
                self.stream = GCSObjectStream(
                    segment.bucket, segment.name, client=self.client,
                    _resume=(url, prefix_crc), **self.options,
                )  # fmt: skip
            except errors.SessionLostError:
                segment.state.update(name=recovered_name(segment.name), session_url=None)
                self.report("expired", f"an upload session expired; shipping as {segment.name}")
            except (_Beyond, SpoolCorruptError) as exc:
                held = exc.size if isinstance(exc, _Beyond) else None
                return self._gcs_holds_more(url, plan, held)
            else:
                if self.stream.size is not None:  # finalized before the crash
                    self._already_finalized(plan)
                    return None
                return self.stream.resumed_at
        self.stream = self._open(plan)
        return 0 if self.stream is not None else None

    # -- sending ------------------------------------------------------------------------

    def _send(self, plan: _Plan, skip: int) -> None:
        """Frames through ``plan.position`` (at most ``plan.size`` bytes), then the tail."""
        assert self.stream is not None
        sent = 0
        if plan.size:
            for frame in self.segment.frames():
                data = frame.payload[: plan.size - sent]
                sent += len(data)
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                if data:
                    self.stream.write(data)
                if sent >= plan.size or frame.end >= plan.position:
                    break  # never read on: what follows may be the damage
        if sent != plan.size:  # pragma: no cover - the file changed under a locked spool
            raise errors.IntegrityError(
                "the spooled data changed while it was shipped; the segment is kept",
                bucket=self.segment.bucket,
                name=self.segment.name,
            )
        if plan.tail:
            self.stream.write(plan.tail[skip:] if skip else plan.tail)

    def _stream_live(self, skip: int) -> _Plan | None:
        """Send frames as the writer appends them, until it seals; the plan it ended with."""
        assert self.stream is not None
        assert self.wait_for_more is not None
        segment = self.segment
        scan = self.scan = _Scan(segment)
        last_pass = False
        while True:
            progressed = False
            for frame in scan.frames(scan.position):
                progressed = True
                scan.add(frame)
                data = frame.payload
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                if data:
                    self.stream.write(data)
            if scan.damage is not None:
                break
            if progressed:
                continue
            if segment.sealed:
                if last_pass:  # frames appended just before the seal were read on this pass
                    break
                last_pass = True
                continue
            if not self.wait_for_more():
                self.stream._detach()  # neither finalize a partial segment nor cancel it
                return None
        plan = scan.plan()
        if plan.total == 0:
            self.stream._detach()  # no empty objects: the session is left to expire
            self._nothing_to_ship(scan, plan)
            return None
        if plan.size == scan.size:
            if plan.tail:
                self.stream.write(plan.tail)
            return plan
        # The object must end before what was already sent (damage inside a gzip stream):
        # GCS cannot take bytes back, so the session is left and the prefix sent anew.
        self.stream._detach()
        self.stream = None
        segment.state["session_url"] = None
        self.stream = self._open(plan)
        if self.stream is not None:
            self._send(plan, 0)
        return plan

    def _finish(self, plan: _Plan) -> int:
        segment = self.segment
        if self.stream is None:
            return 0
        self.stream.close()
        if self.stream.size != plan.total or self.stream.crc32c != crc32c_base64(plan.total_crc):
            raise errors.IntegrityError(
                f"object holds {self.stream.size} bytes (CRC32C {self.stream.crc32c}); the "
                f"spool {plan.total} bytes (CRC32C {crc32c_base64(plan.total_crc)}); the "
                "segment is kept",
                bucket=segment.bucket,
                name=segment.name,
            )
        self._shipped(plan)
        return plan.records

    # -- the cases ----------------------------------------------------------------------

    def _open(self, plan: _Plan | None) -> GCSObjectStream | None:
        """A new session (its URL saved before any byte is sent), or None if GCS already
        holds exactly this segment's object (a dead writer finalized it)."""
        segment = self.segment
        for _ in range(100):
            try:
                stream = GCSObjectStream(
                    segment.bucket, segment.name, client=self.client, **self.options
                )
            except errors.PreconditionFailedError:
                if plan is not None and self._object_matches(plan):
                    self._shipped(plan)
                    return None
                segment.state["name"] = recovered_name(segment.name) + f"-{time.monotonic_ns()}"
                continue
            segment.state["session_url"] = stream._session_url
            try:
                segment.save()  # the URL on disk before any byte is sent: resumable
            except BaseException:
                stream._detach()
                raise
            return stream
        raise errors.UploadError("no free object name", bucket=segment.bucket, name=segment.name)

    def _already_finalized(self, plan: _Plan | None) -> None:
        """The session was finalized before the crash: done if it holds what we would send."""
        assert self.stream is not None
        segment = self.segment
        size = self.stream.size or 0
        if plan is None:  # an unsealed live segment: the writer is this process
            raise errors.IntegrityError(
                "GCS finalized this object while it was still being spooled",
                bucket=segment.bucket,
                name=segment.name,
            )
        if size == plan.total and self.stream.crc32c == crc32c_base64(plan.total_crc):
            self._shipped(plan)
            return
        if size > plan.size and not plan.tail:
            self._kept_what_gcs_holds(plan, size)
            return
        raise errors.IntegrityError(
            f"GCS finalized {size} bytes (CRC32C {self.stream.crc32c}); the spool holds "
            f"{plan.total} bytes (CRC32C {crc32c_base64(plan.total_crc)}); the segment is kept",
            bucket=segment.bucket,
            name=segment.name,
        )

    def _gcs_holds_more(self, url: str, plan: _Plan | None, held: int | None) -> int | None:
        """The session holds more than the spool's shippable prefix (damage, a lost tail).

        Plain data: what GCS holds was sent from this spool before the damage, so it is
        kept (finalized as is, its prefix checked against the spool). A gzip stream must
        end at a flush point, so its prefix goes up anew under a fresh session.
        """
        segment = self.segment
        if plan is None or held is None:
            # A live segment whose frames are damaged below what GCS holds: read it all.
            scan = self.scan = _Scan(segment)
            for frame in scan.frames(0):
                scan.add(frame)
            plan = scan.plan()
            if held is None:
                held = _session_size(self.client, url, self.options, segment)
        if plan.tail or segment.state.get("compression") == "gzip" or _is_gzip(segment):
            self._bad(
                f"GCS holds {held} bytes of an unfinished gzip stream, beyond the "
                f"{plan.size} bytes that can end it; sending those under a new session"
            )
            segment.state["session_url"] = None
            if plan.total == 0:
                return None
            self.stream = self._open(plan)
            return 0 if self.stream is not None else None
        finalized = _finalize_as_is(self.client, url, held, self.options, segment)
        self._kept_what_gcs_holds(plan, held if finalized.size is None else finalized.size)
        return None

    def _kept_what_gcs_holds(self, plan: _Plan, size: int) -> None:
        segment = self.segment
        if plan.size:
            try:
                prefix = _blob(self.client, segment).download_as_bytes(start=0, end=plan.size - 1)
            except Exception as exc:  # google-cloud-storage's own errors: GCS failed
                raise errors.UploadError(
                    f"cannot read the object back to check it: {type(exc).__name__}",
                    bucket=segment.bucket,
                    name=segment.name,
                ) from None
            if google_crc32c.value(prefix) != plan.crc:
                raise errors.IntegrityError(
                    f"GCS holds {size} bytes whose first {plan.size} differ from the spool's; "
                    "the segment is kept",
                    bucket=segment.bucket,
                    name=segment.name,
                )
        self._bad(
            f"GCS held {size} bytes, the spool only {plan.size} intact "
            f"({plan.why_short or 'its tail is missing'}); kept the {size} bytes GCS holds "
            f"({size - plan.size} bytes beyond the spool not checked)"
        )
        self.tally.objects += 1
        self.tally.bytes += size
        self.tally.records += plan.records
        self.tally.lines += plan.lines
        segment.remove()

    def _nothing_to_ship(self, scan: _Scan, plan: _Plan) -> int:
        """No usable byte: no empty object is made; say what was lost."""
        segment = self.segment
        lost = self._lost_records(0)
        if lost or scan.damage is not None or scan.size:
            why = plan.why_short or (
                "its data file is gone" if not segment.has_data() else "it holds no frame"
            )
            self._bad(f"nothing in it could be shipped ({why})", lost)
        segment.remove()
        return 0

    def _shipped(self, plan: _Plan) -> None:
        segment = self.segment
        self.tally.objects += 1
        self.tally.bytes += plan.total
        self.tally.records += plan.records
        self.tally.lines += plan.lines
        if plan.why_short is not None:
            lost = self._lost_records(plan.records)
            self._bad(
                f"shipped {plan.records} records ({plan.total} bytes) as {segment.name}, "
                f"the rest could not be: {plan.why_short}",
                lost,
            )
        segment.remove()

    def _lost_records(self, shipped: int) -> int:
        """Records spooled but not shipped: counted in the frames where they can be.

        Records whose frame the disk refused were never spooled (the writer counted those);
        only when the data file itself is gone, or damaged, does the writer's own count at
        sealing (``records`` in the state) say how many were in it.
        """
        scan = self.scan
        spooled = scan.records if scan is not None else 0
        if scan is None or scan.damage is not None or not self.segment.has_data():
            spooled = max(spooled, int(self.segment.state.get("records", 0)))
        return max(spooled - shipped, 0)

    def _bad(self, why: str, lost: int = 0) -> None:
        lost_note = f"; {lost} records lost" if lost else ""
        message = redact(f"spool segment {self.segment.data_path}: {why}{lost_note}")
        self.tally.bad.append(message)
        self.tally.lost_records += lost
        if lost and self.on_lost is not None:
            self.on_lost(lost)
        self.report("spool-damage", message)

    def _object_matches(self, plan: _Plan) -> bool:
        segment = self.segment
        try:
            blob = self.client.bucket(segment.bucket).get_blob(segment.name)
        except Exception as exc:  # google-cloud-storage's own errors: GCS failed
            raise errors.UploadError(
                f"cannot read the existing object: {type(exc).__name__}",
                bucket=segment.bucket,
                name=segment.name,
            ) from None
        return (
            blob is not None
            and blob.size == plan.total
            and blob.crc32c == crc32c_base64(plan.total_crc)
        )


def _blob(client: Any, segment: Segment) -> Any:
    return client.bucket(segment.bucket).blob(segment.name)


def _send_or_pause(
    transport: Transport, request: Request, segment: Segment, attempt: int
) -> Answer | None:
    """One try of a recovery request: its answer, or None after a short pause when the wire
    failed (the caller tries again); unusable credentials are a PermissionDeniedError."""
    try:
        return transport.send(request)
    except TransportError:
        time.sleep(0.2 * (attempt + 1))
        return None
    except CredentialsError as exc:
        raise errors.PermissionDeniedError(
            str(exc), bucket=segment.bucket, name=segment.name
        ) from None


def _session_size(client: Any, url: str, options: dict[str, Any], segment: Segment) -> int:
    """How many bytes the session holds (status query; a few tries)."""
    from ._protocol import Persisted, status_request

    transport = Transport.for_client(client, float(options.get("timeout", 60.0)))
    for attempt in range(5):
        answer = _send_or_pause(transport, status_request(url), segment, attempt)
        if answer is None:
            continue
        try:
            outcome = parse_upload_answer(answer.status, answer.headers, answer.body)
        except ValueError:
            break
        if isinstance(outcome, Persisted):
            return outcome.offset
        if outcome.size is not None:
            return outcome.size
        break  # finalized, but the answer does not say how big: cannot tell
    raise errors.UploadError(
        "cannot ask the session where it stands", bucket=segment.bucket, name=segment.name
    )


def _finalize_as_is(
    client: Any, url: str, size: int, options: dict[str, Any], segment: Segment
) -> Finalized:
    """Finalize a session at the ``size`` bytes it holds, sending none (no checksum to give)."""
    transport = Transport.for_client(client, float(options.get("timeout", 60.0)))
    status: int | None = None
    for attempt in range(5):
        request = chunk_request(url, size, b"", total=size, crc32c=None)
        answer = _send_or_pause(transport, request, segment, attempt)
        if answer is None:
            continue
        status = answer.status
        if status in (200, 201):
            try:
                outcome = parse_upload_answer(answer.status, answer.headers, answer.body)
            except ValueError:
                break
            if isinstance(outcome, Finalized):
                return outcome
            break
        if status == 429 or status >= 500:
            time.sleep(0.2 * (attempt + 1))
            continue
        break
    raise errors.UploadError(
        "could not finalize the session at the bytes GCS holds",
        bucket=segment.bucket,
        name=segment.name,
        status=status,
    )


def recover_spools(root: str, *, client: Any, report: Report, options: dict[str, Any]) -> Tally:
    """Ship every segment left under ``root`` by processes that are gone.

    A segment that fails does not stop the others: its failure is reported and counted in
    ``Tally.bad``, and recovery goes on with the next one. Segments of a killed
    ``gcs-log-sink run`` name the build.log their parts make: once every such segment is
    shipped, the build's parts are composed into it (see :func:`compose_build`).
    """
    tally = Tally()
    builds: dict[tuple[str, str], bool] = {}  # (bucket, build.log) -> every part shipped
    parts_of: dict[tuple[str, str], str] = {}  # (bucket, build.log) -> its parts' prefix
    with dead_spools(root) as spools:
        for _, segments in spools:
            for segment in segments:
                target = segment.state.get("compose_into")
                key = (segment.bucket, target) if isinstance(target, str) else None
                parts = segment.name.rpartition("/")[0] + "/"
                bad_before = len(tally.bad)
                try:
                    ship_segment(
                        segment, client=client, options=options, report=report, tally=tally
                    )
                except (errors.UploadError, OSError) as exc:
                    message = (
                        f"spool segment {segment.data_path} was not shipped: {redact(str(exc))}"
                    )
                    tally.bad.append(message)
                    report(type(exc).__name__, message)
                if key is not None:
                    shipped = len(tally.bad) == bad_before
                    builds[key] = builds.get(key, True) and shipped
                    parts_of[key] = parts
    for (bucket, target), whole in builds.items():
        parts = parts_of[(bucket, target)]
        if not whole:
            report("compose", f"gs://{bucket}/{target} not composed: a part was not shipped")
            continue
        try:
            tally.builds.append(compose_build(client, bucket, parts, target))
        except Exception as exc:  # GCS refused: the parts stay, say so and go on
            report(
                "compose",
                f"gs://{bucket}/{target} not composed ({redact(str(exc))}); the parts stay "
                f"under gs://{bucket}/{parts}",
            )
    return tally


def compose_build(client: Any, bucket: str, parts_prefix: str, target: str) -> str:
    """Compose a killed build's parts (all objects under ``parts_prefix``, in name order)
    into ``target`` if it does not exist yet, check its size, delete the parts; its URL.

    The bytes the build printed before it was killed are no longer known, so the check is
    the parts' total size (GCS computes the composite's CRC32C from the parts' own).
    """
    from .compose import compose

    blobs = sorted(client.list_blobs(bucket, prefix=parts_prefix), key=lambda blob: blob.name)
    names = [blob.name for blob in blobs]
    expected = sum(int(blob.size or 0) for blob in blobs)
    if not names:
        raise errors.UploadError("no parts to compose", bucket=bucket, name=target)
    final = compose(client, bucket, names, target)
    if int(final.size or 0) != expected:
        with contextlib.suppress(Exception):
            client.bucket(bucket).blob(target).delete(if_generation_match=final.generation)
        raise errors.IntegrityError(
            f"composed {final.size} bytes from parts of {expected} bytes; build.log removed",
            bucket=bucket,
            name=target,
        )
    gcs_bucket = client.bucket(bucket)
    for name in names:
        gcs_bucket.blob(name).delete()
    return f"gs://{bucket}/{target}"


def recover_all(root: str, *, client: Any, report: Report, options: dict[str, Any]) -> int:
    """Ship every segment left under ``root`` by processes that are gone; records shipped."""
    return recover_spools(root, client=client, report=report, options=options).records
