"""Firmware and NMEA links through real ptys, with the simulated devices on the other side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from firmware_bridge import (
    MAX_ENCODED_SIZE,
    Backoff,
    CommandRejected,
    CommandTimeout,
    FirmwareLink,
    FirmwareLinkConfig,
    LinkState,
    NmeaLink,
    NmeaLinkConfig,
    Readings,
    Reboot,
    SerialConfig,
    SetSampleInterval,
    TimeSync,
    ValueType,
    encode_frame,
    encode_message,
)
from simulators.devices import (
    FirmwareDevice,
    FirmwareDeviceConfig,
    NmeaDevice,
    PtyPort,
)
from telemetry import Reading

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

T = TypeVar("T")
FAST = Backoff(initial=0.05, maximum=0.2)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def port(tmp_path: Path) -> Iterator[PtyPort]:
    p = PtyPort(tmp_path / "ttyFW0")
    p.plug()
    yield p
    p.unplug()


def link_config(port: PtyPort, **kw: Any) -> FirmwareLinkConfig:
    return FirmwareLinkConfig(
        serial=SerialConfig(url=str(port.link_path), backoff=FAST, name="fw0"), **kw
    )


async def take(readings: AsyncIterator[Reading], n: int) -> list[Reading]:
    out: list[Reading] = []
    async with asyncio.timeout(5):
        async for r in readings:
            out.append(r)
            if len(out) >= n:
                break
    return out


def test_readings_arrive_with_device_time_and_match_the_ledger(port: PtyPort) -> None:
    device = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=20))

    async def main() -> list[Reading]:
        async with FirmwareLink(link_config(port, device_names={0x0A01: "loop-3"})) as link:
            device.start()
            got = await take(link.readings(), 30)
            assert (await link.wait_hello()).name == "loop-3"
            return got

    try:
        got = run(main())
    finally:
        device.stop()
    sent = {s.ts_ms * 1_000_000: s for s in device.sent}
    traffic = [r for r in got if r.measurement == "TrafficFlowObserved"]
    assert traffic
    for r in traffic:
        assert r.device == "loop-3"
        assert r.clock == "device"
        assert r.tags == {"lane": "1"}
        values = {ch: v for ch, _, v in sent[r.ts].values}
        assert r.fields["intensity"] == pytest.approx(values[0], rel=1e-6)
        assert r.fields["vehicleCount"] == values[2]
    assert {r.measurement for r in got} == {"TrafficFlowObserved", "AirQualityObserved"}


def test_commands_round_trip_with_acks(port: PtyPort) -> None:
    device = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=50, reboot_s=0.05))

    async def main() -> None:
        async with FirmwareLink(link_config(port, ack_timeout=0.3, command_attempts=3)) as link:
            device.start()
            await take(link.readings(), 1)
            result = await link.send_command(SetSampleInterval(interval_ms=25))
            assert result.ref_seq > 0
            assert device.sample_interval_ms == 25

            with pytest.raises(CommandRejected) as info:
                await link.send_command(SetSampleInterval(interval_ms=1))
            assert info.value.status == 2

            target_ms = 1_900_000_000_000
            await link.send_command(TimeSync(unix_ms=target_ms))
            readings = await take(link.readings(), 6)
            assert readings[-1].ts >= target_ms * 1_000_000

            # The first send is lost: the link re-sends the same seq and succeeds.
            device.mute_acks = 1
            await link.send_command(SetSampleInterval(interval_ms=30))
            seqs = [seq for seq, _ in device.commands[-2:]]
            assert seqs[0] == seqs[1]

            hellos = link.counters["hello"]
            await link.send_command(Reboot())
            async with asyncio.timeout(3):
                while link.counters["hello"] == hellos:  # noqa: ASYNC110 - polling a counter
                    await asyncio.sleep(0.02)

            device.mute_acks = 10
            with pytest.raises(CommandTimeout) as timeout_info:
                await link.send_command(SetSampleInterval(interval_ms=40))
            assert timeout_info.value.stage == "ack"
            device.mute_acks = 0

    try:
        run(main())
    finally:
        device.stop()
    assert device.counters["reboots"] == 1


def test_unplug_and_replug_resumes_without_restart(port: PtyPort) -> None:
    device = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=20))
    states: list[LinkState] = []

    async def main() -> dict[str, int]:
        async with FirmwareLink(link_config(port), on_state=states.append) as link:
            device.start()
            await take(link.readings(), 5)
            port.unplug()
            async with asyncio.timeout(3):
                await link.transport.wait_state(LinkState.RETRYING)
            await asyncio.sleep(0.3)  # several failed reopen attempts while it is gone
            port.plug()
            async with asyncio.timeout(3):
                await link.transport.wait_state(LinkState.UP)
            after = await take(link.readings(), 10)
            assert all(r.ts > time.time_ns() - 5 * 10**9 for r in after)
            return link.counters

    try:
        counters = run(main())
    finally:
        device.stop()
    assert counters["link_down"] == 1
    assert counters["link_up"] == 2
    assert counters["open_failed"] >= 1
    assert LinkState.DOWN in states
    assert states[-1] is LinkState.CLOSED


def test_noise_is_counted_and_every_good_frame_survives(port: PtyPort) -> None:
    # A device that samples once an hour: the test writes the stream itself.
    device = FirmwareDevice(port, FirmwareDeviceConfig(sample_interval_ms=3_600_000))
    base_ms = 1_800_000_000_000

    def good(i: int) -> bytes:
        msg_type, payload = encode_message(
            Readings(ts_ms=base_ms + i, values=((3, ValueType.F32, float(i)),))
        )
        return encode_frame(msg_type, 0x0A01, 100 + i, payload)

    async def main() -> tuple[list[Reading], dict[str, int]]:
        async with FirmwareLink(link_config(port)) as link:
            device.start()
            await link.wait_hello()
            noise = [
                b"\x13\x37garbage",  # junk between frames
                good(0)[:9],  # truncated frame (and no closing delimiter)
                bytes([0, 5, 1, 2, 0]),  # cobs error
                bytes([0, 3, 1, 1, 0]),  # runt
                b"\x00" + b"\x01" * (MAX_ENCODED_SIZE + 100) + b"\x00",  # oversize
            ]
            stream = b""
            for i, junk in enumerate(noise):
                g = bytearray(good(i + 1))
                stream += junk + bytes(g)
            flipped = bytearray(good(50))
            flipped[6] ^= 0x40
            stream += bytes(flipped) + good(51)
            await asyncio.to_thread(device.send_raw, stream)
            got: list[Reading] = []
            async with asyncio.timeout(5):
                async for r in link.readings():
                    if r.ts // 1_000_000 - base_ms in range(100):  # not the start-up sample
                        got.append(r)
                    if len(got) == 6:
                        break
            return got, link.counters

    try:
        got, counters = run(main())
    finally:
        device.stop()
    assert sorted(r.ts // 1_000_000 - base_ms for r in got) == [1, 2, 3, 4, 5, 51]
    assert counters["oversize"] == 1
    assert counters["runt"] == 1
    assert counters["cobs_error"] + counters["crc_error"] >= 4


def test_nmea_link_reads_a_moving_vehicle(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "ttyGPS0", baudrate=9600)
    gps = NmeaDevice(port)
    config = NmeaLinkConfig(
        serial=SerialConfig(url=str(port.link_path), baudrate=9600, backoff=FAST),
        device="bus-0417",
    )

    async def main() -> list[Reading]:
        async with NmeaLink(config) as link:
            gps.start()
            return await take(link.readings(), 8)

    try:
        got = run(main())
    finally:
        gps.stop()
        port.unplug()
    sent = {round(f.unix_s * 100): f for f in gps.sent}
    # The first fix is emitted before the session knows the receiver sends GGA.
    assert all(r.fields["satellites"] == 9 for r in got[1:])
    for r in got:
        fix = sent[r.ts // 10_000_000]
        assert r.device == "bus-0417"
        assert r.measurement == "Vehicle"
        assert r.fields["latitude"] == pytest.approx(fix.lat, abs=1e-6)
        assert r.fields["longitude"] == pytest.approx(fix.lon, abs=1e-6)
        assert r.fields["speed"] == pytest.approx(fix.speed_kmh, abs=0.01)
        assert r.fields["heading"] == pytest.approx(fix.heading)
