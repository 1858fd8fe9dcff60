"""SerialTransport over pyserial's loop:// and socket:// URLs, including reconnection."""

from __future__ import annotations

import asyncio

import pytest

from firmware_bridge import (
    Backoff,
    FirmwareLink,
    FirmwareLinkConfig,
    Hello,
    LinkClosed,
    LinkDown,
    LinkState,
    Readings,
    SerialConfig,
    SerialTransport,
    ValueType,
    encode_frame,
    encode_message,
)
from simulators.devices import DEFAULT_CHANNELS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

FAST = Backoff(initial=0.05, maximum=0.2)


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.5)
    delays = [b.delay(n) for n in range(20)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[10:]) <= 2.0
    assert len({round(d, 6) for d in delays[10:]}) > 1


def test_loop_url_round_trip_and_close() -> None:
    async def main() -> None:
        async with SerialTransport(SerialConfig(url="loop://")) as t:
            async with asyncio.timeout(2):
                await t.wait_state(LinkState.UP)
            await t.write(b"hello world")
            got = b""
            async with asyncio.timeout(2):
                while len(got) < 11:
                    got += await t.read()
            assert got == b"hello world"
        assert t.state is LinkState.CLOSED
        with pytest.raises(LinkClosed):
            await t.read()

    asyncio.run(main())


def test_write_while_device_absent_raises_link_down() -> None:
    async def main() -> None:
        config = SerialConfig(url="/nonexistent/ttyUSB9", backoff=FAST)
        async with SerialTransport(config) as t:
            async with asyncio.timeout(2):
                await t.wait_state(LinkState.RETRYING)
            with pytest.raises(LinkDown):
                await t.write(b"x")

    asyncio.run(main())


def test_firmware_link_over_socket_reconnects() -> None:
    """socket:// (a serial server such as ser2net): the server drops us, we come back."""
    hello_type, hello_payload = encode_message(
        Hello(
            firmware_version=(1, 0, 0),
            has_clock=True,
            sample_interval_ms=10,
            channels=DEFAULT_CHANNELS,
        )
    )
    hello = encode_frame(hello_type, 7, 1, hello_payload)

    def sample(i: int) -> bytes:
        msg_type, payload = encode_message(
            Readings(ts_ms=1_800_000_000_000 + i, values=((3, ValueType.F32, 20.5),))
        )
        return encode_frame(msg_type, 7, i, payload)

    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        conn = connections
        # A serial server streams what the device sends; pyserial flushes its input once
        # on open, so the first bytes of a connection may be dropped: keep streaming.
        for i in range(10):
            writer.write((hello if i % 3 == 0 else b"") + sample(conn * 100 + i))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()  # the serial server drops the connection

    async def main() -> dict[str, int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = FirmwareLinkConfig(
            serial=SerialConfig(url=f"socket://127.0.0.1:{port}", backoff=FAST)
        )
        got = []
        async with server, FirmwareLink(config) as link:
            async with asyncio.timeout(10):
                async for r in link.readings():
                    got.append(r.ts // 1_000_000 - 1_800_000_000_000)
                    if len({n // 100 for n in got}) == 2:
                        break
            # Both connections delivered, in order, without duplicates.
            assert got == sorted(set(got))
            return link.counters

    counters = asyncio.run(main())
    assert counters["link_down"] >= 1
    assert counters["link_up"] >= 2
