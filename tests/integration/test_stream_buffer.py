"""The writer's one-chunk buffer (sent without a copy) against partial persists."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

from faultproxy import FaultProxy, is_chunk_upload
from helpers import crc32c_b64, read_object

from gcs_log_sink import GCSObjectStream

UNIT = 256 * 1024
CHUNK = 4 * UNIT


def test_every_chunk_partly_persisted_moves_the_rest_and_loses_nothing(
    proxy: FaultProxy, proxied: Any, client: Any, bucket: str
) -> None:
    """Twelve chunks in a row are partly persisted (1 to 3 of 4 units kept), so the
    unconfirmed rest is moved to the buffer's front both when it overlaps what was released
    (1 unit kept) and when it does not (3 kept), with odd writes landing on top of it and a
    write larger than a chunk growing the buffer: the object is byte for byte what was
    written, and the buffer never held more than a chunk plus the largest write."""
    rng = random.Random(13)
    data = rng.randbytes(9 * CHUNK + 4321)
    proxy.script(["partial"] * 12, match=is_chunk_upload)
    out = GCSObjectStream(bucket, "obj", client=proxied, chunk_size=CHUNK, timeout=5.0)
    out._policy = replace(out._policy, initial_delay=0.01, max_delay=0.05)
    sizes = [rng.randint(1, 3 * UNIT) for _ in range(40)] + [CHUNK + 777]
    largest = max(sizes)
    with out:
        offset = 0
        while offset < len(data):
            size = sizes[rng.randrange(len(sizes))]
            out.write(data[offset : offset + size])
            offset += size
            assert out._buffer.capacity <= CHUNK + largest
    starts = [
        (event.kind, int(event.content_range.split()[1].split("-")[0]))
        for event in proxy.events
        if event.content_range and event.content_range.split()[1][0].isdigit()
    ]
    kept = {  # units the server kept of each partly persisted chunk: where the next starts
        (following - start) // UNIT
        for (kind, start), (_, following) in itertools.pairwise(starts)
        if kind == "partial"
    }
    assert 12 == sum(kind == "partial" for kind, _ in starts)
    assert {1, 3} <= kept  # the rest overlapping what was released, and not
    assert data == read_object(client, bucket, "obj")
    assert crc32c_b64(data) == out.crc32c
