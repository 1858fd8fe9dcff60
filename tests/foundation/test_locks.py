"""Installs are locked: every profile installs exact, hashed versions that satisfy pyproject.

``make check-lock`` (part of ``make test``) proves that ``uv.lock`` and ``requirements/*.txt``
are what uv resolves and exports from ``pyproject.toml``. These tests prove what the files
promise on their own: exact pins with hashes, the ranges honoured, no server package in the
gateway profile, and a gateway venv made from the lock alone that runs the edge agent.
"""

from __future__ import annotations

import re
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


# A fresh venv made from the gateway lock alone (hashes, --no-deps, then the project) is
# built and run by tests/edge_agent/test_edge_gateway_install.py, following the guide.
