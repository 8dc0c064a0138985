"""tee and run with reads of up to 256 KiB (grown pipes): what the larger reads could break.

Each test ships megabytes through the command and reads ``build.log`` back from the server,
byte for byte; the terminal copy is compared too.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import tempfile
import threading
from typing import Any

from helpers import read_object
from test_cli import CLI, child, cli
from test_cli import env as env  # the fixture

MIB = 1024 * 1024


def lines(total: int, seed: int) -> bytes:
    """About ``total`` bytes of text lines of random lengths (0 to 300 bytes)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < total:
        out += b"x" * rng.randrange(300) + b"\n"
    return bytes(out)


def tee_writes(
    env: dict[str, str], url: str, writes: list[bytes], *options: str
) -> tuple[int, bytes, bytes]:
    """``gcs-log-sink tee [options] URL`` fed ``writes`` through a pipe; status, terminal
    copy, stderr."""
    process = subprocess.Popen(
        [*CLI, "tee", *options, url],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def feed() -> None:
        assert process.stdin is not None
        for piece in writes:
            process.stdin.write(piece)
        process.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert process.stdout is not None
    assert process.stderr is not None
    shown = process.stdout.read()
    err = process.stderr.read()
    feeder.join(60)
    process.stdout.close()
    process.stderr.close()
    return process.wait(60), shown, err


def test_a_buffer_smaller_than_one_read_ships_every_byte_in_wait_mode(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--buffer-size 64K with writes of 1.5 MiB: reads are cut to the buffer's size (a 1 MiB
    read would hold 16x what the user allowed), and --on-full wait still loses nothing."""
    data = lines(6 * MIB, seed=1)
    writes = [data[i : i + 3 * MIB // 2] for i in range(0, len(data), 3 * MIB // 2)]
    status, shown, err = tee_writes(
        env, f"gs://{bucket}/small", writes, "--on-full", "wait", "--buffer-size", "64K"
    )
    assert 0 == status, err
    assert data == shown
    assert data == read_object(client, bucket, "small/build.log")


def test_timestamps_stamp_each_line_once_across_megabyte_reads(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--timestamps with a 1.5 MiB line (longer than any read) among short ones, in writes
    that end mid-line: one stamp per line, at its start, the terminal copy unstamped."""
    data = lines(MIB, seed=2) + b"L" * (3 * MIB // 2) + b"\n" + lines(MIB, seed=3) + b"tail"
    rng = random.Random(4)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    writes = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    status, shown, err = tee_writes(
        env, f"gs://{bucket}/stamped", writes, "--timestamps", "--on-full", "wait"
    )
    assert 0 == status, err
    assert data == shown
    stored = read_object(client, bucket, "stamped/build.log")
    stamp = re.compile(rb"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    assert data.count(b"\n") + 1 == len(stamp.findall(stored))  # "tail" has no newline
    assert data == stamp.sub(b"", stored)


def test_run_ships_megabyte_writes_on_stdout_and_stderr_exact(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """A command writing 1 MiB at a time to both grown pipes at once: every byte of each
    stream in build.log, in its own order, and on the terminal."""
    # stdout never holds b"E" or b"\r"; stderr holds only those (as in test_cli).
    code = """
        import os, random, threading
        rng = random.Random(5)
        alphabet = bytes(b for b in range(256) if b not in b"E\\r")
        out = bytes(rng.choice(alphabet) for _ in range(1 << 16)) * 64  # 4 MiB
        err = (b"E" * 1000 + b"\\r") * 2000
        def write(fd, data):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[: 1 << 20]):]
        threads = [threading.Thread(target=write, args=(1, out)),
                   threading.Thread(target=write, args=(2, err))]
        for t in threads: t.start()
        for t in threads: t.join()
        """
    result = cli(env, "run", f"gs://{bucket}/both", "--", *child(code))
    assert 0 == result.returncode, result.stderr[-500:]
    stored = read_object(client, bucket, "both/build.log")
    is_stderr = set(b"E\r")
    assert 4 * MIB == len(result.stdout)
    assert result.stdout == bytes(b for b in stored if b not in is_stderr)
    command_err, _, _ = result.stderr.rpartition(b"log: ")
    assert (b"E" * 1000 + b"\r") * 2000 == command_err
    assert command_err == bytes(b for b in stored if b in is_stderr)


def test_stdin_from_a_file_or_a_socket_is_read_whole(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """``tee < file`` and stdin a socket (no pipe to grow): read as they are, byte exact."""
    data = lines(3 * MIB, seed=6)
    with tempfile.TemporaryFile() as file:
        file.write(data)
        file.seek(0)
        from_file = cli(env, "tee", f"gs://{bucket}/file", stdin=file)
    left, right = socket.socketpair()
    with left, right:

        def send() -> None:
            left.sendall(data)
            left.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        from_socket = cli(env, "tee", f"gs://{bucket}/socket", stdin=right)
        sender.join(30)
    assert (0, data) == (from_file.returncode, from_file.stdout), from_file.stderr
    assert (0, data) == (from_socket.returncode, from_socket.stdout), from_socket.stderr
    assert data == read_object(client, bucket, "file/build.log")
    assert data == read_object(client, bucket, "socket/build.log")


def test_one_read_never_holds_more_than_the_buffer(client: Any, bucket: str) -> None:
    """The pump's read size is the buffer's size when that is smaller than READ_SIZE (256
    KiB), so a --buffer-size of 64K bounds what the kept output holds (a read into an empty
    buffer is always kept whole); 32M (the default) reads READ_SIZE at a time."""
    from gcs_log_sink.capture import READ_SIZE, OutputShipper
    from gcs_log_sink.gsurl import parse_gs_url

    sizes = []
    for buffer_bytes in (64 * 1024, 32 * MIB):
        shipper = OutputShipper(
            parse_gs_url(f"gs://{bucket}/sizes"), client=client, buffer_bytes=buffer_bytes
        )
        sizes.append(shipper.read_size)
        shipper.abandon()
    assert [64 * 1024, READ_SIZE] == sizes
