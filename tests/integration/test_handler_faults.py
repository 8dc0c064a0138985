"""GCSHandler when GCS is slow, away or failing: bounded waits, exact counts, nothing doubled."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from faultproxy import FaultProxy, is_chunk_upload
from helpers import bucket_text, emulator_env

from gcs_log_sink import GCSHandler


def shipped_lines(client: Any, bucket: str) -> list[str]:
    """Every line in the bucket, in object-name order."""
    return bucket_text(client, bucket).splitlines()


def test_faults_while_shipping_lose_and_double_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """Resets, 503s and partial persists under the handler: every record exactly once."""
    handler = GCSHandler(
        bucket, client=proxied, chunk_size=256 * 1024, max_bytes=2 * 1024 * 1024, timeout=1.0
    )
    logger.addHandler(handler)
    proxy.plan(
        rate=0.5,
        kinds=["503_after", "reset_after", "partial", "partial_reset", "429_before"],
        match=is_chunk_upload,
    )
    for i in range(60_000):
        logger.info("faulty network record %d %s", i, "p" * (i % 40))
    handler.close()
    assert len(proxy.faults()) >= 3
    expected = [f"faulty network record {i} {'p' * (i % 40)}" for i in range(60_000)]
    assert expected == shipped_lines(client, bucket)
    assert (0, 0) == (handler.dropped, handler.lost)


def test_drop_overflow_never_blocks_and_counts_exactly(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """GCS away, overflow='drop': callers go on at once; dropped + shipped == emitted."""
    handler = GCSHandler(
        bucket, client=proxied, queue_size=100, overflow="drop", timeout=1.0, close_timeout=20
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    proxy.go_down()
    started = time.monotonic()
    for i in range(2_000):
        logger.info("record %d", i)
    emitting = time.monotonic() - started
    assert emitting < 2.0  # no record waited: block_timeout alone would be 5 s
    dropped = handler.dropped
    assert dropped >= 2_000 - 100 - 512  # the queue plus at most one batch in flight
    proxy.come_up()
    handler.close()

    lines = shipped_lines(client, bucket)
    note = f"gcs_log_sink dropped {dropped} records (queue full)"
    assert [note] == [line for line in lines if line.startswith("gcs_log_sink")]
    records = [line for line in lines if not line.startswith("gcs_log_sink")]
    assert [f"record {i}" for i in range(2_000 - dropped)] == records
    assert 0 == handler.lost


def test_block_overflow_waits_at_most_block_timeout(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """GCS away, overflow='block': only a caller facing a full queue waits, block_timeout."""
    handler = GCSHandler(
        bucket, client=proxied, queue_size=10, block_timeout=0.3, timeout=1.0, close_timeout=20
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    proxy.go_down()
    emitted = 0
    waits = []
    while handler.dropped == 0:
        started = time.monotonic()
        logger.info("record %d", emitted)
        waits.append(time.monotonic() - started)
        emitted += 1
        assert emitted < 10 + 600  # the queue plus at most the worker's first batch
    assert 0.3 <= waits[-1] < 2.0
    proxy.come_up()
    handler.close()
    lines = shipped_lines(client, bucket)
    assert [f"record {i}" for i in range(emitted - 1)] == lines[: emitted - 1]
    assert ["gcs_log_sink dropped 1 records (queue full)"] == lines[emitted - 1 :]


def test_close_with_gcs_away_returns_within_close_timeout(
    proxy: FaultProxy,
    proxied: Any,
    bucket: str,
    logger: logging.Logger,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """close() gives up after close_timeout and says how many records it could not ship.

    stderr carries two lines: the outage when it started, and what close() gave up on.
    """
    handler = GCSHandler(bucket, client=proxied, timeout=1.0, close_timeout=1.0)
    logger.addHandler(handler)
    proxy.go_down()
    for i in range(50):
        logger.info("unshippable %d", i)
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 2.0
    err = capfd.readouterr().err
    assert "could not ship 50 records" in err
    assert 1 == err.count("GCS is not answering")
    assert 2 == err.count("gcs_log_sink:")


def test_a_process_whose_gcs_is_gone_exits_in_time_and_says_what_it_lost(
    proxy: FaultProxy, bucket: str
) -> None:
    """GCS unreachable at exit: the interpreter exits within close_timeout + 2 s."""
    proxy.go_down()
    code = f"""
        import logging, sys
        from gcs_log_sink import GCSHandler
        logging.basicConfig(level=logging.INFO, format="%(message)s",
                            handlers=[GCSHandler({bucket!r}, close_timeout=3.0, timeout=1.0)])
        for i in range(1234):
            logging.info("lost %d", i)
        print("logged", flush=True)
        """
    env = emulator_env(proxy.url)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert "logged\n" == child.stdout.readline()
    started = time.monotonic()
    _, err = child.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert 0 == child.returncode
    assert elapsed < 3.0 + 2.0
    assert "could not ship 1234 records" in err
    assert "Traceback" not in err


def test_a_slow_finalize_does_not_hold_up_the_callers(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str, logger: logging.Logger
) -> None:
    """GCS takes 2 s to finalize at a window change: records keep flowing, none dropped."""
    from faultproxy import is_final_request

    clock = [1_790_000_000.0]
    handler = GCSHandler(
        bucket, client=proxied, queue_size=300, overflow="drop", clock=lambda: clock[0]
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    for i in range(200):
        logger.info("record %d", i)
    handler.flush()
    proxy.script(["delay_before"], match=is_final_request)  # the first object's finalize
    clock[0] += 3600
    started = time.monotonic()
    i = 200
    while time.monotonic() - started < 1.5:  # ~3,000 records while the finalize hangs
        logger.info("record %d", i)
        i += 1
        time.sleep(0.0005)
    handler.close()
    assert ["delay_before"] == [event.kind for event in proxy.faults()]
    assert 0 == handler.dropped
    assert [f"record {n}" for n in range(i)] == shipped_lines(client, bucket)
