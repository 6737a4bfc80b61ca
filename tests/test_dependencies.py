"""The dependency floors leave out releases with published vulnerabilities, and the environment
is the one constraints.txt pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from redis.utils import HIREDIS_AVAILABLE

from tests.stack import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSTRAINTS = ROOT / "constraints.txt"

# The last release before each fix.
VULNERABLE_RELEASES = [
    ("jinja2", "3.1.5"),  # CVE-2025-27516
    ("python-socketio", "5.13.0"),  # CVE-2025-61765
    ("python-socketio", "5.16.1"),  # CVE-2026-48804
    ("python-engineio", "4.13.1"),  # CVE-2026-48802
    ("marshmallow", "3.26.1"),  # CVE-2025-68480
    ("marshmallow", "4.1.1"),  # CVE-2025-68480
    ("flask", "3.1.2"),  # CVE-2026-27205
    ("werkzeug", "3.1.5"),  # CVE-2026-27199
    ("pyjwt", "2.12.1"),
    ("gunicorn", "25.3.0"),
]


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(line) for line in listed]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


@pytest.mark.parametrize(("package", "version"), VULNERABLE_RELEASES)
def test_no_floor_admits_a_vulnerable_release(package: str, version: str) -> None:
    found = [r for r in _requirements() if canonicalize_name(r.name) == package]
    assert found, f"{package} has no floor in pyproject.toml"
    for requirement in found:
        assert not requirement.specifier.contains(version), f"{requirement} admits {version}"


def test_the_installed_packages_are_the_pinned_versions() -> None:
    pins = _pins()
    assert len(pins) > 20, "constraints.txt pins almost nothing"
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: run `make install`"


def test_every_requirement_is_pinned_within_its_floor() -> None:
    pins = _pins()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name]), f"{requirement} vs {pins[name]}"


@pytest.mark.parametrize("build_file", ["Makefile", "Dockerfile"])
def test_npm_never_runs_a_packages_install_script(build_file: str) -> None:
    """swagger-ui-dist's install script is a telemetry call; the packages are only read."""
    text = (ROOT / build_file).read_text(encoding="utf-8").replace("\\\n", " ")
    installs = [
        line
        for line in text.splitlines()
        if re.search(r"\bnpm (ci|install|i)\b", line) and not line.lstrip().startswith("#")
    ]
    for line in installs:
        assert "--ignore-scripts" in line, f"{build_file}: {line.strip()}"
    if build_file == "Makefile":
        assert installs, "the Makefile no longer installs the npm lock"


def test_redis_replies_are_parsed_by_hiredis() -> None:
    """redis-py parses every live-feed read and web emit: in C with hiredis, else in Python,
    many times slower."""
    assert HIREDIS_AVAILABLE, "hiredis is missing: run `make install`"
