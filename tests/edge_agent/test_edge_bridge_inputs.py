"""Firmware-bridge inputs against real devices (ptys, a Modbus TCP server), and the CLI."""

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
from edge_agent._config import parse_config
from firmware_bridge import load_register_map
from simulators.devices import (
    FirmwareDevice,
    FirmwareDeviceConfig,
    ModbusMeterServer,
    NmeaDevice,
    NmeaDeviceConfig,
    PtyPort,
)
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


@pytest.mark.integration
def test_two_modbus_inputs_on_one_rs485_port_both_reach_the_central_broker(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    """Two ``type: modbus`` inputs naming the same serial port (two meters daisy-chained on
    one RS-485 line, here an RTU-over-TCP converter): both meters' readings arrive, and the
    agent keeps one client on the port for both."""
    from firmware_bridge._bus import serial_buses

    central = central_factory(mosquitto, topic_root)
    maps = {1: load_register_map("eastron-sdm630"), 2: load_register_map("generic-magflow")}
    both = {"substation-4-main", "pump-7"}

    async def main() -> None:
        async with ModbusMeterServer(maps, framing="rtu") as server:
            line = {"url": f"socket://127.0.0.1:{server.port}", "baudrate": 9600}
            data = base_config(tmp_path, mosquitto, topic_root)
            data["inputs"] = [
                {
                    "type": "modbus",
                    "name": "feeder",
                    "device": "substation-4-main",
                    "rtu": line,
                    "unit_id": 1,
                    "register_map": "eastron-sdm630",
                    "intervals": {"instantaneous": 0.2},
                },
                {
                    "type": "modbus",
                    "name": "pump",
                    "device": "pump-7",
                    "rtu": line,
                    "unit_id": 2,
                    "register_map": "generic-magflow",
                    "intervals": {"process": 0.2},
                },
            ]
            agent = EdgeAgent(make_config(data))
            async with running(agent):
                await await_until(
                    lambda: {d for d, _, _ in central.readings()} >= both,
                    15,
                    "readings from both meters on the line",
                )
                assert agent.health().links["feeder"] == "up"
                assert agent.health().links["pump"] == "up"
                bus = serial_buses()[line["url"]]
                assert bus.users == 2
                assert bus.counters["connects"] == 1

    asyncio.run(main())
    flows = [v for d, _, v in central.values("flow") if d == "pump-7"]
    assert flows
    assert all(30 < v < 60 for v in flows)
    volts = [v for d, _, v in central.values("voltage") if d == "substation-4-main"]
    assert volts
    assert all(200 < v < 260 for v in volts)


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


@pytest.mark.integration
def test_firmware_and_nmea_devices_on_ptys_reach_the_central_broker(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    """A loop-detector board (firmware protocol) and a GPS receiver (NMEA 0183), each on its
    own pty, read by one agent: every reading they send arrives with the device's values and
    timestamps, and the agent's health reports both links up."""
    central = central_factory(mosquitto, topic_root)
    fw_port = PtyPort(tmp_path / "ttyFW0")
    gps_port = PtyPort(tmp_path / "ttyGPS0", baudrate=9600)
    fw_port.plug()
    gps_port.plug()
    board = FirmwareDevice(fw_port, FirmwareDeviceConfig(sample_interval_ms=50))
    gps = NmeaDevice(gps_port, NmeaDeviceConfig(rate_hz=5))
    data = base_config(tmp_path, mosquitto, topic_root)
    data["inputs"] = [
        {
            "type": "firmware",
            "name": "loops",
            "serial": {"url": str(fw_port.link_path)},
            "device_names": {0x0A01: "loop-3"},
        },
        {
            "type": "nmea",
            "name": "gps",
            "serial": {"url": str(gps_port.link_path), "baudrate": 9600},
            "device": "bus-0417",
        },
    ]
    agent = EdgeAgent(make_config(data))

    async def main() -> None:
        async with running(agent):
            await await_until(
                lambda: (
                    agent.health().links.get("loops") == "up"
                    and agent.health().links.get("gps") == "up"
                ),
                10,
                "serial links up",
            )
            board.start()
            gps.start()
            await await_until(
                lambda: (
                    sum(d == "bus-0417" for d, _, _ in central.readings()) >= 8
                    and sum(d == "loop-3" for d, _, _ in central.readings()) >= 40
                ),
                15,
                "readings from both devices",
            )
            board.stop()
            gps.stop()
            await asyncio.sleep(0.5)  # the last frames cross the ptys and the pipeline

    try:
        asyncio.run(main())  # a clean stop: everything pending is sealed and published
    finally:
        board.stop()
        gps.stop()
        fw_port.unplug()
        gps_port.unplug()
    got = central.readings()
    # Firmware protocol: every READINGS frame is one reading per measurement, device time.
    fw = {(ts, m) for d, ts, m in got if d == "loop-3"}
    assert board.sent
    for s in board.sent:
        for m in ("TrafficFlowObserved", "AirQualityObserved"):
            assert (s.ts_ms * 1_000_000, m) in fw, f"frame {s.seq} ({m}) missing"
    by_ts = {ts: v for d, ts, v in central.values("vehicleCount") if d == "loop-3"}
    for s in board.sent:
        assert by_ts[s.ts_ms * 1_000_000] == {i: v for i, _, v in s.values}[2]
    # NMEA: one Vehicle reading per fix; all but the last fix (the receiver stopped before
    # the next epoch that would have closed it) arrive with the receiver's position.
    lat = {ts: v for d, ts, v in central.values("latitude") if d == "bus-0417"}
    fixes = gps.sent[1:-1]
    assert len(fixes) >= 6
    for f in fixes:
        ts = round(f.unix_s * 100) * 10_000_000
        assert ts in lat, f"fix at {f.unix_s} missing"
        assert lat[ts] == pytest.approx(f.lat, abs=1e-6)


def test_a_shared_serial_port_is_checked_when_the_config_loads() -> None:
    def config(*inputs: dict[str, object]) -> dict[str, object]:
        return {"gateway": {"id": "gw"}, "broker": {"host": "localhost"}, "inputs": list(inputs)}

    def meter(name: str, unit: int, **line: object) -> dict[str, object]:
        return {"type": "modbus", "name": name, "device": name, "unit_id": unit,
                "register_map": "eastron-sdm120",
                "rtu": {"url": "/dev/ttyUSB0", "baudrate": 9600, **line}}

    # Meters on one RS-485 port with the same line settings: one bus, accepted.
    parse_config(config(meter("m1", 1), meter("m2", 2)), source="edge.yaml")
    with pytest.raises(ConfigError, match=r"edge.yaml: .*'m1' and 'm2' share RS-485 port "
                       r"'/dev/ttyUSB0' with different settings \(9600 N 1 vs 19200 N 1\)"):
        parse_config(config(meter("m1", 1), meter("m2", 2, baudrate=19200)), source="edge.yaml")
    firmware = {"type": "firmware", "name": "fw", "serial": {"url": "/dev/ttyUSB0"}}
    with pytest.raises(ConfigError, match="only Modbus meters can share a port"):
        parse_config(config(meter("m1", 1), firmware), source="edge.yaml")
