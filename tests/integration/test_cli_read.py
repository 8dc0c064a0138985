"""ls and cat with GCS away or empty, GCSHandler prefixes, re-runs, and the newcomer path."""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import emulator_env, read_object
from test_cli import CLI, cli
from test_cli import env as env  # the fixture

from gcs_log_sink import GCSHandler


@pytest.mark.parametrize("command", [["ls"], ["cat"], ["cat", "--follow"]])
def test_ls_and_cat_with_gcs_away_retry_briefly_then_say_so_in_one_line(
    command: list[str], proxy: FaultProxy, bucket: str
) -> None:
    """GCS unreachable: one progress note, then one error line after --timeout; exit 1."""
    proxy.go_down()
    started = time.monotonic()
    result = cli(emulator_env(proxy.url), *command, "--timeout", "1", f"gs://{bucket}/p")
    elapsed = time.monotonic() - started
    lines = result.stderr.decode().splitlines()
    assert 1 == result.returncode, lines
    assert 2 == len(lines), lines
    assert lines[0].startswith("gcs-log-sink: GCS is not answering (")
    assert lines[0].endswith("retrying for up to 1 s")
    assert lines[1].startswith("gcs-log-sink: cannot reach GCS: gave up retrying")
    assert elapsed < 1 + 5


@pytest.mark.parametrize("missing", ["bucket", "prefix"])
def test_follow_waits_politely_for_a_missing_bucket_or_prefix(
    missing: str, proxy: FaultProxy, bucket: str
) -> None:
    """--follow sleeps --interval between polls, says once what it waits for, and gives up
    after --timeout with one line (it once made 2,549 requests in 3 s)."""
    where = "gs://no-such-bucket-fw/p" if missing == "bucket" else f"gs://{bucket}/not-yet"
    started = time.monotonic()
    result = cli(
        emulator_env(proxy.url),
        "cat",
        "--follow",
        "--interval",
        "0.3",
        "--timeout",
        "1.2",
        where,
    )
    elapsed = time.monotonic() - started
    lines = result.stderr.decode().splitlines()
    waited_for = "bucket no-such-bucket-fw (not found)" if missing == "bucket" else "no parts yet"
    assert 1 == result.returncode, lines
    assert 2 == len(lines), lines
    assert "gcs-log-sink: waiting for" in lines[0]
    assert waited_for in lines[0]
    assert lines[1].startswith("gcs-log-sink: gave up after 1.2 s (--timeout)")
    assert 0.9 < elapsed < 1.2 + 5
    # A few requests per poll, not thousands: up to 4 per poll and one poll more than the
    # timeout holds (a loaded machine once gave 16 for 15 here: a poll at both ends).
    assert len(proxy.events) <= 4 * (1.2 / 0.3 + 2)


def test_cat_and_ls_read_a_gcshandler_prefix(
    client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Objects named by GCSHandler's default template, plain and gzip, print in order."""
    for prefix, compression in (("api/", None), ("zipped/", "gzip")):
        handler = GCSHandler(bucket, prefix=prefix, client=client, compression=compression)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        for i in range(300):
            logger.info("record %s%03d", prefix, i)
            if i % 100 == 99:
                handler.rotate()  # three objects
        logger.removeHandler(handler)
        handler.close()
    env_ = emulator_env(client.api_endpoint)
    for prefix in ("api", "zipped"):
        names = [b.name for b in client.list_blobs(bucket, prefix=f"{prefix}/")]
        expected = "".join(f"record {prefix}/{i:03d}\n" for i in range(300))
        printed = cli(env_, "cat", f"gs://{bucket}/{prefix}")
        listing = cli(env_, "ls", f"gs://{bucket}/{prefix}").stdout.decode()
        assert 3 == len(names)
        # The default template, {prefix}{start:%Y/%m/%d/%H%M%S}-{host}-{pid}-...{seq:05d}.log
        # (it may gain fields between pid and seq).
        assert re.fullmatch(rf"{prefix}/\d{{4}}/\d\d/\d\d/\d{{6}}-.+-\d{{5}}\.log(\.gz)?", names[0])
        assert 0 == printed.returncode, printed.stderr
        assert expected == printed.stdout.decode()
        assert "3 log objects, 0 parts" in listing
        assert all(f"gs://{bucket}/{name}" in listing for name in names)


def test_replace_reruns_a_job_on_the_same_prefix(
    env: dict[str, str], client: Any, bucket: str
) -> None:
    """A second run on a used prefix fails at once without running the command (412, with
    a hint); with --replace it runs and the prefix holds only the new log."""
    url = f"gs://{bucket}/job"
    first = cli(env, "run", "--keep-parts", url, "--", "echo", "first")
    refused = cli(env, "run", url, "--", "echo", "second")
    replaced = cli(env, "run", "--replace", url, "--", "echo", "third")
    assert 0 == first.returncode, first.stderr
    err = refused.stderr.decode()
    assert 1 == refused.returncode, err
    assert b"" == refused.stdout  # the command never ran
    assert f"gs://{bucket}/job/build.log already exists: pass --replace" in err
    assert 1 == len(err.splitlines())
    assert 0 == replaced.returncode, replaced.stderr
    assert b"third\n" == read_object(client, bucket, "job/build.log")
    assert [] == [b.name for b in client.list_blobs(bucket, prefix="job/parts/")]


def test_serve_local_runs_a_server_with_a_bucket_until_interrupted(tmp_path: Any) -> None:
    """The newcomer path: serve-local prints the environment to use; run and cat work
    against it; Ctrl-C stops it (exit 0) and the server with it."""
    server = subprocess.Popen(
        [*CLI, "serve-local", "--port", "0", "--bucket", "try-logs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline().decode() for _ in range(5)]
        found = re.search(r"STORAGE_EMULATOR_HOST=(http://127\.0\.0\.1:(\d+))", lines[2])
        assert found is not None, lines
        endpoint, port = found.group(1), int(found.group(2))
        env_ = emulator_env(endpoint)
        ran = cli(env_, "run", "gs://try-logs/try/1", "--", "echo", "hello")
        printed = cli(env_, "cat", "gs://try-logs/try/1")
    finally:
        server.send_signal(signal.SIGINT)
        status = server.wait(timeout=20)
        server.stdout.close()  # type: ignore[union-attr]
        server.stderr.close()  # type: ignore[union-attr]
    assert lines[0].startswith(f"local GCS-compatible server at {endpoint}, bucket gs://try-logs")
    assert 0 == ran.returncode, ran.stderr
    assert b"hello\n" == printed.stdout
    assert 0 == status
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


@pytest.mark.parametrize("command", ["demo", "serve-local"])
def test_without_the_local_extra_one_line_names_it(command: str) -> None:
    """No gcp-storage-emulator installed: one line saying which extra to install."""
    code = (
        "import sys; sys.modules['gcp_storage_emulator'] = None\n"
        "from gcs_log_sink.cli import main\n"
        f"sys.exit(main([{command!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    err = result.stderr.decode()
    assert 1 == result.returncode, err
    assert [
        f"gcs-log-sink: {command} needs the 'local' extra: pip install 'gcs-log-sink[local]'"
    ] == err.splitlines()
