"""Modbus pollers against a real pymodbus server serving the shipped register maps: Modbus TCP,
and Modbus RTU frames through a serial URL."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from firmware_bridge import (
    Backoff,
    LinkState,
    ModbusPoller,
    ModbusPollerConfig,
    ModbusTcpTarget,
    load_register_map,
)
from simulators.devices import ModbusMeterServer
from telemetry import Reading

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

FAST = Backoff(initial=0.05, maximum=0.2)
VALUES = {
    "voltage": 231.5,
    "current": 17.25,
    "activePower": 3890.0,
    "frequency": 49.98,
    "totalActiveEnergyImport": 10234.5,
    "flow": 42.75,
    "velocity": 1.5,
    "pressure": 3.21,
    "temperature": -4.5,
    "alarmFlags": 5,
    "consumption": 98765.432,
    "reverseConsumption": -1.25,
}


def value(field: str, t: float) -> float:
    return VALUES.get(field, 1.0)


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first(poller: ModbusPoller, groups: int) -> list[Reading]:
    out: list[Reading] = []
    async with asyncio.timeout(5):
        async for r in poller.readings():
            out.append(r)
            if len(out) >= groups:
                break
    return out


def test_energy_and_water_meters_decode_to_what_the_server_holds() -> None:
    sdm = load_register_map("eastron-sdm630")
    mag = load_register_map("generic-magflow")

    async def main() -> tuple[list[Reading], list[Reading]]:
        async with ModbusMeterServer({1: sdm, 2: mag}, values=value) as server:
            target = ModbusTcpTarget(host="127.0.0.1", port=server.port)
            energy = ModbusPollerConfig(
                device="substation-4", target=target, register_map=sdm, tags={"feeder": "A"}
            )
            water = ModbusPollerConfig(device="pump-7", target=target, register_map=mag, unit_id=2)
            async with ModbusPoller(energy) as p1, ModbusPoller(water) as p2:
                return await first(p1, 2), await first(p2, 2)

    energy, water = asyncio.run(main())
    merged = {k: v for r in energy for k, v in r.fields.items()}
    assert energy[0].measurement == "ThreePhaseAcMeasurement"
    assert energy[0].clock == "gateway"
    assert energy[0].tags == {"feeder": "A"}
    for key in ("voltage", "current", "activePower", "frequency", "totalActiveEnergyImport"):
        assert merged[key] == pytest.approx(f32(VALUES[key]), rel=1e-6)
    assert merged["voltageL1"] == 1.0
    flow = {k: v for r in water for k, v in r.fields.items()}
    assert water[0].measurement == "WaterConsumptionObserved"
    assert flow["flow"] == 42.75  # float32 CDAB
    assert flow["pressure"] == pytest.approx(3.21)  # int16 * 0.01
    assert flow["temperature"] == pytest.approx(-4.5)  # negative int16 * 0.1
    assert flow["alarmFlags"] == 5
    assert flow["consumption"] == pytest.approx(98765.432)  # uint32 CDAB * 0.001
    assert flow["reverseConsumption"] == pytest.approx(-1.25)  # int32 CDAB * 0.001


def test_poller_survives_the_server_going_away() -> None:
    mag = load_register_map("generic-magflow")
    port = free_port()
    states: list[LinkState] = []

    async def main() -> dict[str, int]:
        config = ModbusPollerConfig(
            device="pump-7",
            target=ModbusTcpTarget(host="127.0.0.1", port=port),
            register_map=mag,
            intervals={"process": 0.05},
            backoff=FAST,
            timeout=0.3,
        )
        async with ModbusPoller(config, on_state=states.append) as poller:
            async with ModbusMeterServer({1: mag}, port=port, values=value):
                await first(poller, 3)
            async with asyncio.timeout(5):
                while poller.state is LinkState.UP:  # noqa: ASYNC110 - polling a state
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            async with ModbusMeterServer({1: mag}, port=port, values=value):
                await first(poller, 3)
            return poller.counters

    counters = asyncio.run(main())
    assert counters["connects"] == 2
    assert counters["poll_errors"] + counters["connect_failed"] >= 1
    assert LinkState.RETRYING in states


def test_exception_response_is_counted() -> None:
    sdm = load_register_map("eastron-sdm630")
    mag = load_register_map("generic-magflow")

    async def main() -> dict[str, int]:
        # Unit 1 holds the small water-meter map: the SDM630's 72-register read is illegal.
        async with ModbusMeterServer({1: mag}, values=value) as server:
            config = ModbusPollerConfig(
                device="wrong-map",
                target=ModbusTcpTarget(host="127.0.0.1", port=server.port),
                register_map=sdm,
                backoff=FAST,
            )
            async with ModbusPoller(config) as poller:
                async with asyncio.timeout(5):
                    while poller.counters["exception_responses"] == 0:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                return poller.counters

    counters = asyncio.run(main())
    assert counters["exception_responses"] >= 1
    assert counters["polls"] == 0


def test_rtu_poller_reads_meters_through_a_serial_url() -> None:
    """Modbus RTU (frames with CRC, the serial client) through a ``socket://`` serial URL,
    as an RS-485-to-Ethernet converter in transparent mode presents a meter bus."""
    from firmware_bridge import ModbusSerialTarget

    sdm = load_register_map("eastron-sdm630")
    mag = load_register_map("generic-magflow")

    async def main() -> tuple[list[Reading], list[Reading]]:
        async with ModbusMeterServer({1: sdm, 7: mag}, values=value, framing="rtu") as server:
            bus = ModbusSerialTarget(port=f"socket://127.0.0.1:{server.port}", baudrate=9600)
            energy = ModbusPollerConfig(device="sub-1", target=bus, register_map=sdm)
            water = ModbusPollerConfig(device="pump-1", target=bus, register_map=mag, unit_id=7)
            async with ModbusPoller(energy) as p1:
                got_energy = await first(p1, 2)
            async with ModbusPoller(water) as p2:
                got_water = await first(p2, 2)
            return got_energy, got_water

    energy, water = asyncio.run(main())
    merged = {k: v for r in energy for k, v in r.fields.items()}
    for key in ("voltage", "current", "activePower", "frequency", "totalActiveEnergyImport"):
        assert merged[key] == pytest.approx(f32(VALUES[key]), rel=1e-6)
    flow = {k: v for r in water for k, v in r.fields.items()}
    assert flow["flow"] == 42.75
    assert flow["consumption"] == pytest.approx(98765.432)


class _ShortAnswers:
    """A Modbus TCP device whose first ``short`` answers hold one register too few (a broken
    or hostile meter), then correct answers of zeros."""

    def __init__(self, short: int) -> None:
        self.short = short
        self.answered = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _ShortAnswers:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                fc, _start, count = struct.unpack(">BHH", pdu[:5])
                if self.answered < self.short:
                    count -= 1
                self.answered += 1
                data = bytes(2 * count)
                body = struct.pack(">BBB", unit, fc, len(data)) + data
                writer.write(struct.pack(">HHH", tid, 0, len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def test_a_meter_answering_the_wrong_register_count_is_counted_not_fatal() -> None:
    """A wrong register count is this meter's bad answer: counted, backed off, polled again;
    it never ends the poller (and with it the agent)."""
    mag = load_register_map("generic-magflow")

    async def main() -> tuple[list[Reading], dict[str, int]]:
        async with _ShortAnswers(short=3) as device:
            config = ModbusPollerConfig(
                device="short-meter",
                target=ModbusTcpTarget(host="127.0.0.1", port=device.port),
                register_map=mag,
                backoff=FAST,
            )
            async with ModbusPoller(config) as poller:
                got = await first(poller, 1)
                return got, dict(poller.counters)

    readings, counters = asyncio.run(main())
    assert counters["bad_responses"] >= 1
    assert counters["poll_errors"] >= 1
    assert readings[0].device == "short-meter"
