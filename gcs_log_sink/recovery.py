"""Upload one spooled segment into its object: resuming its session where GCS stands.

Used by the handler's upload thread (for segments still being written, ``wait_for_more``
waits for frames) and by ``gcs-log-sink recover`` / a handler starting on a dead process's
spool (every segment is then complete: no more frames will come).

A segment's session URL is saved before its first byte is sent, so after a crash the
session is resumed: GCS says how many bytes it holds, exactly the rest is sent from the
spool, and the object is finalized and checked (CRC32C and size of every spooled byte). A
session GCS no longer knows (expired after about a week) becomes a new object whose name
ends in ``.recovered-<time>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import google_crc32c

from . import errors
from ._chunks import crc32c_base64
from .spool import Segment, SpoolCorruptError, dead_spools
from .stream import GCSObjectStream

__all__ = ["recover_all", "ship_segment"]

Report = Callable[[str, str], None]


def recovered_name(name: str) -> str:
    return f"{name}.recovered-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def _open(segment: Segment, client: Any, options: dict[str, Any]) -> GCSObjectStream:
    for _ in range(100):
        try:
            stream = GCSObjectStream(segment.bucket, segment.name, client=client, **options)
        except errors.PreconditionFailedError:
            segment.state["name"] = recovered_name(segment.name) + f"-{time.monotonic_ns()}"
            continue
        # The URL is on disk before any byte is sent: a crash from here on is resumable.
        segment.state["session_url"] = stream._session_url
        segment.save()
        return stream
    raise errors.UploadError("no free object name", bucket=segment.bucket, name=segment.name)


def ship_segment(
    segment: Segment,
    *,
    client: Any,
    options: dict[str, Any],
    report: Report,
    wait_for_more: Callable[[], bool] | None = None,
) -> int:
    """Send ``segment`` to GCS, finalize, verify, delete it; the number of records shipped.

    ``wait_for_more()`` is called when no complete frame is left and the segment is not
    sealed; it returns False to stop waiting (the segment then stays in the spool).
    Raises :class:`~gcs_log_sink.UploadError` when GCS fails; the segment stays.
    """
    stream: GCSObjectStream | None = None
    skip = 0
    if segment.session_url:
        try:
            stream = GCSObjectStream(
                segment.bucket,
                segment.name,
                client=client,
                _resume=(segment.session_url, segment.prefix_crc),
                **options,
            )
            skip = stream.resumed_at
        except errors.SessionLostError:
            segment.state.update(name=recovered_name(segment.name), session_url=None)
            report("expired", f"an upload session expired; shipping as {segment.name}")
    if stream is None:
        stream = _open(segment, client, options)
    crc, size, records, position, last_pass = 0, 0, 0, 0, False
    while True:
        progressed = False
        try:
            for frame in segment.frames(position):
                position, progressed = frame.end, True
                crc = google_crc32c.extend(crc, frame.payload)
                size += len(frame.payload)
                records += frame.records
                data = frame.payload
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                if data:
                    stream.write(data)
        except SpoolCorruptError as exc:
            report("corrupt", f"{exc}; shipping the {records} records before it")
            break
        if progressed:
            continue
        if wait_for_more is None or segment.sealed:
            if last_pass:  # frames appended just before the seal were read on this pass
                break
            last_pass = wait_for_more is None or segment.sealed
            continue
        if not wait_for_more():
            stream._detach()  # neither finalize a partial segment nor cancel its session
            return 0
    stream.close()
    if stream.resumed_at and not size and stream.size == stream.resumed_at:
        # Finalized before the crash, and its data already deleted: only the state was left.
        segment.remove()
        return 0
    if stream.size != size or stream.crc32c != crc32c_base64(crc):
        raise errors.IntegrityError(
            f"object holds {stream.size} bytes (CRC32C {stream.crc32c}); the spool "
            f"{size} bytes (CRC32C {crc32c_base64(crc)}); the segment is kept",
            bucket=segment.bucket,
            name=segment.name,
        )
    segment.remove()
    return records


def recover_all(root: str, *, client: Any, report: Report, options: dict[str, Any]) -> int:
    """Ship every segment left under ``root`` by processes that are gone; records shipped."""
    shipped = 0
    with dead_spools(root) as spools:
        for _, segments in spools:
            for segment in segments:
                shipped += ship_segment(segment, client=client, options=options, report=report)
    return shipped
