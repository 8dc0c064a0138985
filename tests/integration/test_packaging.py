"""What a release ships: license, description, extras, URLs, and types a user's mypy sees.

Read from the installed distribution's metadata (``pip install -e`` wrote it), so these hold
for what pip built, not for what pyproject.toml seems to say.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_license_file_matches_the_declared_license() -> None:
    """LICENSE is the Apache License 2.0 text, declared as Apache-2.0 and shipped."""
    meta = metadata.metadata("gcs-log-sink")
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache-2.0" == meta["License-Expression"]
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert ["LICENSE"] == meta.get_all("License-File")


def test_wheel_description_starts_with_pip_install() -> None:
    """The long description opens with ``pip install gcs-log-sink``, not a clone-only command."""
    description = metadata.metadata("gcs-log-sink").get_payload()  # type: ignore[attr-defined]
    first_command = next(
        line for line in description.splitlines() if line.strip() and not line.startswith("```")
    )
    assert first_command.startswith("pip install gcs-log-sink")
    assert "text/markdown" == metadata.metadata("gcs-log-sink")["Description-Content-Type"]


def test_urls_classifiers_and_extras() -> None:
    """Project URLs, classifiers, and a dev extra (linters) apart from the test extra."""
    meta = metadata.metadata("gcs-log-sink")
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(urls)
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status") for c in classifiers)
    assert {"dev", "test", "local", "structlog"} <= set(meta.get_all("Provides-Extra") or [])
    requires = meta.get_all("Requires-Dist") or []
    test_reqs = [r for r in requires if 'extra == "test"' in r]
    dev_reqs = [r for r in requires if 'extra == "dev"' in r]
    assert not any(r.startswith(("ruff", "mypy")) for r in test_reqs)
    assert any(r.startswith("ruff") for r in dev_reqs)
    assert any(r.startswith("mypy") for r in dev_reqs)


def test_a_users_mypy_sees_the_installed_types(tmp_path: Path) -> None:
    """From another directory, mypy --strict resolves gcs_log_sink (py.typed, no import hook)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is in the dev extra")
    assert (ROOT / "gcs_log_sink" / "py.typed").exists()
    user = tmp_path / "user_code.py"
    user.write_text(
        "from gcs_log_sink import GCSObjectStream\n"
        "from gcs_log_sink.testing import LocalGCS\n\n\n"
        "def size(out: GCSObjectStream) -> int:\n"
        "    return out.size\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "c"), str(user)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The one error is ours on purpose: the types are seen (size is int | None), not Any.
    assert "import-not-found" not in result.stdout, result.stdout
    assert "import-untyped" not in result.stdout, result.stdout
    assert 'Incompatible return value type (got "int | None"' in result.stdout, result.stdout
