"""Every example runs as written (each starts its own local server and reads back)."""

from __future__ import annotations

import ast
import re
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


@pytest.mark.parametrize("example", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_example_uses_public_names_and_says_what_to_install(example: str) -> None:
    """No private import (the local server is gcs_log_sink.testing), and the docstring names
    the pip command with every extra the example imports."""
    source = (EXAMPLES / example).read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert [] == [name for name in imported if name.startswith("gcs_log_sink._")]
    match = re.search(r"pip install 'gcs-log-sink\[([\w,]+)\]'", docstring)
    assert match is not None, docstring
    extras = set(match.group(1).split(","))
    assert "local" in extras  # every example starts the local server
    if "structlog" in imported:
        assert "structlog" in extras
