"""Every example runs as written (each starts its own local server and reads back)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("structlog_direct.py", '"event": "order placed"'),
        ("structlog_stdlib.py", '"logger": "legacy.billing"'),
        ("fastapi_upload.py", "'size': 52428800"),
    ],
)
def test_example_runs_and_prints_what_arrived(example: str, expected: str) -> None:
    """The example exits 0 and prints what it read back from the server."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert expected in result.stdout
