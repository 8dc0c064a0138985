"""The gcs-log-sink command against the local server: run, tee, ls, cat, follow."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import psutil
import pytest
from helpers import emulator_env, read_object

from gcs_log_sink._localgcs import LocalGCS

CLI = [sys.executable, "-m", "gcs_log_sink"]


@pytest.fixture
def env(gcs: LocalGCS) -> dict[str, str]:
    """The environment a CI job would give the command, pointed at the local server."""
    return emulator_env(gcs.url)


def cli(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run the command to completion, capturing its output."""
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, timeout=120, check=False, **kwargs
    )


def child(code: str) -> list[str]:
    """argv for a Python child running ``code``."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_run_ships_stdout_and_stderr_byte_exact_and_returns_the_status(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """200,000 lines on stdout and stderr, binary and invalid UTF-8, exit 3: all in build.log."""
    # stdout never holds b"E" or b"\r"; stderr holds only those: each stream can be
    # recovered from the combined object, whatever the interleaving of reads.
    code = """
        import os, random, sys
        rng = random.Random(7)
        alphabet = bytes(b for b in range(256) if b not in b"E\\r\\n")
        for i in range(100_000):
            line = bytes(rng.choice(alphabet) for _ in range(i % 13)) + b"\\xff\\xc3(\\n"
            sys.stdout.buffer.write(line)
            sys.stderr.buffer.write(b"E" * (i % 7 + 1) + b"\\r")
        sys.exit(3)
        """
    result = cli(env, "run", f"gs://{bucket}/build/1", "--", *child(code))
    assert 3 == result.returncode, result.stderr
    stored = read_object(client, bucket, "build/1/build.log")
    is_stderr = set(b"E\r")
    assert result.stdout == bytes(b for b in stored if b not in is_stderr)
    command_err, _, final_line = result.stderr.rpartition(b"log: ")
    assert command_err == bytes(b for b in stored if b in is_stderr)
    assert 100_000 == result.stdout.count(b"\n")
    # The last line is informational, not shaped like an error.
    assert f"gs://{bucket}/build/1/build.log ({len(stored):,} bytes)\n" == final_line.decode()
    assert [] == [blob.name for blob in client.list_blobs(bucket, prefix="build/1/parts/")]


def test_parts_are_readable_while_the_command_runs(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--part-seconds 1: cat of the prefix mid-run shows the early lines."""
    code = """
        import sys, time
        for i in range(40):
            print(f"slow line {i}", flush=True)
            time.sleep(0.1)
        """
    process = subprocess.Popen(
        [*CLI, "run", "--part-seconds", "1", f"gs://{bucket}/live", "--", *child(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 3.5
        early = b""
        while time.monotonic() < deadline and b"slow line 0\n" not in early:
            time.sleep(0.3)
            early = cli(env, "cat", f"gs://{bucket}/live").stdout
        still_running = process.poll() is None
    finally:
        out, err = process.communicate(timeout=60)
    assert still_running
    expected_start = b"".join(f"slow line {i}\n".encode() for i in range(40))
    assert early.startswith(b"slow line 0\n")  # at least the first part was readable
    assert expected_start.startswith(early)
    assert 0 == process.returncode, err
    expected = b"".join(f"slow line {i}\n".encode() for i in range(40))
    assert expected == out
    assert expected == read_object(client, bucket, "live/build.log")


def test_sigint_reaches_the_command_and_what_it_printed_is_shipped(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """Ctrl-C: the command gets SIGINT, its output so far is shipped, status 130."""
    code = """
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # die of it, as a build tool would
        print("started", flush=True)
        for i in range(3):
            print(f"working {i}", flush=True)
        time.sleep(60)
        """
    with subprocess.Popen(
        [*CLI, "run", f"gs://{bucket}/interrupted", "--", *child(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert b"started\n" == process.stdout.readline()
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        assert 130 == process.wait(timeout=60)
        rest = process.stdout.read()
        err = process.stderr.read()
    expected = b"started\nworking 0\nworking 1\nworking 2\n"
    assert expected[len(b"started\n") :] == rest, err
    assert expected == read_object(client, bucket, "interrupted/build.log")


def test_tee_of_100_mib_keeps_memory_bounded(env: dict[str, str], client: Any, bucket: str) -> None:
    """100 MiB through tee --on-full wait: byte-exact object, memory bounded by the buffer.

    The input comes faster than the local server takes it: --on-full wait slows the writer
    instead of dropping (the default, drop, is tested with an outage in test_cli_outage).
    What tee holds beyond its start-up size: the 8 MiB buffer, the handler's 4 MiB queue,
    one 8 MiB chunk and the copies of one request, and at the part boundary (64 MiB) the
    finishing part's last chunk beside the next part's first: about 72 MiB at the most, by
    configuration; an unbounded one would hold 100 MiB and more.
    """
    block = random.Random(100).randbytes(1024 * 1024)
    data = b"".join(i.to_bytes(4, "big") + block[4:] for i in range(100))
    process = subprocess.Popen(
        [*CLI, "tee", "--on-full", "wait", "--buffer-size", "8M", f"gs://{bucket}/teed"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watched = psutil.Process(process.pid)
    peak = 0
    received: list[bytes] = []
    first = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        while piece := process.stdout.read1(1 << 20):
            received.append(piece)
            first.set()

    reader = threading.Thread(target=drain)
    reader.start()
    assert process.stdin is not None
    process.stdin.write(data[:4096])
    process.stdin.flush()
    assert first.wait(30)  # started and copying: its start-up size is known
    baseline = watched.memory_info().rss
    for offset in range(4096, len(data), 1 << 20):
        process.stdin.write(data[offset : offset + (1 << 20)])
        peak = max(peak, watched.memory_info().rss)
    process.stdin.close()
    while process.poll() is None:
        peak = max(peak, watched.memory_info().rss)
        time.sleep(0.01)
    reader.join()
    assert process.stderr is not None
    assert process.stdout is not None
    err = process.stderr.read()
    process.stderr.close()
    process.stdout.close()
    assert 0 == process.returncode, err
    assert data == b"".join(received)
    assert data == read_object(client, bucket, "teed/build.log")
    assert peak - baseline < 72 * 1024 * 1024, (baseline, peak)


def test_cat_follow_sees_parts_then_stops_at_build_log(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """cat --follow prints parts as they are finalized and ends when build.log appears."""
    code = """
        import time
        for i in range(25):
            print(f"followed {i}", flush=True)
            time.sleep(0.1)
        """
    with (
        subprocess.Popen(
            [*CLI, "run", "--part-seconds", "1", f"gs://{bucket}/f", "--", *child(code)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as runner,
        subprocess.Popen(
            [*CLI, "cat", "--follow", "--interval", "0.2", f"gs://{bucket}/f"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as follower,
    ):
        assert follower.stdout is not None
        first = follower.stdout.readline()
        runner_still_running = runner.poll() is None
        rest = follower.stdout.read()
        assert 0 == follower.wait(timeout=60)
        assert 0 == runner.wait(timeout=60)
    assert b"followed 0\n" == first
    assert runner_still_running
    assert b"".join(f"followed {i}\n".encode() for i in range(25)) == first + rest


def test_compose_more_than_32_parts(env: dict[str, str], client: Any, bucket: str) -> None:
    """Many small parts compose (in levels of 32) into one exact build.log."""
    code = """
        import time
        for i in range(80):
            print(f"part line {i:03d} " + "x" * 150, flush=True)
            time.sleep(0.005)
        """
    result = cli(
        env, "run", "--part-bytes", "100", "--keep-parts", f"gs://{bucket}/many", "--", *child(code)
    )
    assert 0 == result.returncode, result.stderr
    parts = [blob.name for blob in client.list_blobs(bucket, prefix="many/parts/")]
    assert len(parts) > 32
    assert result.stdout == read_object(client, bucket, "many/build.log")
    assert [] == [b.name for b in client.list_blobs(bucket) if "compose-tmp" in b.name]
    listing = cli(env, "ls", f"gs://{bucket}/many").stdout.decode()
    assert f"1 log objects, {len(parts)} parts" in listing


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["run", "gs://Bad_Name/x", "--", "true"], 2, "bucket name"),
        (["run", "s3://b/x", "--", "true"], 2, "not a gs:// URL"),
        (["run", "gs://no-such-bucket-zz/x", "--", "true"], 1, "bucket not found"),
        (["run", "gs://{bucket}/x", "--", "no-such-command-zz"], 127, "command not found"),
        (["cat", "gs://{bucket}/nothing"], 1, "nothing to print"),
        (["ls", "gs://no-such-bucket-zz/x"], 1, "bucket no-such-bucket-zz not found"),
    ],
)
def test_errors_are_one_line_and_a_status(
    env: dict[str, str], bucket: str, args: list[str], status: int, message: str
) -> None:
    """Each error a user meets: one clear stderr line, a non-zero status, no traceback."""
    result = cli(env, *(arg.replace("{bucket}", bucket) for arg in args))
    err = result.stderr.decode()
    assert status == result.returncode, err
    assert message in err
    assert "Traceback" not in err
    assert 1 == len(err.strip().splitlines())


def test_help_and_version(env: dict[str, str]) -> None:
    """--help for each subcommand has examples; --version prints the version."""
    for command in ("run", "tee", "ls", "cat"):
        result = cli(env, command, "--help")
        assert 0 == result.returncode
        assert b"gcs-log-sink " + command.encode() in result.stdout
    assert cli(env, "--version").stdout.startswith(b"gcs-log-sink ")
