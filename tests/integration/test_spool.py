"""The spool (spool_dir): crashes and outages lose no flushed record and double none."""

from __future__ import annotations

import logging
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from faultproxy import FaultProxy, is_chunk_upload, is_final_request, is_status_query
from helpers import bucket_text, client_for, emulator_env

from gcs_log_sink import GCSHandler
from gcs_log_sink._localgcs import LocalGCS
from gcs_log_sink.spool import SpoolLockedError

CHILD = """
    import logging, sys
    from gcs_log_sink import GCSHandler
    handler = GCSHandler(sys.argv[1], spool_dir=sys.argv[2], chunk_size=256 * 1024,
                         max_bytes=int(sys.argv[4]), timeout=2.0, close_timeout=0.5)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("crashy")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    count = int(sys.argv[3])
    for i in range(count):
        log.info("rec %06d %s", i, "r" * 60)
        if (i + 1) % 1000 == 0:
            handler.flush()
            print(f"flushed {i + 1}", flush=True)
    print("done", flush=True)
    import time
    time.sleep(3600)
    """


def numbers(client: Any, bucket: str) -> list[int]:
    """Record numbers in the bucket, objects in name order (one process: seq order)."""
    text = bucket_text(client, bucket)
    return [int(match) for match in re.findall(r"^rec (\d{6}) r{60}$", text, re.MULTILINE)]


def start_child(
    endpoint: str, bucket: str, spool: Path, count: int, max_bytes: int = 1 << 20
) -> subprocess.Popen[str]:
    """A process that logs ``count`` numbered records, flushing every 1,000."""
    env = emulator_env(endpoint)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), bucket, str(spool), str(count),
         str(max_bytes)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip


def recover_in_process(client: Any, bucket: str, spool: Path) -> GCSHandler:
    """A new handler on the same spool: it ships what the dead one left, then closes."""
    handler = GCSHandler(bucket, client=client, spool_dir=str(spool), close_timeout=60)
    handler.close()
    return handler


