"""Byte-level links to sensor microcontrollers: transport, framing and protocol kept apart.

- Transport: :class:`SerialTransport` (pyserial URLs, reconnects with backoff);
- Framing (pure, no I/O): :func:`decode`, :class:`FrameDecoder`, :func:`encode_frame` for the
  project firmware frame; :func:`decode_nmea`, :class:`NmeaDecoder` for NMEA 0183;
  :func:`decode_registers` for Modbus register maps;
- Protocol: :class:`FirmwareLink` (readings + commands), :class:`NmeaLink` (GPS positions),
  :class:`ModbusPoller` (meters polled per register group; the pollers of one serial port
  share a :class:`ModbusBus`, one request on the line at a time). Each yields
  :class:`telemetry.Reading` from ``readings()``.

``docs/firmware-protocol.md`` is the normative description of the wire formats.

The Modbus classes and register maps (pymodbus, and the pydantic models of the map format:
about 9 MB resident together) load on first use only, so a gateway with firmware or NMEA
links alone never holds them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from firmware_bridge._config import Backoff, FirmwareLinkConfig, NmeaLinkConfig, SerialConfig
from firmware_bridge._counters import DROP_COUNTERS
from firmware_bridge._errors import (
    CommandError,
    CommandRejected,
    CommandTimeout,
    ConfigError,
    FirmwareBridgeError,
    LinkClosed,
    LinkDown,
    LinkError,
    ModbusError,
    PayloadError,
)
from firmware_bridge._framing import (
    DISCARD_REASONS,
    MAX_ENCODED_SIZE,
    MAX_FRAME_SIZE,
    MAX_PAYLOAD_SIZE,
    PROTOCOL_VERSION,
    Discarded,
    Frame,
    FrameDecoder,
    decode,
    encode_frame,
)
from firmware_bridge._messages import (
    Ack,
    Channel,
    Command,
    CommandCode,
    CommandResult,
    Hello,
    Identify,
    Message,
    MessageType,
    Readings,
    Reboot,
    ResultStatus,
    SetSampleInterval,
    TimeSync,
    ValueType,
    decode_message,
    encode_message,
)
from firmware_bridge._nmea import (
    NMEA_DISCARD_REASONS,
    NmeaDecoder,
    NmeaLink,
    NmeaSession,
    Sentence,
    decode_nmea,
    nmea_checksum,
)
from firmware_bridge._protocol import DeviceState, FirmwareLink, FirmwareSession
from firmware_bridge._transport import LinkState, SerialTransport

__all__ = [
    "DISCARD_REASONS",
    "DROP_COUNTERS",
    "MAX_ENCODED_SIZE",
    "MAX_FRAME_SIZE",
    "MAX_PAYLOAD_SIZE",
    "NMEA_DISCARD_REASONS",
    "PROTOCOL_VERSION",
    "Ack",
    "Backoff",
    "Channel",
    "Command",
    "CommandCode",
    "CommandError",
    "CommandRejected",
    "CommandResult",
    "CommandTimeout",
    "ConfigError",
    "DeviceState",
    "Discarded",
    "FirmwareBridgeError",
    "FirmwareLink",
    "FirmwareLinkConfig",
    "FirmwareSession",
    "Frame",
    "FrameDecoder",
    "Hello",
    "Identify",
    "LinkClosed",
    "LinkDown",
    "LinkError",
    "LinkState",
    "Message",
    "MessageType",
    "ModbusBus",
    "ModbusError",
    "ModbusPoller",
    "ModbusPollerConfig",
    "ModbusSerialTarget",
    "ModbusTcpTarget",
    "NmeaDecoder",
    "NmeaLink",
    "NmeaLinkConfig",
    "NmeaSession",
    "PayloadError",
    "Readings",
    "Reboot",
    "RegisterGroup",
    "RegisterMap",
    "RegisterSpec",
    "ResultStatus",
    "Sentence",
    "SerialConfig",
    "SerialTransport",
    "SetSampleInterval",
    "TimeSync",
    "ValueType",
    "decode",
    "decode_message",
    "decode_nmea",
    "decode_registers",
    "encode_frame",
    "encode_message",
    "encode_value",
    "load_register_map",
    "nmea_checksum",
    "parse_register_map",
    "shipped_register_maps",
]

if TYPE_CHECKING:
    from firmware_bridge._bus import ModbusBus
    from firmware_bridge._modbus import (
        ModbusPoller,
        ModbusPollerConfig,
        ModbusSerialTarget,
        ModbusTcpTarget,
    )
    from firmware_bridge._registers import (
        RegisterGroup,
        RegisterMap,
        RegisterSpec,
        decode_registers,
        encode_value,
        load_register_map,
        parse_register_map,
        shipped_register_maps,
    )

_LAZY = {
    "ModbusBus": "firmware_bridge._bus",
    "ModbusPoller": "firmware_bridge._modbus",
    "ModbusPollerConfig": "firmware_bridge._modbus",
    "ModbusSerialTarget": "firmware_bridge._modbus",
    "ModbusTcpTarget": "firmware_bridge._modbus",
    **dict.fromkeys(
        ("RegisterGroup", "RegisterMap", "RegisterSpec", "decode_registers", "encode_value",
         "load_register_map", "parse_register_map", "shipped_register_maps"),
        "firmware_bridge._registers",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'firmware_bridge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
