"""run with GCS away or refusing: the build is never blocked, and start-up is bounded.

GCS goes away through the fault proxy (``go_down`` resets every connection, ``come_up``
serves again); the session's shared server is never stopped. The issue's scenario, a 60 s
build with a 20 s outage, is scaled down to a 4 s build with a 2 s outage (about 2.4 s for
the drop and spool cases) to keep the suite fast: what it shows (the build's pace, what is
stored) does not depend on the scale.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from typing import Any

import psutil
import pytest
from faultproxy import FaultProxy, is_initiate
from helpers import emulator_env, read_object
from test_cli import CLI, child, cli

from gcs_log_sink._localgcs import LocalGCS

# The marker that stands in the stored log for dropped output (whole line, own line).
MARKER = re.compile(
    rb"\n\[gcs-log-sink\] (\d+) bytes of output lost here, \S+ to \S+: "
    rb"GCS was slow or unreachable and the buffer was full\n"
)


@pytest.fixture
def penv(proxy: FaultProxy) -> dict[str, str]:
    """The command's environment, with every request going through the fault proxy."""
    return emulator_env(proxy.url)


def build(
    seconds: float, *, every: float, piece: int, burst: tuple[float, float, int]
) -> list[str]:
    """A build that writes ``piece`` bytes every ``every`` s for ``seconds`` s, no newlines.

    Between burst[0] and burst[1] seconds it writes burst[2] bytes per step instead. The
    bytes are random (newlines excepted), so a gap is located exactly. At the end it prints, on
    stdout, its slowest write (with its flush): a write blocked by a full pipe would show there.
    """
    start, end, size = burst
    return child(
        f"""
        import random, sys, time
        rng = random.Random(11)
        no_newline = bytes.maketrans(b"\\n", b"N")
        t0 = time.monotonic()
        slowest = 0.0
        while (now := time.monotonic() - t0) < {seconds}:
            size = {size} if {start} <= now < {end} else {piece}
            data = rng.randbytes(size).translate(no_newline)
            before = time.monotonic()
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            slowest = max(slowest, time.monotonic() - before)
            time.sleep({every})
        sys.stdout.write(f"slowest write %.3f" % slowest)
        """
    )


def slowest_write(stdout: bytes) -> float:
    """The build's slowest write, as it reported it."""
    match = re.search(rb"slowest write (\d+\.\d+)", stdout)
    assert match is not None, stdout[-100:]
    return float(match.group(1))


def run_with_outage(
    penv: dict[str, str], proxy: FaultProxy, argv: list[str], down: tuple[float, float]
) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """Run the CLI, taking GCS away from down[0] to down[1] s after the start.

    Its output is read all along, as a terminal would: the terminal is not what is tested.
    """

    def outage() -> None:
        time.sleep(down[0])
        proxy.go_down()
        time.sleep(down[1] - down[0])
        proxy.come_up()

    started = time.monotonic()
    switch = threading.Thread(target=outage)
    process = subprocess.Popen(
        [*CLI, *argv], env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    switch.start()
    try:
        out, err = process.communicate(timeout=60)
    finally:
        switch.join()
        proxy.come_up()
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, err), (
        time.monotonic() - started
    )


def test_outage_the_buffer_holds_blocks_nothing_and_loses_nothing(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str
) -> None:
    """4 s build, 64 KiB every 50 ms, GCS away 2 s: the build keeps its pace, all stored.

    (The issue's 60 s build with a 20 s outage, scaled down.)
    """
    argv = ["run", "--part-seconds", "1", f"gs://{bucket}/held", "--"]
    argv += build(4, every=0.05, piece=64 * 1024, burst=(0, 0, 0))
    result, elapsed = run_with_outage(penv, proxy, argv, down=(1.2, 3.2))
    assert 0 == result.returncode, result.stderr
    assert slowest_write(result.stdout) < 0.5  # its writes never waited for GCS
    assert elapsed < 4 + 8  # start-up, and shipping what the outage held up (a loaded machine)
    assert result.stdout == read_object(client, bucket, "held/build.log")
    assert 1024 * 1024 < len(result.stdout)
    assert b"bytes of output lost" not in result.stderr


