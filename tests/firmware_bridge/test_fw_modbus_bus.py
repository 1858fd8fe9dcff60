"""Several Modbus RTU meters on one RS-485 line: one shared client, one request at a time.

The meters are a real pymodbus server (RTU frames over TCP) behind ``RtuLine``, a proxy that
plays the line: it counts connections, checks that no request is sent while another one is
unanswered and that every frame's CRC is right, and swallows requests to absent units.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter

import pytest
from fw_helpers import RtuLine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import (
    Backoff,
    ConfigError,
    LinkState,
    ModbusPoller,
    ModbusPollerConfig,
    ModbusSerialTarget,
    RegisterMap,
    load_register_map,
)
from firmware_bridge._bus import SerialLine, attach_serial_bus, release_bus, serial_buses
from simulators.devices import ModbusMeterServer
from telemetry import Reading

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = Backoff(initial=0.05, maximum=0.2)
MAPS = {
    1: load_register_map("eastron-sdm630"),
    2: load_register_map("eastron-sdm120"),
    3: load_register_map("generic-magflow"),
}
VALUES = {"voltage": 231.5, "current": 17.25, "flow": 42.75, "pressure": 3.21, "alarmFlags": 5}


def value(field: str, t: float) -> float:
    # Distinct per field and exact in float32; scaled integer types round-trip them.
    return VALUES.get(field, len(field) + 0.5)


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def check_reading(reading: Reading, register_map: RegisterMap) -> None:
    """The reading is one whole group of the meter's own map, with the server's values."""
    groups = [{r.field for r in g.registers} for g in register_map.groups]
    assert set(reading.fields) in groups, (reading.device, sorted(reading.fields))
    for name, got in reading.fields.items():
        assert got == pytest.approx(f32(value(name, 0.0)), rel=1e-6, abs=1e-9)


def meter(
    port: str,
    unit: int,
    register_map: RegisterMap,
    *,
    interval: float = 0.05,
    timeout: float = 0.5,
    baudrate: int = 9600,
) -> ModbusPollerConfig:
    return ModbusPollerConfig(
        device=f"meter-{unit}",
        target=ModbusSerialTarget(port=port, baudrate=baudrate),
        register_map=register_map,
        unit_id=unit,
        intervals={g.name: interval for g in register_map.groups},
        backoff=FAST,
        timeout=timeout,
    )


async def collect(pollers: list[ModbusPoller], seconds: float) -> dict[str, list[Reading]]:
    got: dict[str, list[Reading]] = {p.name: [] for p in pollers}

    async def drain(p: ModbusPoller) -> None:
        async for r in p.readings():
            got[p.name].append(r)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(drain(p)) for p in pollers]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
    return got


def test_three_meters_on_one_line_share_one_connection_and_take_turns() -> None:
    async def main() -> tuple[dict[str, list[Reading]], RtuLine, dict[str, dict[str, int]]]:
        async with (
            ModbusMeterServer(MAPS, values=value, framing="rtu") as server,
            RtuLine(server.port) as line,
        ):
            configs = [meter(line.url, unit, m) for unit, m in MAPS.items()]
            async with (
                ModbusPoller(configs[0]) as p1,
                ModbusPoller(configs[1]) as p2,
                ModbusPoller(configs[2]) as p3,
            ):
                assert p1.bus is p2.bus is p3.bus
                assert serial_buses()[line.url].users == 3
                got = await collect([p1, p2, p3], 1.5)
                counters = {p.name: dict(p.counters) for p in (p1, p2, p3)}
            assert serial_buses() == {}
            return got, line, counters

    got, line, counters = asyncio.run(main())
    assert line.connections == 1
    assert line.overlaps == 0
    assert line.bad_frames == 0
    for unit, register_map in MAPS.items():
        readings = got[f"meter-{unit}"]
        # Two groups every 0.05 s for 1.5 s: 60 if the line were free; three meters share it.
        assert len(readings) >= 20, (unit, len(readings))
        for r in readings:
            check_reading(r, register_map)
        assert counters[f"meter-{unit}"]["poll_errors"] == 0
        assert counters[f"meter-{unit}"]["connects"] == 1
        assert line.answers[unit] == line.requests[unit] >= len(readings)


def test_an_absent_meter_times_out_alone_and_the_others_keep_their_rate() -> None:
    timeout, interval, window = 0.3, 0.1, 3.0

    async def main() -> tuple[dict[str, list[Reading]], RtuLine, dict[str, dict[str, int]]]:
        async with (
            ModbusMeterServer(MAPS, values=value, framing="rtu") as server,
            RtuLine(server.port, absent={9}) as line,
        ):
            healthy = [meter(line.url, u, m, interval=interval) for u, m in MAPS.items()]
            gone = meter(line.url, 9, MAPS[3], interval=interval, timeout=timeout)
            states: list[LinkState] = []
            async with (
                ModbusPoller(healthy[0]) as p1,
                ModbusPoller(healthy[1]) as p2,
                ModbusPoller(healthy[2]) as p3,
                ModbusPoller(gone, on_state=states.append) as p9,
            ):
                got = await collect([p1, p2, p3, p9], window)
                assert p9.state is LinkState.DOWN
                assert p1.state is p2.state is p3.state is LinkState.UP
                bus = p1.bus
                assert bus is not None
                assert bus.counters["link_down"] == 0
                counters = {p.name: dict(p.counters) for p in (p1, p2, p3, p9)}
            return got, line, counters

    got, line, counters = asyncio.run(main())
    assert got["meter-9"] == []
    # The absent meter holds the line at most `timeout` per attempt, then backs off
    # (FAST: up to 0.2 s): it is retried, counted, and never takes the bus down.
    assert counters["meter-9"]["timeouts"] >= window / (timeout + FAST.maximum) - 1
    assert counters["meter-9"]["timeouts"] == counters["meter-9"]["poll_errors"]
    assert counters["meter-9"]["connects"] == 1
    # The last request may have been on the line when the poller closed.
    assert 0 <= line.swallowed[9] - counters["meter-9"]["timeouts"] <= 1
    assert line.connections == 1
    assert line.overlaps == 0
    assert line.bad_frames == 0
    for unit, register_map in MAPS.items():
        readings = got[f"meter-{unit}"]
        # Rate bound: each of the two groups is polled at least once per (timeout +
        # interval), however the absent meter's slots fall (the others would get 60 each).
        assert len(readings) >= 2 * (window / (timeout + interval) - 1), (unit, len(readings))
        for r in readings:
            check_reading(r, register_map)
        assert counters[f"meter-{unit}"]["poll_errors"] == 0


def test_conflicting_line_settings_are_refused_at_start() -> None:
    async def main() -> None:
        async with (
            ModbusMeterServer(MAPS, values=value, framing="rtu") as server,
            RtuLine(server.port) as line,
        ):
            async with ModbusPoller(meter(line.url, 1, MAPS[1])) as p1:
                other = meter(line.url, 2, MAPS[2], baudrate=19200)
                with pytest.raises(ConfigError) as info:
                    async with ModbusPoller(other):
                        pass
                msg = str(info.value)
                assert line.url in msg
                assert "baudrate 19200 vs 9600 in use" in msg
                # The refused poller left the bus alone: the first one still reads.
                readings = await collect([p1], 0.3)
                assert readings["meter-1"]
                assert serial_buses()[line.url].users == 1
            assert line.connections == 1

    asyncio.run(main())


def test_closing_one_poller_keeps_the_line_open_and_the_last_closes_it() -> None:
    async def main() -> None:
        async with (
            ModbusMeterServer(MAPS, values=value, framing="rtu") as server,
            RtuLine(server.port) as line,
        ):
            p1 = ModbusPoller(meter(line.url, 1, MAPS[1]))
            p2 = ModbusPoller(meter(line.url, 2, MAPS[2]))
            async with p1:
                async with p2:
                    await collect([p1, p2], 0.3)
                    assert line.open_connections == 1
                assert p2.state is LinkState.CLOSED
                bus = p1.bus
                assert bus is not None
                assert bus.state is LinkState.UP
                before = Counter(line.answers)
                got = await collect([p1], 0.3)
                assert got["meter-1"]
                assert line.answers[1] > before[1]
                assert line.answers[2] == before[2]
                assert line.open_connections == 1
            assert serial_buses() == {}
            assert bus.state is LinkState.CLOSED
            async with asyncio.timeout(5):
                while line.open_connections:  # noqa: ASYNC110 - polling a counter
                    await asyncio.sleep(0.01)
            assert line.connections == 1

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_broken_line_is_reopened_and_every_meter_sees_it() -> None:
    line_port = free_port()
    url = f"socket://127.0.0.1:{line_port}"

    def line_on(server_port: int) -> RtuLine:
        line = RtuLine(server_port)
        line.port = line_port
        return line

    async def main() -> tuple[dict[str, list[LinkState]], dict[str, int]]:
        states: dict[str, list[LinkState]] = {"meter-1": [], "meter-2": []}
        async with ModbusMeterServer(MAPS, values=value, framing="rtu") as server:
            line = await line_on(server.port).__aenter__()
            p1 = ModbusPoller(meter(url, 1, MAPS[1]), on_state=states["meter-1"].append)
            p2 = ModbusPoller(meter(url, 2, MAPS[2]), on_state=states["meter-2"].append)
            async with p1, p2:
                await collect([p1, p2], 0.3)
                await line.__aexit__()  # the RS-485 converter loses power
                async with asyncio.timeout(5):
                    while LinkState.RETRYING not in states["meter-2"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)  # reopen attempts fail meanwhile
                async with line_on(server.port) as line2:
                    got = await collect([p1, p2], 1.0)
                    assert got["meter-1"]
                    assert got["meter-2"]
                    assert line2.connections == 1
                    assert line2.overlaps == 0
                    bus = p1.bus
                    assert bus is not None
                    return states, dict(bus.counters)

    states, bus_counters = asyncio.run(main())
    assert bus_counters["connects"] == 2
    assert bus_counters["link_down"] == 1
    for seen in states.values():
        assert seen[0] is LinkState.UP  # from the initial "connecting"
        assert LinkState.DOWN in seen
        assert seen.index(LinkState.DOWN) < len(seen) - 1
        assert LinkState.UP in seen[seen.index(LinkState.DOWN) :]


SETTINGS = st.fixed_dictionaries(
    {
        "baudrate": st.sampled_from([1200, 9600, 19200, 115200]),
        "bytesize": st.sampled_from([7, 8]),
        "parity": st.sampled_from(["N", "E", "O"]),
        "stopbits": st.sampled_from([1, 2]),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=SETTINGS, second=SETTINGS)
def test_a_second_user_of_a_port_joins_iff_its_line_settings_match(
    first: dict[str, object], second: dict[str, object]
) -> None:
    port = "/nonexistent/ttyRS485-0"  # never opens: the bus keeps retrying meanwhile
    a = SerialLine(port=port, **first)  # type: ignore[arg-type]
    b = SerialLine(port=port, **second)  # type: ignore[arg-type]

    async def main() -> None:
        seen: list[LinkState] = []
        bus, h1 = attach_serial_bus(
            a, lambda s, e: seen.append(s), response_timeout=0.1, backoff=FAST
        )
        try:
            if first == second:
                bus2, h2 = attach_serial_bus(
                    b, lambda s, e: None, response_timeout=0.1, backoff=FAST
                )
                assert bus2 is bus
                assert bus.users == 2
                await release_bus(bus2, h2)
                assert serial_buses() == {port: bus}
            else:
                with pytest.raises(ConfigError) as info:
                    attach_serial_bus(b, lambda s, e: None, response_timeout=0.1, backoff=FAST)
                for name in first:
                    if first[name] != second[name]:
                        assert f"{name} {second[name]!r} vs {first[name]!r}" in str(info.value)
                    else:
                        assert f"{name} " not in str(info.value).split(": ", 2)[-1]
                assert port in str(info.value)
                assert bus.users == 1
        finally:
            await release_bus(bus, h1)
        assert serial_buses() == {}
        assert seen[0] is LinkState.CONNECTING

    asyncio.run(main())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(units=st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=5))
def test_any_mix_of_meters_on_one_line_reads_right_without_overlap(units: list[int]) -> None:
    """Pollers for any units (the same unit twice too: two inputs reading one meter) all get
    correct readings over one connection, and the line never carries two requests."""

    async def main() -> tuple[dict[str, list[Reading]], RtuLine]:
        async with (
            ModbusMeterServer(MAPS, values=value, framing="rtu") as server,
            RtuLine(server.port) as line,
        ):
            pollers = [
                ModbusPoller(
                    ModbusPollerConfig(
                        device=f"m{i}-u{u}",
                        target=ModbusSerialTarget(port=line.url),
                        register_map=MAPS[u],
                        unit_id=u,
                        intervals={g.name: 0.03 for g in MAPS[u].groups},
                        backoff=FAST,
                    )
                )
                for i, u in enumerate(units)
            ]
            for p in pollers:
                await p.__aenter__()
            try:
                got = await collect(pollers, 0.6)
            finally:
                for p in pollers:
                    await p.__aexit__(None, None, None)
            return got, line

    got, line = asyncio.run(main())
    assert line.connections == 1
    assert line.overlaps == 0
    assert line.bad_frames == 0
    for name, readings in got.items():
        unit = int(name.rsplit("u", 1)[1])
        assert readings, name
        for r in readings:
            check_reading(r, MAPS[unit])
