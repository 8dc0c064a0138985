"""A build.log that does not verify is not left in place (#10): readers would trust it."""

from __future__ import annotations

import time
from typing import Any

from gcs_log_sink.capture import OutputShipper
from gcs_log_sink.gsurl import parse_gs_url


def test_a_build_log_that_does_not_verify_is_removed_and_the_parts_kept(
    client: Any, bucket: str
) -> None:
    """What was read and what GCS composed disagree (a tampered running CRC stands in for
    a part changed under us): finish() reports it, build.log is gone, the parts stay."""
    shipper = OutputShipper(parse_gs_url(f"gs://{bucket}/b1"), client=client, ship_timeout=30)
    shipper.write(b"line 1\nline 2\n")
    deadline = time.monotonic() + 10
    while shipper._size < 14 and time.monotonic() < deadline:  # the feeder took it
        time.sleep(0.01)
    shipper._crc ^= 1
    result = shipper.finish()
    assert result.problem is not None
    assert "build.log removed, parts kept" in result.problem
    assert not client.bucket(bucket).blob("b1/build.log").exists()
    parts = [blob.name for blob in client.list_blobs(bucket, prefix="b1/parts/")]
    assert b"line 1\nline 2\n" == b"".join(
        client.bucket(bucket).blob(name).download_as_bytes() for name in sorted(parts)
    )
