"""Installs are locked: every profile installs exact, hashed versions that satisfy pyproject.

``make check-lock`` (part of ``make test``) proves that ``uv.lock`` and ``requirements/*.txt``
are what uv resolves and exports from ``pyproject.toml``. These tests prove what the files
promise on their own: exact pins with hashes, the ranges honoured, no server package in the
gateway profile, and a gateway venv made from the lock alone that runs the edge agent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
PROFILES = ("gateway", "server", "sim", "dev")
SERVER_ONLY = {"fastapi", "uvicorn", "starlette", "httpx", "influxdb-client", "sqlalchemy"}

# "name==version ; marker \" then one or more "--hash=sha256:..." continuation lines.
_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)"
    r"(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\\n(?P<hashes>(?:\s+--hash=sha256:[0-9a-f]{64}\s*\\?\n?)+)",
    re.MULTILINE,
)


def _entries(profile: str) -> list[re.Match[str]]:
    return list(_ENTRY.finditer((REQ / f"{profile}.txt").read_text()))


def _pins(profile: str) -> dict[str, str]:
    """Package -> version for this interpreter (markers evaluated)."""
    pins: dict[str, str] = {}
    for entry in _entries(profile):
        marker = entry.group("marker")
        if marker is None or Marker(marker).evaluate():
            pins[canonicalize_name(entry.group("name"))] = entry.group("version")
    return pins


def _declared(extra: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    found = [Requirement(r) for r in project["dependencies"]]
    pending = [extra]
    while pending:
        for text in project["optional-dependencies"][pending.pop()]:
            req = Requirement(text)
            if canonicalize_name(req.name) == own:  # dev = "smartcity-telemetry[gateway,...]"
                pending.extend(req.extras)
            else:
                found.append(req)
    return found


@pytest.mark.parametrize("profile", [*PROFILES, "build"])
def test_every_line_of_a_lock_is_an_exact_pin_with_hashes(profile: str) -> None:
    text = (REQ / f"{profile}.txt").read_text()
    requirement_lines = [
        line for line in text.splitlines() if line and not line.startswith(("#", " "))
    ]
    entries = _entries(profile)
    assert entries, f"requirements/{profile}.txt pins nothing"
    assert len(requirement_lines) == len(entries), "a requirement without == or --hash"
    for entry in entries:
        assert entry.group("hashes").count("--hash=sha256:") >= 1


@pytest.mark.parametrize("profile", PROFILES)
def test_each_locked_version_satisfies_the_ranges_of_pyproject(profile: str) -> None:
    pins = _pins(profile)
    for req in _declared(profile):
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject [{profile}]) is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} in requirements/{profile}.txt is outside {req}: "
            "run make lock"
        )


def test_the_gateway_lock_holds_no_server_package() -> None:
    gateway = {canonicalize_name(e.group("name")) for e in _entries("gateway")}
    assert gateway.isdisjoint(SERVER_ONLY), gateway & SERVER_ONLY
    server = {canonicalize_name(e.group("name")) for e in _entries("server")}
    assert {"fastapi", "uvicorn", "httpx"} <= server


def test_profiles_agree_on_every_shared_package() -> None:
    """One resolution: a package in two profiles has the same version in both."""
    dev = _pins("dev")
    for profile in ("gateway", "server", "sim"):
        for name, version in _pins(profile).items():
            assert dev.get(name) == version, f"{name}: {profile} {version}, dev {dev.get(name)}"


@pytest.mark.integration
@pytest.mark.slow
def test_a_gateway_venv_from_the_lock_alone_runs_the_edge_agent(tmp_path: Path) -> None:
    """What docs/gateway-install.md tells a city engineer to run, in a fresh venv: the locked
    gateway set with hashes, then the project without dependencies. Nothing else resolves."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, "--require-hashes", "--no-deps", "-r", str(REQ / "build.txt"),
         "-r", str(REQ / "gateway.txt")],
        check=True, timeout=600, env=env,
    )  # fmt: skip
    # Build from a copy: setuptools' build/ and egg-info stay out of the work tree.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                      ".*_cache", ".hypothesis", "var", "artifacts"),
    )  # fmt: skip
    subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", str(source)],
        check=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    check = subprocess.run(
        [str(python), "-m", "pip", "check"], capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
        env=env, timeout=120, check=True,
    ).stdout  # fmt: skip
    names = {canonicalize_name(line.split("==")[0]) for line in installed.splitlines()}
    assert names.isdisjoint(SERVER_ONLY), names & SERVER_ONLY
    pins = _pins("gateway")
    for line in installed.splitlines():
        name, _, version = line.partition("==")
        if canonicalize_name(name) in pins:
            assert pins[canonicalize_name(name)] == version, line
    help_text = subprocess.run(
        [str(venv / "bin" / "smartcity"), "edge", "--help"], capture_output=True, text=True,
        env=env, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert help_text.returncode == 0, help_text.stderr
    assert "run" in help_text.stdout
