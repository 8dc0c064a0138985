"""build.log stands only when it is whole: a composed one that does not verify is removed,
and a killed build's spooled parts are composed into its build.log by ``recover`` (#10)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import emulator_env, kill_a_spooled_build

from gcs_log_sink.capture import OutputShipper
from gcs_log_sink.gsurl import parse_gs_url
from gcs_log_sink.testing import LocalGCS


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
    shipper.buffer.crc32c ^= 1
    result = shipper.finish()
    assert result.problem is not None
    assert "build.log removed, parts kept" in result.problem
    assert not client.bucket(bucket).blob("b1/build.log").exists()
    parts = [blob.name for blob in client.list_blobs(bucket, prefix="b1/parts/")]
    assert b"line 1\nline 2\n" == b"".join(
        client.bucket(bucket).blob(name).download_as_bytes() for name in sorted(parts)
    )


def test_recover_composes_a_killed_builds_parts_into_its_build_log(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """run --spool-dir is SIGKILLed mid-build; 'recover' ships the spooled part and composes
    every part of that build into its build.log, then removes the parts."""
    spool = tmp_path / "spool"
    env = emulator_env(gcs.url)
    kill_a_spooled_build(env, bucket, spool, "b1")
    recovered = subprocess.run(
        [sys.executable, "-m", "gcs_log_sink", "recover", str(spool)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == recovered.returncode, recovered.stderr
    assert f"log: gs://{bucket}/b1/build.log" in recovered.stderr
    assert b"old 1\nold 2\n" == client.bucket(bucket).blob("b1/build.log").download_as_bytes()
    assert [] == [blob.name for blob in client.list_blobs(bucket, prefix="b1/parts/")]
