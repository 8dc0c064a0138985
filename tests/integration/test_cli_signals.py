"""run and tee under signals, readers that quit early, left-behind processes, closed fds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

import psutil
import pytest
from helpers import read_object
from test_cli import CLI, child, cli
from test_cli import env as env  # the fixture
from test_cli_outage import group_members


def start_run(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``gcs-log-sink run ARGS`` with stdout and stderr piped."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*CLI, "run", *args], env=env, **kwargs)


def command_pid(run: subprocess.Popen[bytes]) -> int:
    """The pid of the command ``run`` started (it leads the build's process group)."""
    deadline = time.monotonic() + 20
    while not (children := psutil.Process(run.pid).children()):
        if run.poll() is not None or time.monotonic() > deadline:
            _, err = run.communicate(timeout=30)
            raise AssertionError(f"run started no command: status {run.returncode}, {err!r}")
        time.sleep(0.02)
    assert 1 == len(children)
    return int(children[0].pid)


def running_names(pgid: int) -> list[str]:
    """The sorted command names of process group ``pgid``'s live members."""
    names = []
    for process in group_members(pgid):
        with contextlib.suppress(psutil.Error):
            names.append(process.name())
    return sorted(names)


def kill_group(pgid: int) -> None:
    """Clean up whatever a test left in a build's group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT])
def test_a_signal_reaches_the_whole_group_and_what_it_printed_is_shipped(
    sig: signal.Signals, env: dict[str, str], client: Any, bucket: str
) -> None:
    """`sleep 30 | cat` inside the build dies with it: no orphans, no 30 s wait; 128+N."""
    script = "echo started; sleep 30 | cat; echo never"
    run = start_run(env, f"gs://{bucket}/sig", "--", "sh", "-c", script)
    assert run.stdout is not None
    assert b"started\n" == run.stdout.readline()
    pgid = command_pid(run)
    # sleep and cat are running (exec'ed: a forked shell not yet sleep may still ignore the
    # signal on a loaded machine, and then only --kill-after ends the build).
    deadline = time.monotonic() + 10
    while running_names(pgid) != ["cat", "sh", "sleep"] and time.monotonic() < deadline:
        time.sleep(0.02)
    members = len(group_members(pgid))
    started = time.monotonic()
    run.send_signal(sig)
    try:
        status = run.wait(timeout=20)
    finally:
        kill_group(pgid)
    elapsed = time.monotonic() - started
    out, err = run.communicate()
    assert 128 + sig == status, err
    assert 3 == members  # sh, sleep, cat
    assert [] == group_members(pgid)
    assert elapsed < 5
    assert b"" == out
    assert b"started\n" == read_object(client, bucket, "sig/build.log")


def test_a_second_signal_kills_a_group_that_ignores_the_first(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """A build that ignores SIGTERM: the second SIGTERM is SIGKILL to its group."""
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn", flush=True)
        time.sleep(60)
        """
    run = start_run(env, f"gs://{bucket}/twice", "--", *child(code))
    assert run.stdout is not None
    assert b"stubborn\n" == run.stdout.readline()
    pgid = command_pid(run)
    run.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    still_running = run.poll() is None
    started = time.monotonic()
    run.send_signal(signal.SIGTERM)
    try:
        status = run.wait(timeout=20)
    finally:
        kill_group(pgid)
    assert still_running
    assert 143 == status
    assert time.monotonic() - started < 4
    assert b"stubborn\n" == read_object(client, bucket, "twice/build.log")
    run.communicate()


def test_kill_after_escalates_on_its_own(env: dict[str, str], bucket: str) -> None:
    """--kill-after 1: one SIGTERM to a build that ignores it, SIGKILL a second later."""
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn", flush=True)
        time.sleep(60)
        """
    run = start_run(env, "--kill-after", "1", f"gs://{bucket}/after", "--", *child(code))
    assert run.stdout is not None
    run.stdout.readline()
    pgid = command_pid(run)
    started = time.monotonic()
    run.send_signal(signal.SIGTERM)
    try:
        status = run.wait(timeout=20)
    finally:
        kill_group(pgid)
    elapsed = time.monotonic() - started
    run.communicate()
    assert 143 == status
    assert 0.9 < elapsed < 4


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_tee_ships_everything_it_read_on_a_signal(
    sig: signal.Signals, env: dict[str, str], client: Any, bucket: str
) -> None:
    """The writer is still writing when tee gets the signal: all tee printed is in GCS."""
    tee = subprocess.Popen(
        [*CLI, "tee", f"gs://{bucket}/tee-sig"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tee.stdin is not None
    assert tee.stdout is not None
    for i in range(250):
        tee.stdin.write(f"line {i:04d}\n".encode())
    tee.stdin.flush()
    seen = b""
    while seen.count(b"\n") < 250:
        seen += tee.stdout.read1(65536)
    tee.send_signal(sig)
    status = tee.wait(timeout=30)
    rest = tee.stdout.read()
    tee.stdin.close()
    tee.stdout.close()
    assert tee.stderr is not None
    err = tee.stderr.read()
    tee.stderr.close()
    assert 128 + sig == status, err
    assert b"".join(f"line {i:04d}\n".encode() for i in range(250)) == seen + rest
    assert seen + rest == read_object(client, bucket, "tee-sig/build.log")


def test_tee_keeps_shipping_after_its_reader_quits(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """`... | tee gs://b/p | head -1`: like tee -p, all input is shipped, exit 0, no trace."""
    data = b"".join(f"row {i:06d}\n".encode() for i in range(100_000))
    tee = subprocess.Popen(
        [*CLI, "tee", f"gs://{bucket}/head"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tee.stdout is not None
    assert tee.stdin is not None
    tee.stdin.write(data[:11])
    tee.stdin.flush()
    first = tee.stdout.readline()
    tee.stdout.close()  # the reader quits
    tee.stdin.write(data[11:])
    tee.stdin.close()
    status = tee.wait(timeout=60)
    assert tee.stderr is not None
    err = tee.stderr.read().decode()
    tee.stderr.close()
    assert 0 == status, err
    assert "Traceback" not in err
    assert b"row 000000\n" == first
    assert data == read_object(client, bucket, "head/build.log")


def test_run_piped_into_head_keeps_the_status_and_the_log(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """`run ... | head -1`: the command's status (3), the whole log in GCS, no traceback."""
    code = """
        import sys
        for i in range(100_000):
            print(f"row {i:06d}")
        sys.exit(3)
        """
    run = start_run(env, f"gs://{bucket}/runhead", "--", *child(code))
    assert run.stdout is not None
    first = run.stdout.readline()
    run.stdout.close()
    status = run.wait(timeout=60)
    assert run.stderr is not None
    err = run.stderr.read().decode()
    run.stderr.close()
    assert 3 == status, err
    assert "Traceback" not in err
    assert b"row 000000\n" == first
    expected = b"".join(f"row {i:06d}\n".encode() for i in range(100_000))
    assert expected == read_object(client, bucket, "runhead/build.log")


def test_a_process_left_holding_the_output_is_not_waited_for(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """The build starts a daemon that keeps stdout open and exits 0: after --grace, run
    stops reading, ships, composes, says why, and exits 0."""
    started = time.monotonic()
    script = "sleep 30 & echo done $$"  # $$: the shell's pid, the build's process group
    run = start_run(env, "--grace", "1", f"gs://{bucket}/daemon", "--", "sh", "-c", script)
    out, err = run.communicate(timeout=30)
    elapsed = time.monotonic() - started
    kill_group(int(out.split()[-1]))
    assert 0 == run.returncode, err
    assert out.startswith(b"done ")
    assert elapsed < 8
    assert b"stopped reading after --grace 1 s" in err
    assert out == read_object(client, bucket, "daemon/build.log")


@pytest.mark.parametrize(
    ("closed", "argv", "expected"),
    [
        ("<&-", ["tee", "gs://{bucket}/no-stdin"], b""),
        (">&-", ["run", "gs://{bucket}/no-stdout", "--", "echo", "hello"], b"hello\n"),
        (">&-", ["ls", "gs://{bucket}"], None),
        ("2>&-", ["run", "gs://{bucket}/no-stderr", "--", "echo", "hello"], b"hello\n"),
    ],
)
def test_closed_standard_fds_are_no_reason_for_a_traceback(
    closed: str,
    argv: list[str],
    expected: bytes | None,
    env: dict[str, str],
    client: Any,
    bucket: str,
) -> None:
    """stdin, stdout or stderr closed by the caller: the command works, exit 0."""
    args = [arg.replace("{bucket}", bucket) for arg in argv]
    script = 'exec "$@" ' + closed
    result = subprocess.run(
        ["sh", "-c", script, "sh", *CLI, *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert b"Traceback" not in result.stderr
    if expected is not None:
        name = args[1].removeprefix(f"gs://{bucket}/")
        assert expected == read_object(client, bucket, f"{name}/build.log")


def test_option_errors_name_the_flag(env: dict[str, str], bucket: str) -> None:
    """Bad values are reported against the flag the user typed, not an internal name."""
    cases = {
        "--part-bytes": ["--part-bytes", "12Q"],
        "--part-seconds": ["--part-seconds", "0.5"],
        "--buffer-size": ["--buffer-size", "-1M"],
        "--grace": ["--grace", "soon"],
    }
    for flag, option in cases.items():
        result = cli(env, "run", *option, f"gs://{bucket}/x", "--", "true")
        err = result.stderr.decode()
        assert 2 == result.returncode, err
        assert f"argument {flag}:" in err
        assert "Traceback" not in err
    sized = cli(env, "run", "--part-bytes", "1K", f"gs://{bucket}/k", "--", "echo", "ok")
    assert 0 == sized.returncode, sized.stderr


def test_grace_zero_still_ships_what_the_command_printed_before_exiting(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """--grace 0 stops waiting at once, but the output already in the pipe is read first."""
    result = cli(env, "run", "--grace", "0", f"gs://{bucket}/g0", "--", "seq", "1", "30000")
    expected = b"".join(b"%d\n" % i for i in range(1, 30001))
    assert 0 == result.returncode, result.stderr
    assert expected == result.stdout
    assert expected == read_object(client, bucket, "g0/build.log")


def test_a_non_blocking_terminal_is_written_like_a_blocking_one(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """A CI runner's stdout with O_NONBLOCK set, read slowly: no EAGAIN traceback, nothing
    lost on the terminal or in GCS."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    code = """
        for i in range(50_000):
            print(f"row {i:06d}")
        """
    run = start_run(env, f"gs://{bucket}/nonblock", "--", *child(code), stdout=write_end)
    os.close(write_end)
    received = b""
    with os.fdopen(read_end, "rb") as reader:
        time.sleep(0.5)  # let the pipe fill: the next write would block
        while chunk := reader.read(4096):
            received += chunk
    _, err = run.communicate(timeout=60)
    expected = b"".join(f"row {i:06d}\n".encode() for i in range(50_000))
    assert 0 == run.returncode, err
    assert b"Traceback" not in err
    assert expected == received
    assert expected == read_object(client, bucket, "nonblock/build.log")


def test_under_a_terminal_the_command_gets_a_pty_and_signals_still_reach_its_group(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """stdout a terminal: the command sees a terminal too (colours survive), and SIGTERM
    still reaches its whole group; what it printed is shipped as the terminal showed it."""
    import pty
    import tty

    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # the outer terminal passes bytes as they are
    code = """
        import subprocess, sys, time
        subprocess.Popen(["sleep", "30"])
        print(f"tty={sys.stdout.isatty()}", flush=True)
        time.sleep(30)
        """
    run = start_run(env, f"gs://{bucket}/pty", "--", *child(code), stdout=terminal)
    os.close(terminal)
    shown = b""
    while b"tty=" not in shown or not shown.endswith(b"\n"):
        shown += os.read(controller, 1024)
    pgid = command_pid(run)
    run.send_signal(signal.SIGTERM)
    try:
        status = run.wait(timeout=20)
    finally:
        kill_group(pgid)
        with contextlib.suppress(OSError):
            while os.read(controller, 1024):
                pass
        os.close(controller)
    run.communicate()
    assert 143 == status
    assert b"tty=True\r\n" == shown
    assert [] == group_members(pgid)
    assert shown == read_object(client, bucket, "pty/build.log")
