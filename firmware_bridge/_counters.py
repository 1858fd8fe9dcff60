"""Which link counters count discarded input (for health ``dropped`` and alerts).

Every link has ``counters`` (``FirmwareLink.counters``, ``NmeaLink.counters``,
``ModbusPoller.counters``): traffic (``rx_bytes``, ``frames``, ``readings``, ``polls``...),
link events (``link_up``, ``open_failed``...) and discards. :data:`DROP_COUNTERS` names the
discards: bytes, frames, sentences or values that arrived and did not become a reading.
"""

from __future__ import annotations

from typing import Final

from firmware_bridge._framing import DISCARD_REASONS

__all__ = ["DROP_COUNTERS"]

DROP_COUNTERS: Final = frozenset(
    {
        # framing (project firmware frame): cobs_error, runt, crc_error, oversize, bad_version
        *DISCARD_REASONS,
        # NMEA sentence framing
        "garbage",
        "truncated",
        "checksum_error",
        "missing_checksum",
        # firmware protocol
        "bad_payload",
        "unknown_type",
        "unknown_channel",
        "bad_channel",
        "readings_before_hello",
        "unexpected_ack",
        # NMEA fixes
        "bad_field",
        # Modbus
        "invalid_values",
        "bad_responses",
        # the link: bytes the reader thread could not hand over, readings the consumer lagged
        "rx_dropped_bytes",
        "readings_dropped",
    }
)
