"""Fixtures shared by every test: the local GCS server, clients and fresh buckets.

The server is gcp-storage-emulator patched to answer as GCS does where it matters (see
``gcs_log_sink._localgcs``), started once per session on a free loopback port and stopped
by PID at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helpers: faultproxy

from faultproxy import FaultProxy
from helpers import client_for

from gcs_log_sink._localgcs import LocalGCS

# The children the tests start (CLI runs, scripts, the server) inherit the environment: the
# same allowance as pyproject.toml's filterwarnings, so a test that expects a child's stderr
# empty does not fail on google-api-core's notice about the Python version's end of life.
_API_CORE_EOL = "ignore::FutureWarning:google.api_core._python_version_support"
os.environ["PYTHONWARNINGS"] = ",".join(
    item for item in (os.environ.get("PYTHONWARNINGS"), _API_CORE_EOL) if item
)


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


@pytest.fixture
def proxy(gcs: LocalGCS) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's server, faulting nothing until told."""
    with FaultProxy(gcs.url, seed=1234, stall_seconds=2.0) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def proxied(proxy: FaultProxy) -> Any:
    """A storage client whose requests all go through the proxy."""
    return client_for(proxy.url)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger that does not propagate; its handlers are closed afterwards."""
    log = logging.getLogger(f"test.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
