"""Firmware-bridge inputs and the local MQTT input against real servers, and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from edge_helpers import Central, await_until, base_config, make_config, running

from edge_agent import ConfigError, EdgeAgent, load_config
from firmware_bridge import load_register_map
from simulators.devices import ModbusMeterServer
from smartcity._localstack import Mosquitto


@pytest.mark.integration
def test_modbus_tcp_meter_readings_reach_the_central_broker(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)

    async def main() -> None:
        async with ModbusMeterServer({1: load_register_map("eastron-sdm630")}) as server:
            data = base_config(tmp_path, mosquitto, topic_root)
            data["inputs"] = [
                {
                    "type": "modbus",
                    "name": "meter",
                    "device": "substation-4-main",
                    "tcp": {"host": "127.0.0.1", "port": server.port},
                    "register_map": "eastron-sdm630",
                }
            ]
            agent = EdgeAgent(make_config(data))
            async with running(agent):
                await await_until(
                    lambda: any(d == "substation-4-main" for d, _, _ in central.readings()),
                    15,
                    "meter readings",
                )
                assert agent.health().links["meter"] == "up"

    asyncio.run(main())


def test_check_command_reports_file_key_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw/1"},
                "broker": {"host": "b", "prot": 1},
                "inputs": [{"type": "modbus", "name": "m", "device": "d", "register_map": "x"}],
            }
        )
    )
    res = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 78
    assert f"{bad}: gateway.id: String should match pattern" in res.stderr
    assert f"{bad}: broker.prot: unknown key" in res.stderr
    assert f"{bad}: inputs[0]: set exactly one of tcp and rtu" in res.stderr
    (tmp_path / "syntax.yaml").write_text("gateway: [1, 2\n")
    with pytest.raises(ConfigError, match="line 2, column 1: not valid YAML"):
        load_config(tmp_path / "syntax.yaml")


SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "edge"


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_sample_configs_validate(sample: Path) -> None:
    cfg = load_config(sample)
    assert cfg.inputs
