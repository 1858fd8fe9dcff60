"""The `smartcity` command on a gateway install (only the [gateway] extra): what is missing
is named with the extra to install, never a traceback. The server packages are hidden from
a subprocess with an import hook, as if they were not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs smartcity.cli with these top-level packages unimportable.
_HIDE = """
import sys
from importlib.abc import MetaPathFinder

class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

HIDDEN = set(sys.argv[1].split(","))
sys.meta_path.insert(0, Hide())
sys.argv = ["smartcity", *sys.argv[2:]]
from smartcity.cli import main
main()
"""
SERVER_ONLY = "fastapi,uvicorn,influxdb_client,httpx,sqlalchemy,nats,re2,google,websockets"


def _smartcity(*args: str, hidden: str = SERVER_ONLY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _HIDE, hidden, *args],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )


def test_help_of_a_service_that_is_not_installed_names_the_extra() -> None:
    res = _smartcity("ingest", "--help")
    assert res.returncode == 0, res.stderr
    assert "pip install 'smartcity-telemetry[server]'" in res.stdout
    res = _smartcity("--help")
    assert "smartcity-telemetry[server]" in res.stdout


def test_running_a_service_that_is_not_installed_names_the_extra() -> None:
    res = _smartcity("ingest", "run")
    assert res.returncode == 3
    assert "pip install 'smartcity-telemetry[server]'" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("hidden", [SERVER_ONLY, "fastapi"])
def test_demo_on_a_gateway_install_names_the_extras_and_exits_1(hidden: str) -> None:
    res = _smartcity("demo", "--duration", "1", hidden=hidden)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "pip install 'smartcity-telemetry[gateway,server,sim]'" in res.stderr
    assert "is missing" in res.stderr


def test_edge_commands_work_without_server_packages() -> None:
    res = _smartcity("edge", "--help")
    assert res.returncode == 0, res.stderr
    for command in ("init", "check", "run", "status"):
        assert command in res.stdout
