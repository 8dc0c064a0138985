"""pyproject.toml's dependency floors and .ci/constraints-min.txt stay one list (#9).

CI's second job installs the constraints file and runs the writer and handler suites, so a
floor is only tested if the file pins exactly it: a floor raised (or a dependency added) in
pyproject alone would be declared but never tried, which is how ``google-cloud-storage>=2.14``
came to allow a release that lost every record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / ".ci" / "constraints-min.txt"
# Extras that are part of the library (the rest, `local` and `test`, are tooling).
RUNTIME_EXTRAS = ("structlog",)


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def _declared_floors() -> dict[str, Version]:
    floors = {}
    for requirement in _runtime_requirements():
        (floor,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        floors[canonicalize_name(requirement.name)] = Version(floor)
    return floors


def _pinned() -> dict[str, Version]:
    pins = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert "==" == spec.operator, line
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def test_every_runtime_dependency_declares_one_floor() -> None:
    """Each runtime requirement has exactly one `>=`: the version the CI job pins."""
    for requirement in _runtime_requirements():
        floors = [spec for spec in requirement.specifier if spec.operator == ">="]
        assert 1 == len(floors), str(requirement)


def test_constraints_pin_exactly_the_declared_floors() -> None:
    """Same packages, same versions (2.15 == 2.15.0): neither list can move alone."""
    assert _declared_floors() == _pinned()


def test_ci_installs_the_constraints_file() -> None:
    """The floors are only proven if .ci/run installs them."""
    assert "-c .ci/constraints-min.txt" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
