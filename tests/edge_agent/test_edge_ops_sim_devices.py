"""`smartcity sim devices` tells an engineer what an agent config needs: the firmware board
ids (``device_names`` keys) and Modbus TCP ports that stay put (``--modbus-port``)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from edge_helpers import Central, await_until, base_config, make_config, running

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto, free_port

SCENARIO: dict[str, Any] = {
    "name": "ops-devices",
    "seed": 7,
    "start": "2024-11-27T00:00:00+01:00",
    "tick_s": 60,
    "speed": 60,
    "city": {"grid": {"rows": 6, "cols": 6, "spacing_m": 350, "arterial_every": 2},
             "bus_routes": 2},
    "intervals": dict.fromkeys(("loop", "bus", "parking", "air", "noise", "water", "energy"), 60),
    "gateways": [
        {"prefix": "cab", "count": 2, "devices": {"loop": 2}},
        {"prefix": "sub", "count": 1, "devices": {"energy": 2}},
    ],
    "devices": {"firmware": 2, "nmea": 0, "modbus_meters": 2, "mqtt_sensors": 0,
                "sample_interval_s": 0.2},
}


def _read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The JSON document `sim devices` prints first (it then keeps serving)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.rstrip() == "}":
            return dict(json.loads("".join(lines)))
    raise AssertionError(f"no JSON from sim devices: {''.join(lines)!r}")


@pytest.mark.integration
def test_sim_devices_prints_board_ids_an_agent_can_use_and_fixed_modbus_ports(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    base = free_port()
    while True:  # two consecutive free ports
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                break
            except OSError:
                base = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("smartcity")), "sim", "devices", "-s", str(scenario),
         "--dir", str(tmp_path / "dev"), "--modbus-port", str(base), "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        doc = _read_json(proc, 30)
        boards = doc["firmware_boards"]
        assert set(boards) == set(doc["firmware"])
        assert len(boards) == 2
        assert sorted(m["port"] for m in doc["modbus"].values()) == [base, base + 1]
        device, board = next(iter(boards.items()))
        central = central_factory(mosquitto, topic_root)
        data = base_config(tmp_path, mosquitto, topic_root)
        data["metrics"] = {"port": None}
        data["inputs"] = [{"type": "firmware", "name": "loops",
                           "serial": {"url": doc["firmware"][device]},
                           "device_names": {board: device}}]
        agent = EdgeAgent(make_config(data))

        async def main() -> None:
            async with running(agent):
                await await_until(
                    lambda: any(d == device for d, _, _ in central.readings()), 20,
                    f"readings of {device} under its own name",
                )

        asyncio.run(main())
        assert not any(d.startswith("fw-") for d, _, _ in central.readings())
    finally:
        proc.terminate()
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