def test_outage_past_the_buffer_drops_with_an_exact_marker(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str
) -> None:
    """A 1 MiB buffer and a 24 MiB burst while GCS is away: the build keeps its pace; the
    stored log is what it printed with the dropped run replaced by a marker whose count is
    exact (scaled-down form of the issue's 60 s / 20 s scenario)."""
    argv = ["run", "--buffer-size", "1M", f"gs://{bucket}/dropped", "--"]
    argv += build(4, every=0.05, piece=16 * 1024, burst=(1.2, 2.2, 1024 * 1024))
    result, _ = run_with_outage(penv, proxy, argv, down=(1.0, 3.4))
    assert 0 == result.returncode, result.stderr
    assert slowest_write(result.stdout) < 0.5
    read = result.stdout
    stored = read_object(client, bucket, "dropped/build.log")
    assert b"\n" not in read  # so every newline in stored belongs to a marker
    counts = []
    position = 0  # in read
    last_end = 0  # in stored
    for marker in MARKER.finditer(stored):
        kept = stored[last_end : marker.start()]
        assert kept == read[position : position + len(kept)]
        lost = int(marker.group(1))
        counts.append(lost)
        position += len(kept) + lost
        last_end = marker.end()
    assert read[position:] == stored[last_end:]
    assert counts
    assert len(read) - len(stored) + sum(len(m.group(0)) for m in MARKER.finditer(stored)) == (
        sum(counts)
    )
    dropped = re.search(rb"([\d,]+) bytes of output were dropped", result.stderr)
    assert dropped is not None, result.stderr
    assert sum(counts) == int(dropped.group(1).replace(b",", b""))


