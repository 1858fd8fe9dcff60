"""Message payloads of the firmware protocol. Pure functions, no I/O.

Every multi-byte integer is big-endian; ``str8`` is a u8 length followed by UTF-8 bytes.
Layouts (``docs/firmware-protocol.md`` draws them with examples)::

    HELLO (0x01)          device -> gateway, at start-up and on IDENTIFY
      fw_major u8 | fw_minor u8 | fw_patch u8 | flags u8 (bit0: has_clock)
      | sample_interval_ms u32 | n_channels u8
      | n_channels x ( channel u8 | value_type u8 | measurement str8 | field str8
                       | unit str8 | tags str8 ("k=v;k=v" or empty) )

    READINGS (0x02)       device -> gateway
      ts_ms u64 (Unix ms, 0 = device has no valid clock) | n u8
      | n x ( channel u8 | value_type u8 | value (4 or 8 or 1 bytes, by value_type) )

    ACK (0x03)            receiver of a COMMAND -> sender, as soon as it is parsed
      ref_seq u16

    COMMAND (0x04)        gateway -> device
      code u8 | argument (by code: SET_SAMPLE_INTERVAL u32 ms, TIME_SYNC u64 Unix ms,
                                   REBOOT none, IDENTIFY none)

    COMMAND_RESULT (0x05) device -> gateway, after executing (or refusing) the command
      ref_seq u16 | status u8 | detail str8

    value_type: 1 f32, 2 f64, 3 i32, 4 u32, 5 bool (u8 0/1)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import IntEnum
from typing import Final, TypeAlias

from firmware_bridge._errors import PayloadError

__all__ = [
    "Ack",
    "Channel",
    "Command",
    "CommandCode",
    "CommandResult",
    "Hello",
    "Identify",
    "Message",
    "MessageType",
    "Readings",
    "Reboot",
    "ResultStatus",
    "SetSampleInterval",
    "TimeSync",
    "ValueType",
    "decode_message",
    "encode_message",
]


class MessageType(IntEnum):
    HELLO = 0x01
    READINGS = 0x02
    ACK = 0x03
    COMMAND = 0x04
    COMMAND_RESULT = 0x05


class ValueType(IntEnum):
    F32 = 1
    F64 = 2
    I32 = 3
    U32 = 4
    BOOL = 5


class CommandCode(IntEnum):
    SET_SAMPLE_INTERVAL = 1
    TIME_SYNC = 2
    REBOOT = 3
    IDENTIFY = 4


class ResultStatus(IntEnum):
    OK = 0
    UNSUPPORTED = 1
    INVALID_ARGUMENT = 2
    FAILED = 3


_VALUE_STRUCTS: Final[dict[int, struct.Struct]] = {
    ValueType.F32: struct.Struct(">f"),
    ValueType.F64: struct.Struct(">d"),
    ValueType.I32: struct.Struct(">i"),
    ValueType.U32: struct.Struct(">I"),
    ValueType.BOOL: struct.Struct(">B"),
}
_HELLO_HEAD: Final = struct.Struct(">BBBBIB")
_READINGS_HEAD: Final = struct.Struct(">QB")
_ENTRY_HEAD: Final = struct.Struct(">BB")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_RESULT_HEAD: Final = struct.Struct(">HB")

Value: TypeAlias = float | int | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Channel:
    """One channel a device announces: where its values go and in which unit."""

    index: int
    value_type: ValueType
    measurement: str
    field: str
    unit: str = ""
    tags: Mapping[str, str] = dc_field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    firmware_version: tuple[int, int, int]
    has_clock: bool
    sample_interval_ms: int
    channels: tuple[Channel, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Readings:
    """Values sampled at one instant: ``(channel, value_type, value)`` triples."""

    ts_ms: int
    values: tuple[tuple[int, ValueType, Value], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    ref_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSampleInterval:
    interval_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeSync:
    unix_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reboot:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Identify:
    """Ask the device to send its HELLO again."""


Command: TypeAlias = SetSampleInterval | TimeSync | Reboot | Identify


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    ref_seq: int
    status: ResultStatus
    detail: str = ""


Message: TypeAlias = Hello | Readings | Ack | Command | CommandResult


def _str8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"string of {len(raw)} bytes does not fit a str8")
    return bytes((len(raw),)) + raw


def _tags_text(tags: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in tags.items())


def _encode_value(value_type: ValueType, value: Value) -> bytes:
    if value_type is ValueType.BOOL:
        return b"\x01" if value else b"\x00"
    return _VALUE_STRUCTS[value_type].pack(value)


def encode_message(message: Message) -> tuple[MessageType, bytes]:
    """The message type and payload bytes of ``message``."""
    match message:
        case Hello():
            major, minor, patch = message.firmware_version
            out = bytearray(
                _HELLO_HEAD.pack(
                    major,
                    minor,
                    patch,
                    1 if message.has_clock else 0,
                    message.sample_interval_ms,
                    len(message.channels),
                )
            )
            for ch in message.channels:
                out += _ENTRY_HEAD.pack(ch.index, ch.value_type)
                out += _str8(ch.measurement) + _str8(ch.field) + _str8(ch.unit)
                out += _str8(_tags_text(ch.tags))
            return MessageType.HELLO, bytes(out)
        case Readings():
            out = bytearray(_READINGS_HEAD.pack(message.ts_ms, len(message.values)))
            for channel, value_type, value in message.values:
                out += _ENTRY_HEAD.pack(channel, value_type)
                out += _encode_value(value_type, value)
            return MessageType.READINGS, bytes(out)
        case Ack():
            return MessageType.ACK, _U16.pack(message.ref_seq)
        case SetSampleInterval():
            payload = bytes((CommandCode.SET_SAMPLE_INTERVAL,)) + _U32.pack(message.interval_ms)
            return MessageType.COMMAND, payload
        case TimeSync():
            return MessageType.COMMAND, bytes((CommandCode.TIME_SYNC,)) + _U64.pack(message.unix_ms)
        case Reboot():
            return MessageType.COMMAND, bytes((CommandCode.REBOOT,))
        case Identify():
            return MessageType.COMMAND, bytes((CommandCode.IDENTIFY,))
        case CommandResult():
            payload = _RESULT_HEAD.pack(message.ref_seq, message.status) + _str8(message.detail)
            return MessageType.COMMAND_RESULT, payload
    raise TypeError(f"not a firmware message: {message!r}")  # pragma: no cover


class _Reader:
    """Cursor over a payload; every read checks bounds and raises PayloadError."""

    __slots__ = ("buf", "msg_type", "pos")

    def __init__(self, msg_type: int, buf: bytes) -> None:
        self.msg_type = msg_type
        self.buf = buf
        self.pos = 0

    def fail(self, reason: str) -> PayloadError:
        return PayloadError(self.msg_type, f"{reason} at byte {self.pos}")

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.buf):
            raise self.fail(f"truncated: need {size} more bytes")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, st: struct.Struct) -> tuple[int | float, ...]:
        if self.pos + st.size > len(self.buf):
            raise self.fail(f"truncated: need {st.size} more bytes")
        values: tuple[int | float, ...] = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return values

    def u8(self) -> int:
        return self.take(1)[0]

    def str8(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise self.fail("string is not UTF-8") from exc

    def value_type(self) -> ValueType:
        code = self.u8()
        try:
            return ValueType(code)
        except ValueError as exc:
            raise self.fail(f"unknown value type {code}") from exc

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} trailing bytes")


def _parse_tags(reader: _Reader, text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    if not text:
        return tags
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise reader.fail(f"bad tag {item!r}")
        tags[key] = value
    return tags


def _int(value: int | float) -> int:
    return int(value)


def decode_message(msg_type: int, payload: bytes) -> Message:
    """Decode the payload of a frame of type ``msg_type``; raises :class:`PayloadError`."""
    r = _Reader(msg_type, payload)
    message: Message
    if msg_type == MessageType.READINGS:
        ts_ms, count = (_int(v) for v in r.unpack(_READINGS_HEAD))
        values: list[tuple[int, ValueType, Value]] = []
        for _ in range(count):
            channel = r.u8()
            value_type = r.value_type()
            (raw,) = r.unpack(_VALUE_STRUCTS[value_type])
            value: Value = bool(raw) if value_type is ValueType.BOOL else raw
            if isinstance(value, float) and not math.isfinite(value):
                raise r.fail(f"channel {channel} value is not finite")
            values.append((channel, value_type, value))
        message = Readings(ts_ms=ts_ms, values=tuple(values))
    elif msg_type == MessageType.HELLO:
        major, minor, patch, flags, interval, count = (_int(v) for v in r.unpack(_HELLO_HEAD))
        channels = []
        for _ in range(count):
            index = r.u8()
            value_type = r.value_type()
            measurement, field_name, unit = r.str8(), r.str8(), r.str8()
            tags = _parse_tags(r, r.str8())
            channels.append(
                Channel(
                    index=index,
                    value_type=value_type,
                    measurement=measurement,
                    field=field_name,
                    unit=unit,
                    tags=tags,
                )
            )
        message = Hello(
            firmware_version=(major, minor, patch),
            has_clock=bool(flags & 1),
            sample_interval_ms=interval,
            channels=tuple(channels),
        )
    elif msg_type == MessageType.ACK:
        message = Ack(ref_seq=_int(r.unpack(_U16)[0]))
    elif msg_type == MessageType.COMMAND:
        code = r.u8()
        if code == CommandCode.SET_SAMPLE_INTERVAL:
            message = SetSampleInterval(interval_ms=_int(r.unpack(_U32)[0]))
        elif code == CommandCode.TIME_SYNC:
            message = TimeSync(unix_ms=_int(r.unpack(_U64)[0]))
        elif code == CommandCode.REBOOT:
            message = Reboot()
        elif code == CommandCode.IDENTIFY:
            message = Identify()
        else:
            raise r.fail(f"unknown command code {code}")
    elif msg_type == MessageType.COMMAND_RESULT:
        ref_seq, status = (_int(v) for v in r.unpack(_RESULT_HEAD))
        try:
            result_status = ResultStatus(status)
        except ValueError as exc:
            raise r.fail(f"unknown result status {status}") from exc
        message = CommandResult(ref_seq=ref_seq, status=result_status, detail=r.str8())
    else:
        raise PayloadError(msg_type, "unknown message type")
    r.end()
    return message
