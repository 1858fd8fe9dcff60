"""What links report for health and metrics: the latest link error (with its errno) and
which counters count discarded input."""

from __future__ import annotations

import asyncio

from firmware_bridge import (
    DISCARD_REASONS,
    DROP_COUNTERS,
    NMEA_DISCARD_REASONS,
    Backoff,
    FirmwareLink,
    FirmwareLinkConfig,
    NmeaLink,
    NmeaLinkConfig,
    SerialConfig,
    SerialTransport,
)

FAST = Backoff(initial=0.05, maximum=0.2)


def test_an_absent_device_leaves_its_errno_in_last_error() -> None:
    async def main() -> None:
        config = SerialConfig(url="/nonexistent/ttyUSB9", backoff=FAST)
        async with SerialTransport(config) as t:
            assert t.last_error is None or t.last_error.startswith("ENOENT")
            for _ in range(100):  # the reader thread retries every 0.05-0.2 s
                if t.counters["open_failed"] >= 2:
                    break
                await asyncio.sleep(0.05)
            assert t.counters["open_failed"] >= 2
            assert t.last_error is not None
            assert t.last_error.startswith("ENOENT: "), t.last_error
            assert "/nonexistent/ttyUSB9" in t.last_error

    asyncio.run(main())


def test_every_discard_reason_of_every_link_is_a_drop_counter() -> None:
    assert set(DISCARD_REASONS) <= DROP_COUNTERS
    assert set(NMEA_DISCARD_REASONS) <= DROP_COUNTERS
    fw = FirmwareLink(FirmwareLinkConfig(serial=SerialConfig(url="loop://")))
    nmea = NmeaLink(NmeaLinkConfig(serial=SerialConfig(url="loop://"), device="bus-1"))
    for counters in (fw.counters, nmea.counters):
        # every name is a known counter: traffic and events are not drops, discards are
        assert {"readings_dropped", "rx_dropped_bytes"} <= set(counters) & DROP_COUNTERS
        assert not {"rx_bytes", "link_up", "readings", "open_failed"} & DROP_COUNTERS
    assert "readings_before_hello" in set(fw.counters) & DROP_COUNTERS
    assert "bad_field" in set(nmea.counters) & DROP_COUNTERS
