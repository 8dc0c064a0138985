"""Small helpers the tests share (importable because conftest puts tests/ on sys.path)."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import google_crc32c

from gcs_log_sink._localgcs import anonymous_client as client_for
from gcs_log_sink._localgcs import emulator_env

__all__ = [
    "bucket_text",
    "client_for",
    "crc32c_b64",
    "emulator_env",
    "kill_a_spooled_build",
    "random_writes",
    "read_object",
]


def read_object(client: Any, bucket: str, name: str) -> bytes:
    """The bytes of gs://bucket/name as the server holds them."""
    return bytes(client.bucket(bucket).blob(name).download_as_bytes())


def bucket_text(client: Any, bucket: str) -> str:
    """Every object in the bucket, concatenated in name order (the order they were shipped).

    Fresh blobs, not the listed ones: a listed blob's mediaLink may name a proxy that is gone.
    """
    names = sorted(blob.name for blob in client.list_blobs(bucket))
    return "".join(client.bucket(bucket).blob(name).download_as_text() for name in names)


def crc32c_b64(data: bytes) -> str:
    """CRC32C of ``data`` as GCS reports it (base64, big-endian)."""
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def random_writes(data: bytes, rng: random.Random, max_write: int) -> list[bytes]:
    """``data`` cut into pieces of random length between 1 and ``max_write`` bytes."""
    pieces = []
    offset = 0
    while offset < len(data):
        step = rng.randint(1, max_write)
        pieces.append(data[offset : offset + step])
        offset += step
    return pieces


def kill_a_spooled_build(env: dict[str, str], bucket: str, spool: Path, prefix: str) -> None:
    """``run --spool-dir`` a build that prints "old 1" and "old 2", then SIGKILL it: its
    output is spooled (and flushed) but its last part never finalized."""
    build = subprocess.Popen(
        [sys.executable, "-m", "gcs_log_sink", "run", "--spool-dir", str(spool),
         "--part-seconds", "3600", f"gs://{bucket}/{prefix}", "--",
         sys.executable, "-c", "print('old 1'); print('old 2', flush=True); "
         "import time; time.sleep(60)"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert build.stdout is not None
    assert "old 1\n" == build.stdout.readline()
    assert "old 2\n" == build.stdout.readline()
    time.sleep(0.5)  # the feeder has spooled and flushed them
    build.kill()
    build.wait()
    build.stdout.close()
