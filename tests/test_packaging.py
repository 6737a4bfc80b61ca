"""What a built wheel (or `pip install .`) carries: the browser assets, templates and migrations,
and that the committed browser assets are exactly the npm lock's files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from scripts.vendor_assets import ASSETS
from tests.stack import ROOT

PACKAGES = ("omnipush", "shared", "producer_api", "dispatcher", "channels", "ws_gateway")


def _source_files() -> list[str]:
    """What a clone of the repository has (tracked, and new files not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [path for path in listed if (ROOT / path).is_file()]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The file names in a wheel built from a copy of the sources, as from a fresh clone."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for path in _source_files():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / path)
    built = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--quiet", "--wheel-dir", str(work / "dist"), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("omnipush-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.mark.parametrize("destination", sorted(ASSETS.values()))
def test_the_wheel_carries_the_browser_assets(wheel_files: set[str], destination: str) -> None:
    assert destination in wheel_files


@pytest.mark.parametrize("package", PACKAGES)
def test_the_wheel_carries_every_file_of_each_package(wheel_files: set[str], package: str) -> None:
    """Templates, static files and migrations included: nothing of a package stays behind."""
    expected = {path for path in _source_files() if path.startswith(f"{package}/")}
    assert expected, f"no files found for {package}"
    missing = sorted(expected - wheel_files)
    assert not missing, f"the wheel lacks {missing}"


def test_the_wheel_has_the_migrations_and_gateway_templates(wheel_files: set[str]) -> None:
    assert "shared/migrations/env.py" in wheel_files
    assert "shared/migrations/script.py.mako" in wheel_files
    assert any(name.startswith("shared/migrations/versions/0001_") for name in wheel_files)
    assert "ws_gateway/templates/demo.html" in wheel_files


def _locked_version(package: str) -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    version: str = lock["packages"][f"node_modules/{package}"]["version"]
    return version


@pytest.mark.parametrize(("source", "destination"), sorted(ASSETS.items()))
def test_committed_assets_are_the_locked_npm_packages_files(source: str, destination: str) -> None:
    package = source.split("/")[0]
    installed = ROOT / "node_modules" / package / "package.json"
    assert installed.exists(), "node_modules is missing: run `make install`"
    version = json.loads(installed.read_text(encoding="utf-8"))["version"]
    assert version == _locked_version(package), (
        f"node_modules has {package} {version}, the lock {_locked_version(package)}: "
        "run `make install`"
    )
    committed = (ROOT / destination).read_bytes()
    assert committed == (ROOT / "node_modules" / source).read_bytes(), (
        f"{destination} is not {package} {version}'s {source}: run `make vendor`"
    )


def test_every_committed_asset_is_tracked_by_git() -> None:
    tracked = set(_source_files())
    missing = sorted(set(ASSETS.values()) - tracked)
    assert not missing, f"ignored by git, so missing from a clone: {missing}"
