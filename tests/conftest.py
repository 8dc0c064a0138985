"""Fixtures shared by every test: the local GCS server, clients and fresh buckets.

The server is gcp-storage-emulator patched to answer as GCS does where it matters (see
``gcs_log_sink._localgcs``), started once per session on a free loopback port and stopped
by PID at the end.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helpers: faultproxy

from gcs_log_sink._localgcs import LocalGCS


@pytest.fixture(scope="session")
def gcs() -> Iterator[LocalGCS]:
    """The local GCS server for the whole session."""
    with LocalGCS() as server:
        yield server


@pytest.fixture(scope="session")
def client(gcs: LocalGCS) -> Any:
    """A storage client talking straight to the server (used to read back)."""
    return gcs.client()


@pytest.fixture
def bucket(client: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    client.create_bucket(name)
    return name
