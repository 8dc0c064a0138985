"""tee and run after the CPU work of issue 13: what the new read path could break.

Reads are 256 KiB from a pipe grown to 256 KiB, the feeder hands whole reads to the handler
unjoined, and the end-to-end CRC32C of build.log is taken as the buffer keeps each read (not
by the feeder). Each test ships megabytes through the command and reads ``build.log`` back
from the server, byte for byte; the terminal copy is compared too.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import emulator_env, random_writes, read_object
from test_cli import CLI
from test_cli import env as env  # the fixture
from test_session13_hostile import collect, feed_in_background, no_newline_data, tee_process

from gcs_log_sink.capture import READ_SIZE

pytestmark = pytest.mark.timeout(90)

MIB = 1024 * 1024
MARKER = re.compile(
    rb"\n\[gcs-log-sink\] (\d+) bytes of output lost here, \S+ to \S+: "
    rb"GCS was slow or unreachable and the buffer was full\n"
)


def counted_lines(total: int) -> bytes:
    """About ``total`` bytes of numbered lines: no two alike, so a doubled, lost or moved
    line changes the bytes (a repeated pattern would hide a piece shipped twice)."""
    return b"".join(b"%09d %s\n" % (i, b"z" * (i % 97)) for i in range(total // 58))


def test_a_flood_with_parts_smaller_than_one_read_is_stored_exact(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--part-bytes 100K under 3 MiB fed in writes up to 1.5 MiB: each part is cut between
    whole reads of up to 256 KiB (a read is never split, never joined to its neighbour
    twice), the parts in order are the input, and so is the composed, verified build.log."""
    data = counted_lines(3 * MIB)
    process = tee_process(env, f"gs://{bucket}/parts", "--part-bytes", "100K", "--keep-parts")
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(3), 1_500_000))
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    assert f"parts/build.log ({len(data):,} bytes)".encode() in err, err[-2000:]  # verified
    assert data == read_object(client, bucket, "parts/build.log")
    names = sorted(blob.name for blob in client.list_blobs(bucket, prefix="parts/parts/"))
    pieces = [read_object(client, bucket, name) for name in names]
    assert data == b"".join(pieces)
    assert len(data) // READ_SIZE <= len(pieces)
    assert [] == [len(piece) for piece in pieces if len(piece) > READ_SIZE]


def test_drops_of_whole_reads_leave_exact_markers_and_a_verified_build_log(
    client: Any, bucket: str, proxy: FaultProxy
) -> None:
    """--buffer-size 600K (two reads and a bit) while each part's upload takes 2 s to open
    and every chunk upload waits 2 s, 12 MiB flooding in (more than the buffer, the
    handler's queue and its batch in hand hold, about 6 MiB): whole 256 KiB reads are
    dropped. Kept pieces sit at their exact offsets, each marker counts exactly the gap to
    the next kept piece, and build.log (markers included in its CRC32C) is composed and
    verified."""
    data = no_newline_data(12 * MIB, seed=21)

    def slow(req: Any) -> bool:  # not the start-up probe, nor compose: the parts' uploads
        opens_a_part = "parts" in req.query or b"/parts/" in req.body
        return req.method == "PUT" or (req.method == "POST" and opens_a_part)

    proxy.plan(rate=1.0, kinds=["delay_before"], match=slow)
    process = tee_process(emulator_env(proxy.url), f"gs://{bucket}/drops", "--buffer-size", "600K")
    assert process.stdin is not None
    feeder = feed_in_background(process.stdin, random_writes(data, random.Random(5), MIB))
    shown, err = collect(process)
    feeder.join(10)
    assert 0 == process.returncode, err[-2000:]
    assert data == shown
    stored = read_object(client, bucket, "drops/build.log")
    assert f"drops/build.log ({len(stored):,} bytes)\n".encode() in err, err[-2000:]
    pieces = MARKER.split(stored)  # kept, count, kept, count, ..., kept
    kept, counts = pieces[0::2], [int(n) for n in pieces[1::2]]
    offset = 0
    for index, piece in enumerate(kept):
        assert data[offset : offset + len(piece)] == piece, f"kept piece {index} misplaced"
        offset += len(piece) + (counts[index] if index < len(counts) else 0)
    assert len(data) == offset
    assert counts, "nothing was dropped: the test did not fill the buffer"
    assert f"{sum(counts):,} bytes of output were dropped".encode() in err, err[-2000:]
    assert {"POST", "PUT"} == {event.method for event in proxy.faults()}  # the stall happened


FLOOD = (
    "import sys\n"
    "out = sys.stdout.buffer\n"
    "for i in range(int(sys.argv[1])):\n"
    "    out.write(b'%09d ' % i + b'r' * (i % 500) + b'\\n')\n"
)


def expected_flood(count: int) -> bytes:
    return b"".join(b"%09d " % i + b"r" * (i % 500) + b"\n" for i in range(count))


def test_run_into_a_reader_that_quits_ships_the_whole_flood(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """``run -- flood | head -c 100``: the terminal side goes away after 100 bytes (EPIPE),
    the command's 4 MiB of output is still read whole, status 0, build.log exact."""
    count = 16_000
    head = subprocess.Popen(["head", "-c", "100"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert head.stdin is not None
    process = subprocess.Popen(
        [*CLI, "run", f"gs://{bucket}/head", "--", sys.executable, "-c", FLOOD, str(count)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=head.stdin,
        stderr=subprocess.PIPE,
    )
    head.stdin.close()
    _, err = process.communicate(timeout=60)
    assert head.stdout is not None
    first = head.stdout.read()
    head.stdout.close()
    head.wait(10)
    data = expected_flood(count)
    assert 0 == process.returncode, err[-2000:]
    assert data[:100] == first
    assert data == read_object(client, bucket, "head/build.log")


def test_sigterm_to_run_during_a_flood_ships_what_was_read(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """SIGTERM to ``run`` once 1 MiB reached the terminal, while the command floods without
    end: the group gets it, status 143, and build.log is exactly what ``run`` copied to the
    terminal (a prefix of the command's output, in 256 KiB reads)."""
    endless = FLOOD.replace("range(int(sys.argv[1]))", "__import__('itertools').count()")
    process = subprocess.Popen(
        [*CLI, "run", f"gs://{bucket}/term", "--", sys.executable, "-c", endless],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    shown = bytearray()
    signalled = False
    while chunk := process.stdout.read1(MIB):  # type: ignore[attr-defined]
        shown += chunk
        if len(shown) >= MIB and not signalled:
            process.send_signal(signal.SIGTERM)
            signalled = True
    err = process.stderr.read()
    status = process.wait(60)
    process.stdout.close()
    process.stderr.close()
    assert 143 == status, err[-2000:]
    assert expected_flood(bytes(shown).count(b"\n") + 1).startswith(bytes(shown))
    assert bytes(shown) == read_object(client, bucket, "term/build.log")
