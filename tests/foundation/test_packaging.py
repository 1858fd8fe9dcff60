"""Gateways are small: the gateway install and imports stay free of server packages."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"fastapi", "uvicorn", "starlette", "httpx", "influxdb_client", "sqlalchemy"}

# Runs in a child interpreter: make every server-only package unimportable, as on a gateway
# installed with the 'gateway' extra only.
_GATEWAY_PRELUDE = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(SERVER_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("-", "_")


def _gateway_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _GATEWAY_PRELUDE + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gateway_extra_declares_no_server_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["gateway"]
    gateway = {_name(r) for r in deps}
    assert gateway.isdisjoint(SERVER_ONLY), gateway & SERVER_ONLY


def test_gateway_packages_work_without_server_packages() -> None:
    result = _gateway_python(
        "import telemetry, firmware_bridge, edge_agent, edge_agent.cli\n"
        "from telemetry import LineProtocolEncoder, Topics, decode_batch\n"
        "print('ok')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_on_a_gateway_lists_every_service_and_explains_missing_extras() -> None:
    result = _gateway_python(
        "import sys\nfrom smartcity.cli import app\nsys.argv = ['smartcity', '--help']\napp()\n"
    )
    assert result.returncode == 0, result.stderr
    for sub in ("edge", "ingest", "api", "sim", "demo"):
        assert sub in result.stdout
    result = _gateway_python(
        "import sys\nfrom smartcity.cli import app\n"
        "sys.argv = ['smartcity', 'edge', '--help']\napp()\n"
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout
    result = _gateway_python(
        "import sys\nfrom smartcity.cli import app\n"
        "sys.argv = ['smartcity', 'ingest', 'run', '--config', 'x.yaml']\napp()\n"
    )
    assert result.returncode == 3
    assert "smartcity-telemetry[server]" in result.stderr


def test_register_maps_and_typing_markers_are_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["*"]
    assert {"py.typed", "*.yaml"} <= set(data)
    assert (ROOT / "firmware_bridge" / "maps" / "__init__.py").exists()


def test_the_edge_command_does_not_load_the_local_stack() -> None:
    result = _gateway_python(
        "import sys\nimport smartcity.cli, edge_agent.cli\n"
        "from foundation import configure_logging\n"
        "print('smartcity._localstack' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_firmware_links_do_not_load_modbus() -> None:
    """A gateway with firmware and NMEA links only never holds pymodbus or the register-map
    models; the Modbus names still import from the package on first use."""
    result = _gateway_python(
        "import sys\nimport firmware_bridge\n"
        "from firmware_bridge import FirmwareLink, NmeaLink, FrameDecoder\n"
        "print(sorted(m for m in ('pymodbus', 'firmware_bridge._registers',"
        " 'firmware_bridge._modbus') if m in sys.modules))\n"
        "from firmware_bridge import ModbusPoller, load_register_map\n"
        "print(ModbusPoller.__module__, load_register_map('eastron-sdm120').measurement)\n"
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert first == "[]"
    assert second.startswith("firmware_bridge._modbus ")
