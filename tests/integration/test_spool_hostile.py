"""The spool under ordinary and hostile conditions (issue 10): every promise on the real server."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import bucket_text

from gcs_log_sink import GCSHandler

RECORD = "rec {:06d} " + "r" * 60


def numbers(client: Any, bucket: str) -> list[int]:
    """Record numbers in the bucket, objects in name order (one process: seq order)."""
    text = bucket_text(client, bucket)
    return [int(match) for match in re.findall(r"^rec (\d{6}) r{60}$", text, re.MULTILINE)]


def spooled_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.rglob("*") if p.is_file() and p.name != "lock")


@pytest.mark.parametrize("run", range(6))
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
    blobs = list(client.list_blobs(bucket))
    assert [] == [blob.name for blob in blobs if not blob.size]
    assert list(range(1_500)) == numbers(client, bucket)
    assert (0, 0) == (handler.dropped, handler.lost)
    assert [] == spooled_files(tmp_path)