def test_startup_with_gcs_away_runs_the_build_and_ships_when_gcs_returns(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str
) -> None:
    """GCS down at the start: a progress line, then after --startup-timeout the build runs;
    GCS comes back during it, and the whole log is stored."""
    proxy.go_down()
    code = """
        import time
        for i in range(30):
            print(f"line {i}", flush=True)
            time.sleep(0.1)
        """
    started = time.monotonic()
    process = subprocess.Popen(
        [*CLI, "run", "--startup-timeout", "1.5", f"gs://{bucket}/late", "--", *child(code)],
        env=penv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        began = time.monotonic() - started
        proxy.come_up()
        out, err = process.communicate(timeout=60)
    finally:
        proxy.come_up()
    lines = err.decode().splitlines()
    assert 0 == process.returncode, err
    assert b"line 0\n" == first
    assert 1.0 < began < 4.0
    assert lines[0].startswith("gcs-log-sink: GCS is not answering (")
    assert "retrying for up to 1.5 s" in lines[0]
    assert lines[1].startswith("gcs-log-sink: GCS still not answering after 1.5 s: starting")
    expected = b"".join(f"line {i}\n".encode() for i in range(30))
    assert expected == first + out
    assert expected == read_object(client, bucket, "late/build.log")


def test_startup_with_gcs_away_and_require_gcs_fails_fast(
    penv: dict[str, str], proxy: FaultProxy, bucket: str
) -> None:
    """--require-gcs: after --startup-timeout, one line and exit 1; the build never ran."""
    proxy.go_down()
    started = time.monotonic()
    result = cli(
        penv,
        "run",
        "--startup-timeout",
        "1",
        "--require-gcs",
        f"gs://{bucket}/strict",
        "--",
        "echo",
        "ran",
    )
    elapsed = time.monotonic() - started
    err = result.stderr.decode()
    assert 1 == result.returncode, err
    assert b"" == result.stdout
    assert elapsed < 5
    assert 2 == len(err.splitlines()), err
    assert "--require-gcs" in err.splitlines()[1]


@pytest.mark.parametrize("case", ["no scheme", "no credentials", "permission", "no bucket"])
def test_configuration_errors_fail_at_once_in_one_line(
    case: str, proxy: FaultProxy, gcs: LocalGCS, bucket: str, tmp_path: Any
) -> None:
    """Never retried as if GCS were away: one line, within a second or two, the build not run."""
    env = emulator_env(proxy.url)
    url = f"gs://{bucket}/cfg"
    status = 1
    if case == "no scheme":
        env["STORAGE_EMULATOR_HOST"] = proxy.url.removeprefix("http://")
        status, message = 2, "STORAGE_EMULATOR_HOST must start with http:// or https://"
    elif case == "no credentials":
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE")}
        env.pop("STORAGE_EMULATOR_HOST", None)
        env.update(CLOUDSDK_CONFIG=str(tmp_path), HOME=str(tmp_path), NO_GCE_CHECK="true")
        env["GCE_METADATA_HOST"] = env["GCE_METADATA_IP"] = "127.0.0.1:9"
        message = "no Google credentials found"
    elif case == "permission":
        proxy.script(["403_before"], match=is_initiate)
        message = "permission denied"
    else:
        url = "gs://no-such-bucket-cfg/x"
        message = "bucket not found"
    started = time.monotonic()
    result = cli(env, "run", url, "--", "echo", "ran")
    elapsed = time.monotonic() - started
    err = result.stderr.decode()
    assert status == result.returncode, err
    assert message in err
    assert 1 == len(err.splitlines()), err
    assert b"" == result.stdout
    assert elapsed < 8  # start-up of the interpreter and google-auth included


def group_members(pid: int) -> list[psutil.Process]:
    """The live processes of process group ``pid`` (zombies excluded)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def test_sigterm_during_an_outage_ends_within_the_ship_timeout(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str
) -> None:
    """GCS away, SIGTERM: the whole group dies, run waits --ship-timeout for GCS, says in one
    line what it could not ship and where the rest is, exits 143; no orphans."""
    code = """
        import subprocess, sys, time
        subprocess.Popen(["sleep", "30"])  # another process of the build
        for i in range(5):
            print(f"before {i}", flush=True)
        sys.stdin.readline()  # the test says when GCS is away
        print("during", flush=True)
        time.sleep(30)
        """
    argv = ["run", "--ship-timeout", "2", "--part-seconds", "1", f"gs://{bucket}/term"]
    process = subprocess.Popen(
        [*CLI, *argv, "--", *child(code)],
        env=penv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    before = b"".join(process.stdout.readline() for _ in range(5))
    command = psutil.Process(process.pid).children()[0].pid
    members = group_members(command)
    time.sleep(2.2)  # a part is finalized before the outage: the end must not wait on GCS
    proxy.go_down()
    process.stdin.write(b"go\n")
    process.stdin.close()
    assert b"during\n" == process.stdout.readline()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        proxy.come_up()
    assert process.stderr is not None
    err = process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    assert 143 == status, err
    assert 2 == len(members)  # the command and its sleep, one group
    assert [] == group_members(command)
    assert elapsed < 2 + 4
    assert "GCS did not take all the output within 2 s: 7 of 52 bytes not shipped" in err
    assert f"gs://{bucket}/term/parts/ holds what arrived" in err
    parts = sorted(b.name for b in client.list_blobs(bucket, prefix="term/parts/"))
    assert before == b"".join(read_object(client, bucket, name) for name in parts)


def test_sigterm_during_an_outage_ships_once_gcs_returns(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str
) -> None:
    """GCS away, SIGTERM, GCS back within --ship-timeout: what the build printed is shipped
    and build.log composed; exit 143."""
    code = """
        import time
        for i in range(5):
            print(f"before {i}", flush=True)
        time.sleep(30)
        """
    process = subprocess.Popen(
        [*CLI, "run", "--ship-timeout", "20", f"gs://{bucket}/back", "--", *child(code)],
        env=penv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    printed = b"".join(process.stdout.readline() for _ in range(5))
    proxy.go_down()
    try:
        process.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        proxy.come_up()
        out, err = process.communicate(timeout=30)
    finally:
        proxy.come_up()
    assert 143 == process.returncode, err
    assert b"" == out
    assert printed == read_object(client, bucket, "back/build.log")


def test_gcs_gone_at_compose_time_costs_seconds_not_minutes(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str
) -> None:
    """Everything was shipped in parts, then GCS went away before the command ended: the
    compose is tried briefly (google's default retry would take 120 s), one line says the
    parts are kept, and the command's status stands."""
    code = """
        import sys
        print("all of it", flush=True)
        sys.stdin.readline()
        sys.exit(4)
        """
    argv = ["run", "--ship-timeout", "1", "--part-seconds", "1", f"gs://{bucket}/late-compose"]
    process = subprocess.Popen(
        [*CLI, *argv, "--", *child(code)],
        env=penv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert b"all of it\n" == process.stdout.readline()
    time.sleep(2.2)  # the part is finalized
    proxy.go_down()
    started = time.monotonic()
    try:
        _, err = process.communicate(b"end\n", timeout=30)
        elapsed = time.monotonic() - started
    finally:
        proxy.come_up()
    assert 4 == process.returncode, err
    assert elapsed < 1 + 2 + 3
    assert f"could not compose gs://{bucket}/late-compose/build.log".encode() in err
    assert b"the parts are kept" in err
    parts = sorted(b.name for b in client.list_blobs(bucket, prefix="late-compose/parts/"))
    assert b"all of it\n" == b"".join(read_object(client, bucket, name) for name in parts)


def test_with_a_spool_an_outage_loses_nothing_even_past_the_buffer(
    penv: dict[str, str], proxy: FaultProxy, client: Any, bucket: str, tmp_path: Any
) -> None:
    """--spool-dir: the burst that overflows a 1 MiB buffer without a spool goes to disk
    instead; GCS comes back and the whole log is stored, no marker, build's pace kept."""
    spool = tmp_path / "spool"
    argv = ["run", "--buffer-size", "1M", "--spool-dir", str(spool), f"gs://{bucket}/spooled"]
    argv += ["--", *build(4, every=0.05, piece=16 * 1024, burst=(1.2, 2.2, 1024 * 1024))]
    result, _ = run_with_outage(penv, proxy, argv, down=(1.0, 3.4))
    assert 0 == result.returncode, result.stderr
    assert slowest_write(result.stdout) < 0.5
    assert b"dropped" not in result.stderr
    assert 14 * 1024 * 1024 < len(result.stdout)  # more than buffer, queue and chunk hold
    assert result.stdout == read_object(client, bucket, "spooled/build.log")
    assert [] == [p.name for p in spool.rglob("*") if p.is_file() and p.name != "lock"]


def test_on_full_wait_still_ends_on_a_signal_during_an_outage(
    penv: dict[str, str], proxy: FaultProxy, bucket: str
) -> None:
    """--on-full wait slows the writer to GCS's pace; with GCS away that is a stop, yet a
    SIGTERM ends tee within --ship-timeout (it used to take SIGKILL), exit 143."""
    options = ["--on-full", "wait", "--buffer-size", "64K", "--ship-timeout", "1"]
    tee = subprocess.Popen(
        [*CLI, "tee", *options, f"gs://{bucket}/waiting"],
        env=penv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert tee.stdin is not None
    tee.stdin.write(b"first\n")
    tee.stdin.flush()
    time.sleep(1.0)  # started: past the start-up check
    proxy.go_down()

    def flood() -> None:
        assert tee.stdin is not None
        try:
            while True:
                tee.stdin.write(b"x" * 65536 + b"\n")
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    time.sleep(2.0)  # the buffer, the handler's queue and its chunk fill; tee waits
    started = time.monotonic()
    tee.send_signal(signal.SIGTERM)
    try:
        status = tee.wait(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        proxy.come_up()
        if tee.poll() is None:  # a failed test leaves no process behind
            tee.kill()
            tee.wait()
    writer.join(5)  # the pipe broke when tee exited
    with contextlib.suppress(BrokenPipeError):
        tee.stdin.close()
    assert tee.stderr is not None
    err = tee.stderr.read().decode()
    tee.stderr.close()
    assert 143 == status, err
    assert elapsed < 1 + 4
    assert "Traceback" not in err
