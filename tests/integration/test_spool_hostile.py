"""The spool under ordinary and hostile conditions (issue 10): every promise on the real server."""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from faultproxy import FaultProxy
from helpers import bucket_text, emulator_env, kill_a_spooled_build

from gcs_log_sink import GCSHandler, GCSObjectStream
from gcs_log_sink._localgcs import LocalGCS
from gcs_log_sink.recovery import ship_segment
from gcs_log_sink.spool import Segment, Spool, dead_spools

RECORD = "rec {:06d} " + "r" * 60


def numbers(client: Any, bucket: str) -> list[int]:
    """Record numbers in the bucket, objects in name order (one process: seq order)."""
    text = bucket_text(client, bucket)
    return [int(match) for match in re.findall(r"^rec (\d{6}) r{60}$", text, re.MULTILINE)]


def spooled_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.rglob("*") if p.is_file() and p.name != "lock")


def recover_command(endpoint: str, spool: Path) -> subprocess.CompletedProcess[str]:
    """``gcs-log-sink recover SPOOL`` run to completion against ``endpoint``."""
    return subprocess.run(
        [sys.executable, "-m", "gcs_log_sink", "recover", str(spool)],
        env=emulator_env(endpoint), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("run", range(8))
def test_frequent_rotation_with_a_healthy_gcs_ships_every_record_once(
    client: Any, bucket: str, tmp_path: Path, run: int
) -> None:
    """Spool + rotation every few KB (and every 50 ms): each record once, in order, no empty object.

    Breaks when a thread deletes a file it does not own (the worker used to remove the upload
    thread's in-flight state file as "crash debris", leaving a segment unshipped and a 0-byte
    object finalized by garbage collection).
    """
    handler = GCSHandler(
        bucket,
        client=client,
        spool_dir=str(tmp_path),
        rotate_seconds=1 if run % 2 else None,
        clock=lambda: time.time() * 20,  # a window every 50 ms
        max_bytes=3_000 + 500 * run,
        chunk_size=256 * 1024,
        close_timeout=60,
        compression="gzip" if run >= 6 else None,
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(1_500):
        handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
        if i % 300 == 0:
            handler.flush()
    # Written before close(): see test_close_right_after_a_window_end_ships_the_queue for the
    # handler's own race at close.
    handler.flush()
    handler.close()
    blobs = sorted(client.list_blobs(bucket), key=lambda blob: blob.name)
    assert [] == [blob.name for blob in blobs if not blob.size]
    if run >= 6:  # gzip: every object one complete gzip stream
        text = b"".join(gzip.decompress(object_bytes(client, bucket, b.name)) for b in blobs)
        assert list(range(1_500)) == numbers_in(text)
    else:
        assert list(range(1_500)) == numbers(client, bucket)
    assert (0, 0) == (handler.dropped, handler.lost)
    assert [] == spooled_files(tmp_path)


# -- building a dead process's spool directly: fast and exact ---------------------------------


def lines(start: int, count: int) -> list[bytes]:
    return [(RECORD.format(i) + "\n").encode() for i in range(start, start + count)]


def dead_segment(
    root: Path,
    stream: str,
    bucket: str,
    name: str,
    frames: list[tuple[bytes, int]],
    *,
    compression: str | None = None,
    sealed: bool = True,
) -> Segment:
    """A segment as a process that died left it (the lock released, nothing shipped)."""
    spool = Spool(str(root), stream)
    segment = spool.create(bucket, name, compression=compression)
    for payload, records in frames:
        segment.write(payload, records)
    if sealed:
        segment.state["records"] = sum(records for _, records in frames)
        segment.seal()
    else:
        segment.sync()
        os.close(segment._fd or -1)  # the writer died: its descriptor goes with it
        segment._fd = None
    spool.release()
    return segment


def open_session(client: Any, segment: Segment, data: bytes) -> int:
    """Open the segment's session and send ``data`` as a dead uploader would; bytes GCS holds."""
    stream = GCSObjectStream(segment.bucket, segment.name, client=client, chunk_size=256 * 1024)
    stream.write(data)
    segment.state["session_url"] = stream._session_url
    segment.save()
    stream._detach()
    answer = requests.put(segment.session_url, headers={"Content-Range": "bytes */*"}, timeout=10)
    assert 308 == answer.status_code
    return int(answer.headers["Range"].split("-")[1]) + 1


def damage(segment: Segment, position: int) -> None:
    """Flip bytes inside the frame that starts at ``position`` (its payload)."""
    data = bytearray(Path(segment.data_path).read_bytes())
    data[position + 20 : position + 24] = b"\xde\xad\xbe\xef"
    Path(segment.data_path).write_bytes(bytes(data))


def frame_starts(segment: Segment) -> list[int]:
    return [0, *(frame.end for frame in segment.frames())][:-1]


def object_bytes(client: Any, bucket: str, name: str) -> bytes:
    return bytes(client.bucket(bucket).blob(name).download_as_bytes())


# -- 1. a stream is never finalized by garbage collection --------------------------------------


def test_a_session_whose_url_cannot_be_saved_is_never_finalized(
    client: Any, bucket: str, tmp_path: Path
) -> None:
    """The state file cannot be written after a session opened: no object, not even empty.

    Breaks when the opened stream is dropped unclosed: IOBase.__del__ finalizes it empty.
    """
    segment = dead_segment(tmp_path, "log", bucket, "x.log", [(b"".join(lines(0, 10)), 10)])
    spool = Spool(str(tmp_path), "log")
    (live,) = spool.segments()
    os.remove(live.state_path)
    os.mkdir(live.state_path)  # the save's rename now fails (as on a broken disk)
    live.state["sealed"] = True
    with pytest.raises(OSError, match="Is a directory"):
        ship_segment(
            live, client=client, options={}, report=lambda *_: None, wait_for_more=lambda: False
        )
    del live
    gc.collect()
    assert [] == [blob.name for blob in client.list_blobs(bucket)]
    spool.release()
    assert segment.id == 1


# -- 2. a full disk, a removed directory --------------------------------------------------------

FULL_DISK_CHILD = """
    import logging, resource, signal, sys
    from gcs_log_sink import GCSHandler
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    handler = GCSHandler(sys.argv[1], spool_dir=sys.argv[2], max_bytes=10_000_000,
                         close_timeout=60)
    handler.setFormatter(logging.Formatter("%(message)s"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    def burst(start):
        for i in range(start, start + 500):  # 37,500 bytes: one frame
            handler.emit(logging.makeLogRecord({"msg": f"rec {i:06d} {'r' * 60}"}))
        handler.flush()
    burst(0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, hard))  # the disk fills up
    burst(500)   # 22,500 bytes fit: a torn frame, cut back; these records are lost
    burst(1000)  # no room at all
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    burst(1500)
    burst(2000)
    handler.close()
    print(handler.lost, handler.dropped)
    """


def test_a_full_disk_loses_only_what_it_refused_and_later_records_ship(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """File-size limit hit mid-frame: that frame is cut back and counted lost; later ones ship.

    Breaks when a torn frame stays in the segment: every later frame is unreadable (2,500 of
    7,000 records neither shipped nor counted before).
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FULL_DISK_CHILD), bucket, str(tmp_path)],
        env=emulator_env(gcs.url), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    assert "cannot write the spool" in result.stderr
    assert "1000 0" == result.stdout.strip()  # two bursts lost, counted; none dropped
    assert [*range(500), *range(1500, 2500)] == numbers(client, bucket)
    assert [] == spooled_files(tmp_path)


def test_the_spool_directory_removed_mid_run_is_recreated(
    client: Any, bucket: str, tmp_path: Path
) -> None:
    """A temp cleaner deletes the spool directory while a segment is open: nothing is lost.

    Breaks when the writer goes on into the deleted file: 1,000 records unaccounted, lost=0.
    """
    spool_dir = tmp_path / "spool"
    handler = GCSHandler(bucket, client=client, spool_dir=str(spool_dir), close_timeout=60)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(1_000):
        handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
    handler.flush()
    shutil.rmtree(spool_dir)
    for i in range(1_000, 2_000):
        handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
    handler.flush()
    assert (spool_dir / "log" / "lock").exists()  # recreated, and locked again
    handler.close()
    assert list(range(2_000)) == numbers(client, bucket)
    assert (0, 0) == (handler.dropped, handler.lost)
    assert [] == spooled_files(spool_dir)


# -- 3. damage stays in its segment -----------------------------------------------------------


def test_recover_ships_every_good_segment_and_names_each_bad_one(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """Two streams: one damaged mid-segment, one intact. Both ship; only the bad one is named.

    Breaks when one bad segment aborts recovery of every other.
    """
    bad = dead_segment(
        tmp_path, "a", bucket, "a.log", [(b"".join(lines(i, 100)), 100) for i in range(0, 500, 100)]
    )
    damage(bad, frame_starts(bad)[3])
    dead_segment(tmp_path, "b", bucket, "b.log", [(b"".join(lines(1000, 300)), 300)])
    result = recover_command(gcs.url, tmp_path)
    assert 1 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    named = [line for line in result.stderr.splitlines() if bad.data_path in line]
    assert named, result.stderr
    assert "damaged at byte" in named[0]
    assert [*range(300)] == numbers_in(object_bytes(client, bucket, "a.log"))
    assert [*range(1000, 1300)] == numbers_in(object_bytes(client, bucket, "b.log"))
    assert [] == spooled_files(tmp_path)


def numbers_in(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"^rec (\d{6}) r{60}$", data, re.MULTILINE)]


def test_gcs_holding_more_than_the_intact_prefix_is_kept_and_reported(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """Damage below what GCS already holds: finalize what GCS holds, say by how much it differs.

    Breaks when recovery raises (it stopped the live upload thread for good, and 'recover'
    for every other segment).
    """
    records = lines(0, 10_000)  # 720,000 bytes in 10 frames
    frames = [(b"".join(records[i : i + 1000]), 1000) for i in range(0, 10_000, 1000)]
    segment = dead_segment(tmp_path, "log", bucket, "held.log", frames)
    held = open_session(client, segment, b"".join(records))
    assert 512 * 1024 == held  # two whole chunks
    damage(segment, frame_starts(segment)[2])  # intact: 144,000 bytes, far below what GCS holds
    result = recover_command(gcs.url, tmp_path)
    assert 1 == result.returncode, result.stderr
    assert f"GCS held {held} bytes, the spool only 144000 intact" in result.stderr
    assert b"".join(records)[:held] == object_bytes(client, bucket, "held.log")
    assert [] == spooled_files(tmp_path)


def test_a_new_handler_on_a_damaged_spool_keeps_shipping(
    client: Any, bucket: str, tmp_path: Path
) -> None:
    """A dead process's damaged segment does not stop the upload thread: new records ship.

    Breaks when the damage escapes ship_segment (the thread died; 0 of 100 records shipped).
    """
    records = lines(0, 10_000)
    frames = [(b"".join(records[i : i + 1000]), 1000) for i in range(0, 10_000, 1000)]
    segment = dead_segment(tmp_path, "log", bucket, "old.log", frames)
    open_session(client, segment, b"".join(records))
    damage(segment, frame_starts(segment)[2])
    handler = GCSHandler(
        bucket, client=client, spool_dir=str(tmp_path), prefix="new/", close_timeout=60
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(20_000, 20_100):
        handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
    handler.close()
    new = [blob.name for blob in client.list_blobs(bucket, prefix="new/")]
    assert 1 == len(new)
    assert [*range(20_000, 20_100)] == numbers_in(object_bytes(client, bucket, new[0]))
    assert 512 * 1024 == len(object_bytes(client, bucket, "old.log"))
    assert [] == spooled_files(tmp_path)


# -- 4. a state file is untrusted input -------------------------------------------------------


def test_hostile_state_files_are_named_and_the_rest_shipped(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """A JSON list, a missing name, a '..' name: each named, no traceback; the good one ships."""
    good = dead_segment(tmp_path, "log", bucket, "good.log", [(b"".join(lines(0, 10)), 10)])
    directory = Path(good.directory)
    hostile = {
        "0000000002.json": "[1, 2, 3]",
        "0000000003.json": json.dumps({"bucket": bucket}),
        "0000000004.json": json.dumps({"bucket": bucket, "name": "../../etc/passwd"}),
    }
    for name, text in hostile.items():
        (directory / name).write_text(text)
        (directory / name.replace(".json", ".seg")).write_bytes(Path(good.data_path).read_bytes())
    result = recover_command(gcs.url, tmp_path)
    assert 1 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    for name in hostile:
        assert str(directory / name) in result.stderr
    assert [*range(10)] == numbers_in(object_bytes(client, bucket, "good.log"))
    assert ["good.log"] == [blob.name for blob in client.list_blobs(bucket)]
    assert sorted(hostile) == sorted(p.name for p in directory.glob("*.json"))  # kept as found


class Listener:
    """A loopback port that records whether anyone sent it anything (it answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            with contextlib.suppress(OSError):
                self.received += conn.recv(65536)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_a_session_url_naming_another_host_gets_nothing(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """A state file whose session URL names another port: no token, no data go there.

    Breaks when recovery resumes any saved URL: it sent that host the bearer token and the
    spooled data, then reported success and deleted the spool.
    """
    listener = Listener()
    try:
        segment = dead_segment(tmp_path, "log", bucket, "x.log", [(b"".join(lines(0, 50)), 50)])
        segment.state["session_url"] = (
            f"http://127.0.0.1:{listener.port}/upload/storage/v1/b/{bucket}/o"
            "?uploadType=resumable&upload_id=stolen"
        )
        segment.save()
        result = recover_command(gcs.url, tmp_path)
    finally:
        listener.close()
    assert (0, b"") == (listener.connections, listener.received)
    assert 1 == result.returncode, result.stderr
    assert "does not point at this client's storage endpoint" in result.stderr
    assert "stolen" not in result.stderr
    assert [*range(50)] == numbers_in(object_bytes(client, bucket, "x.log"))
    assert [] == spooled_files(tmp_path)


# -- 5. gzip objects from a spool decompress completely ---------------------------------------


def gzip_frames(records: list[bytes], flush_every: int) -> list[tuple[bytes, int]]:
    """What a gzip GCSHandler spools before it dies: compressed records and sync flushes."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    frames = []
    for i, record in enumerate(records, 1):
        frames.append((compressor.compress(record), 1))
        if i % flush_every == 0:
            frames.append((compressor.flush(zlib.Z_SYNC_FLUSH), 0))
    return frames


def gzip_test_passes(data: bytes) -> None:
    """Python's gzip reads it to the end, and so does `gzip -t` where installed."""
    gzip.decompress(data)
    if shutil.which("gzip"):
        checked = subprocess.run(["gzip", "-t"], input=data, check=False)
        assert 0 == checked.returncode


@pytest.mark.parametrize("gcs_holds_past_the_flush", [False, True])
def test_an_unfinished_gzip_segment_recovers_as_valid_gzip(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path, gcs_holds_past_the_flush: bool
) -> None:
    """A gzip handler died before Z_FINISH: the object ends at the last flush and decompresses.

    With GCS already holding bytes past that flush point, they cannot be taken back: the
    prefix goes up under a fresh session. Breaks when the object ships without a trailer.
    """
    rng = random.Random(7)
    records = [(RECORD.format(i) + f" {rng.getrandbits(64):x}\n").encode() for i in range(20_000)]
    frames = gzip_frames(records, 5_000)[:-1]  # the last flush never happened
    segment = dead_segment(
        tmp_path, "log", bucket, "z.log.gz", frames, compression="gzip", sealed=False
    )
    if gcs_holds_past_the_flush:
        data = b"".join(payload for payload, _ in frames)
        held = open_session(client, segment, data)
        assert held > sum(len(p) for p, _ in gzip_frames(records, 5_000)[: 3 * 5_001])
    result = recover_command(gcs.url, tmp_path)
    assert 1 == result.returncode, result.stderr  # what was left out is reported
    shipped = object_bytes(client, bucket, "z.log.gz")
    gzip_test_passes(shipped)
    assert b"".join(records[:15_000]) == gzip.decompress(shipped)
    assert "15000 lines" in result.stderr
    assert [] == spooled_files(tmp_path)


# -- 6. locks are per stream directory --------------------------------------------------------


def test_shipping_leftovers_never_locks_out_a_live_stream(
    client: Any, bucket: str, tmp_path: Path
) -> None:
    """While leftovers of stream 'b' are being shipped, a handler for 'b' starts fine.

    Breaks when the shipper's lock on 'b' made GCSHandler(stream='b') raise SpoolLockedError.
    Every record, the dead process's and the new one's, ships exactly once.
    """
    dead_segment(tmp_path, "b", bucket, "dead.log", [(b"".join(lines(0, 100)), 100)])
    with dead_spools(str(tmp_path)) as spools:  # another handler's upload thread, mid-way
        ((_, held),) = spools
        handler = GCSHandler(
            bucket, client=client, spool_dir=str(tmp_path), stream="b", prefix="new/",
            close_timeout=60,
        )  # fmt: skip
        handler.setFormatter(logging.Formatter("%(message)s"))
        for i in range(100, 200):
            handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
        handler.close()
        shipped = [
            ship_segment(segment, client=client, options={}, report=lambda *_: None)
            for segment in held
        ]
    assert [0] == shipped  # handed over: the live stream shipped it
    assert [*range(100)] == numbers_in(object_bytes(client, bucket, "dead.log"))
    (new,) = [blob.name for blob in client.list_blobs(bucket, prefix="new/")]
    assert [*range(100, 200)] == numbers_in(object_bytes(client, bucket, new))
    assert [] == spooled_files(tmp_path)


# -- 7. recover says what it shipped ----------------------------------------------------------


def test_recover_reports_objects_bytes_and_lines(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """Five lines spooled as one record (a CLI capture chunk): 'recovered ... 5 lines'.

    Breaks when recover reports the writer's record count ("recovered 1 records").
    """
    chunk = b"".join(lines(0, 5))
    dead_segment(tmp_path, "out", bucket, "build/parts/00000.log", [(chunk, 1)])
    result = recover_command(gcs.url, tmp_path)
    assert 0 == result.returncode, result.stderr
    assert f"recovered 1 objects ({len(chunk)} bytes, 5 lines)" in result.stderr
    assert chunk == object_bytes(client, bucket, "build/parts/00000.log")


# -- handler-side behaviour the spool depends on -----------------------------------------------


@pytest.mark.parametrize("run", range(6))
def test_close_right_after_a_window_end_ships_the_queue(client: Any, bucket: str, run: int) -> None:
    """close() while the worker is finishing an ended window: every queued record still ships.

    Breaks when the worker, having taken an empty batch, blocks in the window-end finish,
    then sees _stopping and returns with the records queued meanwhile: they are neither
    shipped nor counted (half of the runs shipped 1,201 of 1,500, lost=0, dropped=0).
    """
    handler = GCSHandler(
        bucket, client=client, rotate_seconds=1, clock=lambda: time.time() * 20,
        max_bytes=5_500, chunk_size=256 * 1024, close_timeout=60,
    )  # fmt: skip
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(1_500):
        handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
        if i % 300 == 0:
            handler.flush()
    handler.close()
    assert list(range(1_500)) == numbers(client, bucket)


def test_a_killed_runs_leftovers_never_become_parts_of_the_next_build(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """run --spool-dir killed mid-build, then a new build on the same spool: build.log is its own.

    Breaks when the new build's handler reports the old build's leftovers through
    on_finalize: they became parts of the new build.log and the command exited 1.
    """
    spool = tmp_path / "spool"
    env = emulator_env(gcs.url)
    kill_a_spooled_build(env, bucket, spool, "b1")
    new = subprocess.run(
        [sys.executable, "-m", "gcs_log_sink", "run", "--spool-dir", str(spool),
         f"gs://{bucket}/b2", "--", sys.executable, "-c", "print('new')"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 0 == new.returncode, new.stderr
    assert b"new\n" == object_bytes(client, bucket, "b2/build.log")
    old_parts = [blob.name for blob in client.list_blobs(bucket, prefix="b1/")]
    assert b"old 1\nold 2\n" == b"".join(object_bytes(client, bucket, n) for n in old_parts)


GZIP_FULL_DISK_CHILD = """
    import glob, logging, os, random, resource, signal, sys
    from gcs_log_sink import GCSHandler
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    handler = GCSHandler(sys.argv[1], spool_dir=sys.argv[2], max_bytes=10_000_000,
                         compression="gzip", close_timeout=15)
    handler.setFormatter(logging.Formatter("%(message)s"))
    rng = random.Random(3)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    def burst(start):
        for i in range(start, start + 500):
            handler.emit(logging.makeLogRecord(
                {"msg": f"rec {i:06d} {'r' * 60} {rng.getrandbits(128):032x}"}))
        handler.flush()
    burst(0)
    (segment,) = glob.glob(os.path.join(sys.argv[2], "*", "*.seg"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(segment) + 2_000, hard))
    burst(500)   # its flush does not fit: the object ends at the flush before
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    burst(1000)
    handler.close()
    print(handler.lost, handler.dropped)
    """


def test_a_full_disk_under_gzip_leaves_only_complete_gzip_objects(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """The disk refuses a gzip handler's flush: every object still decompresses completely.

    Breaks when the handler goes on compressing into the broken stream (the object is not
    gzip past the failure) or never seals the segment (the upload thread waits forever).
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(GZIP_FULL_DISK_CHILD), bucket, str(tmp_path)],
        env=emulator_env(gcs.url), capture_output=True, text=True, timeout=60, check=False,
        cwd=tmp_path.parent,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    assert "500 0" == result.stdout.strip(), result.stderr  # one burst lost, counted
    blobs = sorted(client.list_blobs(bucket), key=lambda blob: blob.name)
    for blob in blobs:
        gzip_test_passes(object_bytes(client, bucket, blob.name))
    text = b"".join(gzip.decompress(object_bytes(client, bucket, b.name)) for b in blobs)
    shipped = [int(n) for n in re.findall(rb"^rec (\d{6}) ", text, re.MULTILINE)]
    assert [*range(500), *range(1000, 1500)] == shipped
    assert [] == spooled_files(tmp_path)


def test_segments_deleted_before_upload_are_counted_lost(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, tmp_path: Path
) -> None:
    """GCS away, sealed segments waiting, the spool directory deleted: each record is either
    shipped or counted in ``lost`` (and reported), none silently gone."""
    proxy.go_down()
    handler = GCSHandler(
        bucket, client=proxied, spool_dir=str(tmp_path / "spool"), max_bytes=20_000,
        timeout=1.0, close_timeout=60,
    )  # fmt: skip
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(2_000):
        handler.emit(logging.makeLogRecord({"msg": RECORD.format(i)}))
        if i == 999:
            handler.flush()
            shutil.rmtree(tmp_path / "spool")
    handler.flush()
    proxy.come_up()
    handler.close()
    shipped = numbers(client, bucket)
    assert shipped == sorted(set(shipped))
    assert 2_000 == len(shipped) + handler.lost
    assert shipped[-1000:] == list(range(1_000, 2_000))  # everything after the deletion


GZIP_CHILD = """
    import logging, random, sys
    from gcs_log_sink import GCSHandler
    handler = GCSHandler(sys.argv[1], spool_dir=sys.argv[2], compression="gzip",
                         chunk_size=256 * 1024, max_bytes=400_000, timeout=2.0)
    handler.setFormatter(logging.Formatter("%(message)s"))
    rng = random.Random(5)
    for i in range(100_000):
        handler.emit(logging.makeLogRecord(
            {"msg": f"rec {i:06d} {'r' * 60} {rng.getrandbits(64):016x}"}))
        if (i + 1) % 1000 == 0:
            handler.flush()
            print(f"flushed {i + 1}", flush=True)
    """


@pytest.mark.parametrize("kill_after", [3, 11])
def test_a_killed_gzip_handler_leaves_objects_that_decompress(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path, kill_after: int
) -> None:
    """SIGKILL a gzip handler mid-object; after recover, every object passes `gzip -t`.

    Breaks when an unsealed gzip segment is shipped as it is (no final block, no trailer).
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(GZIP_CHILD), bucket, str(tmp_path)],
        env=emulator_env(gcs.url), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    flushed = 0
    for line in child.stdout:
        flushed = int(line.split()[1])
        if flushed >= kill_after * 1000:
            break
    child.kill()
    child.wait()
    child.stdout.close()
    result = recover_command(gcs.url, tmp_path)
    assert "Traceback" not in result.stderr
    blobs = sorted(client.list_blobs(bucket), key=lambda blob: blob.name)
    for blob in blobs:
        gzip_test_passes(object_bytes(client, bucket, blob.name))
    text = b"".join(gzip.decompress(object_bytes(client, bucket, b.name)) for b in blobs)
    shipped = [int(n) for n in re.findall(rb"^rec (\d{6}) ", text, re.MULTILINE)]
    assert list(range(len(shipped))) == shipped  # in order, none twice, no gap
    assert flushed <= len(shipped)  # every flushed record
    assert [] == spooled_files(tmp_path)
