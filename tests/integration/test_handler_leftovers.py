"""A handler that starts on a spool a dead process left: the leftovers are shipped where they
belong and never announced as the new handler's own objects (a CLI build composes from
``on_finalize``: an old build's parts must not become a new build's)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers import emulator_env

from gcs_log_sink import GCSHandler
from gcs_log_sink._localgcs import LocalGCS

DEAD = """
    import logging, os, sys
    from gcs_log_sink import GCSHandler
    handler = GCSHandler(sys.argv[1], prefix="old/", spool_dir=sys.argv[2], stream="build")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("dead")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for i in range(5):
        log.info("old %d", i)
    handler.flush()  # on disk in the spool
    os._exit(0)  # no atexit, no logging.shutdown: a crash as far as the spool can tell
    """


def test_leftovers_ship_to_their_own_names_and_not_through_on_finalize(
    gcs: LocalGCS, client: Any, bucket: str, tmp_path: Path
) -> None:
    """The dead process's 5 records land under old/; on_finalize sees only new/ objects."""
    spool = tmp_path / "spool"
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DEAD), bucket, str(spool)],
        env=emulator_env(gcs.url),
        check=True,
        timeout=60,
    )
    finalized: list[str] = []
    handler = GCSHandler(
        bucket,
        prefix="new/",
        client=client,
        spool_dir=str(spool),
        stream="build",
        on_finalize=lambda name, generation, size: finalized.append(name),
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger(f"alive.{id(handler)}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for i in range(3):
        log.info("new %d", i)
    handler.close()
    log.removeHandler(handler)

    objects = {blob.name: blob.download_as_bytes() for blob in client.list_blobs(bucket)}
    old = b"".join(data for name, data in sorted(objects.items()) if name.startswith("old/"))
    new = b"".join(data for name, data in sorted(objects.items()) if name.startswith("new/"))
    assert b"".join(b"old %d\n" % i for i in range(5)) == old
    assert b"".join(b"new %d\n" % i for i in range(3)) == new
    assert sorted(name for name in objects if name.startswith("new/")) == sorted(finalized)
    assert (3, 0, 0) == (handler.stats().shipped_records, handler.dropped, handler.lost)