def recover_command(endpoint: str, spool: Path) -> subprocess.CompletedProcess[str]:
    """``gcs-log-sink recover SPOOL`` run to completion against ``endpoint``."""
    return subprocess.run(
        [sys.executable, "-m", "gcs_log_sink", "recover", str(spool)],
        env=emulator_env(endpoint),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def spooled_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.rglob("*") if p.is_file() and p.name != "lock")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_at_a_random_point_loses_no_flushed_record(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path, seed: int
) -> None:
    """Killed with SIGKILL mid-run: every flushed record once, in order; later ones at most once."""
    kill_after = random.Random(seed).randint(1, 60)  # flushes
    child = start_child(gcs.url, bucket, tmp_path / "spool", 100_000, max_bytes=300_000)
    assert child.stdout is not None
    flushed = 0
    for line in child.stdout:
        if line.startswith("flushed"):
            flushed = int(line.split()[1])
            if flushed >= kill_after * 1000:
                break
    time.sleep(random.Random(seed).random() * 0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    recover_in_process(client, bucket, tmp_path / "spool")
    shipped = numbers(client, bucket)
    assert list(range(flushed)) == shipped[:flushed]
    assert shipped == sorted(set(shipped))  # in order, none twice
    assert [] == spooled_files(tmp_path / "spool")


@pytest.mark.parametrize(
    ("kind", "match", "moment"),
    [
        ("stall", is_chunk_upload, "after the session opened, before its first chunk"),
        ("stall_after", is_chunk_upload, "after a chunk reached GCS, before its answer"),
        ("stall_after", is_final_request, "during finalization"),
    ],
)
def test_sigkill_at_each_moment_of_an_upload_recovers_exactly(
    gcs: LocalGCS,
    client: Any,
    bucket: str,
    tmp_path: Path,
    kind: str,
    match: Any,
    moment: str,
) -> None:
    """Killed at a precise moment of the protocol: recovery ships every record exactly once."""
    with FaultProxy(gcs.url, stall_seconds=30) as proxy:
        proxy.script([kind], match=match)
        # 300 KB objects: one 256 KiB chunk, then the final request.
        child = start_child(proxy.url, bucket, tmp_path / "spool", 5_000, max_bytes=300_000)
        assert proxy.faulting.wait(30), moment
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
        # The saved session URLs point at the proxy: recover through it, faults over.
        recover_in_process(client, bucket, tmp_path / "spool")
    shipped = numbers(client, bucket)
    assert shipped == sorted(set(shipped)), moment
    assert shipped[:1000] == list(range(1000)), moment  # at least what was flushed first


def test_gcs_down_for_the_middle_third_loses_nothing_and_memory_stays_flat(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """60 s of steady logging, GCS away from 20 s to 40 s: all shipped after, RSS flat."""
    with FaultProxy(gcs.url) as proxy:
        proxied = client_for(proxy.url)
        handler = GCSHandler(
            bucket,
            client=proxied,
            spool_dir=str(tmp_path / "spool"),
            max_bytes=2 * 1024 * 1024,
            timeout=1.0,
            close_timeout=60,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        log = logging.getLogger("outage")
        log.propagate = False
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        process = psutil.Process()
        rss: list[int] = []
        started = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - started) < 60:
            if 20 <= elapsed < 40 and not proxy._down:
                proxy.go_down()
            elif elapsed >= 40 and proxy._down:
                proxy.come_up()
            for _ in range(200):
                log.info("rec %06d %s", i, "r" * 60)
                i += 1
            if i % 10_000 == 0:
                rss.append(process.memory_info().rss)
            time.sleep(0.02)
        log.removeHandler(handler)
        handler.close()
    assert list(range(i)) == numbers(client, bucket)
    assert (0, 0) == (handler.dropped, handler.lost)
    assert max(rss) - min(rss[1:]) < 40 * 1024 * 1024, [r >> 20 for r in rss]
    assert [] == spooled_files(tmp_path / "spool")


def test_damaged_spool_ships_what_is_intact_and_says_what_is_not(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """A corrupted frame: recover ships the records before it, reports the damage, no crash."""
    spool = tmp_path / "spool"
    with FaultProxy(gcs.url) as proxy:
        proxy.go_down()  # nothing leaves: everything stays in the spool
        child = start_child(proxy.url, bucket, spool, 3_000, max_bytes=10 << 20)
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("flushed 3000"):
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    (segment,) = [p for p in spool.rglob("*.seg")]
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = b"\xde\xad\xbe\xef"
    segment.write_bytes(bytes(data))
    assert 0o600 == segment.stat().st_mode & 0o777

    result = recover_command(gcs.url, spool)
    assert 1 == result.returncode, result.stderr
    assert "damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert "upload_id" not in result.stderr
    shipped = numbers(client, bucket)
    assert len(shipped) > 0, result.stderr
    assert list(range(len(shipped))) == shipped  # the intact prefix, in order


def test_a_second_process_on_the_same_spool_gets_a_clear_error(
    client: Any, bucket: str, tmp_path: Path
) -> None:
    """Two handlers on one spool directory: the second is refused at construction."""
    first = GCSHandler(bucket, client=client, spool_dir=str(tmp_path))
    try:
        with pytest.raises(SpoolLockedError, match="in use by another live process"):
            GCSHandler(bucket, client=client, spool_dir=str(tmp_path))
    finally:
        first.close()
    GCSHandler(bucket, client=client, spool_dir=str(tmp_path)).close()  # free again


def test_spool_files_are_private(client: Any, bucket: str, tmp_path: Path) -> None:
    """The spool holds session URLs: directories 0700, files 0600."""
    handler = GCSHandler(bucket, client=client, spool_dir=str(tmp_path / "s"), max_bytes=1000)
    handler.emit(logging.makeLogRecord({"msg": "x" * 500}))
    handler.flush()
    paths = [tmp_path / "s", *(tmp_path / "s").rglob("*")]
    dirs = {p.name: p.stat().st_mode & 0o777 for p in paths if p.is_dir()}
    files = {p.name: p.stat().st_mode & 0o777 for p in paths if p.is_file()}
    handler.close()
    assert {"s": 0o700, "log": 0o700} == dirs
    assert {"lock", "0000000001.seg", "0000000001.json"} <= set(files)
    assert {0o600} == set(files.values())


STREAM_CHILD = """
    import os, sys
    from gcs_log_sink import GCSObjectStream
    out = GCSObjectStream(sys.argv[1], "streamed.bin", spool_dir=sys.argv[2],
                          chunk_size=256 * 1024)
    for i in range(40):
        out.write(bytes([i]) * 30_000)
        if i == 29:
            out.flush()
            print("flushed", flush=True)
    import time
    time.sleep(3600)
    """


def test_a_killed_stream_with_a_spool_is_recovered_by_the_command(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """GCSObjectStream(spool_dir) killed mid-object: 'recover' finalizes it, flushed bytes in."""
    env = emulator_env(gcs.url)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STREAM_CHILD), bucket, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert "flushed\n" == child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert not client.bucket(bucket).blob("streamed.bin").exists()  # never finalized

    result = recover_command(gcs.url, tmp_path)
    assert 0 == result.returncode, result.stderr
    data = client.bucket(bucket).blob("streamed.bin").download_as_bytes()
    written = b"".join(bytes([i]) * 30_000 for i in range(40))
    assert written[: 30 * 30_000] == data[: 30 * 30_000]  # everything flushed
    assert written.startswith(data)  # and nothing but what was written
    assert [] == spooled_files(tmp_path)


def test_a_full_spool_drops_the_oldest_and_says_so(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """GCS away and max_spool_bytes reached: oldest segments go, counted and noted in the log."""
    with FaultProxy(gcs.url) as proxy:
        proxied = client_for(proxy.url)
        proxy.go_down()
        handler = GCSHandler(
            bucket,
            client=proxied,
            spool_dir=str(tmp_path),
            max_bytes=20_000,
            max_spool_bytes=200_000,
            timeout=1.0,
            close_timeout=60,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        for i in range(10_000):
            handler.emit(logging.makeLogRecord({"msg": f"rec {i:06d} {'r' * 60}"}))
        handler.flush()
        proxy.come_up()
        handler.close()
    dropped = handler.dropped
    assert dropped > 0
    shipped = numbers(client, bucket)
    assert 10_000 == len(shipped) + dropped
    assert shipped == sorted(set(shipped))
    text = bucket_text(client, bucket)
    noted = sum(int(n) for n in re.findall(r"gcs_log_sink dropped (\d+) records", text))
    assert dropped == noted


def test_the_upload_threads_own_logs_are_not_spooled(
    client: Any, bucket: str, tmp_path: Path
) -> None:
    """Root at DEBUG with a spooling handler: urllib3 lines from its threads never loop back."""
    root = logging.getLogger()
    handler = GCSHandler(bucket, client=client, spool_dir=str(tmp_path))
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for i in range(10):
            logging.getLogger("app").debug("rec %06d %s", i, "r" * 60)
        handler.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert list(range(10)) == numbers(client, bucket)
    text = bucket_text(client, bucket)
    assert "HTTP/1.1" not in text, text[:2000]


def test_an_expired_session_is_shipped_as_a_recovered_object(
    gcs: LocalGCS, proxy: FaultProxy, client: Any, bucket: str, tmp_path: Path
) -> None:
    """GCS no longer knows the dead process's session: the data becomes *.recovered-<time>."""
    child = start_child(proxy.url, bucket, tmp_path / "spool", 3_000, max_bytes=10 << 20)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("flushed 3000"):
            break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        '"session_url": "' in state.read_text() for state in (tmp_path / "spool").rglob("*.json")
    ):
        time.sleep(0.05)  # the upload thread has opened (and saved) its session
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    proxy.script(["410_before"], match=is_status_query)  # the resume finds the session gone
    # Through the proxy: the saved session URL names it, and only a session on the client's
    # own endpoint is resumed.
    handler = GCSHandler(bucket, client=client_for(proxy.url), spool_dir=str(tmp_path / "spool"))
    handler.close()
    names = [blob.name for blob in client.list_blobs(bucket)]
    assert 1 == len(names), names
    assert re.search(r"\.log\.recovered-\d{8}T\d{6}Z$", names[0]), names
    assert list(range(3000)) == numbers(client, bucket)


def test_gzip_objects_through_the_spool(client: Any, bucket: str, tmp_path: Path) -> None:
    """compression='gzip' with a spool: each object one valid gzip stream of the records."""
    import gzip

    handler = GCSHandler(
        bucket, client=client, spool_dir=str(tmp_path), compression="gzip", max_bytes=50_000
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(3_000):
        handler.emit(logging.makeLogRecord({"msg": f"rec {i:06d} {'r' * 60}"}))
        if i == 1_000:
            handler.flush()
    handler.close()
    names = sorted(blob.name for blob in client.list_blobs(bucket))
    assert len(names) > 1
    assert all(name.endswith(".log.gz") for name in names)
    text = b"".join(
        gzip.decompress(client.bucket(bucket).blob(name).download_as_bytes()) for name in names
    )
    assert [f"rec {i:06d} {'r' * 60}" for i in range(3_000)] == text.decode().splitlines()
