"""Serial ports served over the network with RFC 2217 (a terminal server), for real.

``Rfc2217Server`` runs pyserial's own RFC 2217 server (``serial.rfc2217.PortManager``) in
threads on a loopback port, in front of a pty with a simulated firmware device on the other
side; the link opens ``rfc2217://127.0.0.1:PORT`` like any other pyserial URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fw_helpers import Rfc2217Server

from firmware_bridge import (
    Backoff,
    ConfigError,
    FirmwareLink,
    FirmwareLinkConfig,
    LinkState,
    ModbusSerialTarget,
    SerialConfig,
    SetSampleInterval,
)
from simulators.devices import FirmwareDevice, FirmwareDeviceConfig, PtyPort
from telemetry import Reading

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    # pyserial 3.5's RFC 2217 client calls Thread.setDaemon()/setName() on open, deprecated
    # since Python 3.10: a warning (ignored by default outside tests), harmless.
    pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning"),
]

FAST = Backoff(initial=0.05, maximum=0.3)


@pytest.fixture
def port(tmp_path: Path) -> Iterator[PtyPort]:
    p = PtyPort(tmp_path / "ttyNET0")
    p.plug()
    yield p
    p.unplug()


async def take(readings: AsyncIterator[Reading], n: int) -> list[Reading]:
    out: list[Reading] = []
    async with asyncio.timeout(10):
        async for r in readings:
            out.append(r)
            if len(out) >= n:
                break
    return out


def test_firmware_link_through_rfc2217_survives_a_terminal_server_restart(
    port: PtyPort,
) -> None:
    device = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=20))
    server = Rfc2217Server(str(port.link_path)).start()
    states: list[LinkState] = []
    config = FirmwareLinkConfig(
        serial=SerialConfig(url=f"rfc2217://127.0.0.1:{server.port}", backoff=FAST, name="net0"),
        device_names={0x0A01: "loop-9"},
    )

    async def main() -> dict[str, int]:
        async with FirmwareLink(config, on_state=states.append) as link:
            device.start()
            first = await take(link.readings(), 10)
            assert {r.device for r in first} == {"loop-9"}
            # Commands travel the other way through the same terminal server.
            await link.send_command(SetSampleInterval(interval_ms=25))
            assert device.sample_interval_ms == 25

            await asyncio.to_thread(server.stop)  # the terminal server restarts
            async with asyncio.timeout(10):
                await link.transport.wait_state(LinkState.RETRYING)
            await asyncio.sleep(0.3)  # reconnects are refused meanwhile
            await asyncio.to_thread(server.start)
            async with asyncio.timeout(15):
                await link.transport.wait_state(LinkState.UP)
            before = device.sent[-1].ts_ms if device.sent else 0
            after = await take(link.readings(), 10)
            assert any(r.ts // 1_000_000 > before for r in after)
            return link.counters

    try:
        counters = asyncio.run(main())
    finally:
        device.stop()
        server.stop()
    assert server.clients == 2
    assert counters["link_down"] == 1
    assert counters["link_up"] == 2
    assert counters["open_failed"] >= 1
    assert LinkState.DOWN in states


def test_modbus_rtu_over_rfc2217_is_refused_with_the_alternative() -> None:
    """pymodbus 3.16's serial transport cannot drive pyserial's RFC 2217 client (see
    docs/firmware-protocol.md §3.2): refused when the target is built, naming socket://."""
    with pytest.raises(ConfigError, match=r"rfc2217:// is not supported .* socket://host:port"):
        ModbusSerialTarget(port="rfc2217://10.0.0.5:4001")
    with pytest.raises(ConfigError, match=r"target\.port"):
        ModbusSerialTarget(port="RFC2217://10.0.0.5:4001")
