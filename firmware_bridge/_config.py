"""Typed, validated configuration of links. Bad values raise ConfigError naming the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from firmware_bridge._errors import ConfigError
from foundation import Backoff
from telemetry import ID_RE, NAME_RE

__all__ = ["Backoff", "FirmwareLinkConfig", "NmeaLinkConfig", "SerialConfig"]

_PARITIES: Final = ("N", "E", "O", "M", "S")
_STOPBITS: Final = (1.0, 1.5, 2.0)
_BYTESIZES: Final = (5, 6, 7, 8)


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SerialConfig:
    """A byte link given as a pyserial URL and line settings.

    ``url`` is anything :func:`serial.serial_for_url` opens: ``/dev/ttyUSB0``, a pty path
    (``/dev/pts/5`` or a stable symlink to it), ``socket://host:port``, ``rfc2217://host:port``,
    ``loop://``. Line settings are ignored by transports that have none (sockets).
    """

    url: str
    baudrate: int = 115200
    bytesize: int = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1.0
    #: Upper bound on how long the reader thread blocks; bounds shutdown latency.
    read_timeout: float = 0.05
    #: Chunks queued between the reader thread and asyncio before bytes are dropped.
    queue_chunks: int = 1024
    backoff: Backoff = field(default_factory=Backoff)
    #: Name used in logs, task names and errors; defaults to the URL.
    name: str = ""

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("serial.url", "must not be empty")
        if self.baudrate <= 0:
            raise ConfigError("serial.baudrate", f"must be > 0, got {self.baudrate!r}")
        if self.bytesize not in _BYTESIZES:
            raise ConfigError("serial.bytesize", f"must be one of {_BYTESIZES}")
        if self.parity not in _PARITIES:
            raise ConfigError("serial.parity", f"must be one of {_PARITIES}, got {self.parity!r}")
        if float(self.stopbits) not in _STOPBITS:
            raise ConfigError("serial.stopbits", f"must be one of {_STOPBITS}")
        _positive("serial.read_timeout", self.read_timeout)
        if self.queue_chunks < 1:
            raise ConfigError("serial.queue_chunks", "must be >= 1")

    @property
    def label(self) -> str:
        return self.name or self.url


@dataclass(frozen=True, kw_only=True, slots=True)
class FirmwareLinkConfig:
    """A link to one or more devices speaking the firmware protocol (RS-485 may carry many)."""

    serial: SerialConfig
    #: Device names per device id; a device not listed is named ``fw-<id as 8 hex digits>``.
    device_names: Mapping[int, str] = field(default_factory=dict)
    #: Seconds to wait for the ACK of a command before sending it again.
    ack_timeout: float = 0.5
    #: Sends of a command before giving up (the first one included).
    command_attempts: int = 3
    #: Seconds to wait for the COMMAND_RESULT once the ACK arrived.
    result_timeout: float = 5.0
    #: Readings buffered for the consumer before the oldest are dropped (and counted).
    max_pending_readings: int = 10_000

    def __post_init__(self) -> None:
        _positive("ack_timeout", self.ack_timeout)
        _positive("result_timeout", self.result_timeout)
        if self.command_attempts < 1:
            raise ConfigError("command_attempts", "must be >= 1")
        if self.max_pending_readings < 1:
            raise ConfigError("max_pending_readings", "must be >= 1")
        for device_id, name in self.device_names.items():
            if not 0 <= device_id <= 0xFFFFFFFF:
                raise ConfigError(f"device_names[{device_id}]", "device id must fit a u32")
            if not ID_RE.fullmatch(name):
                raise ConfigError(f"device_names[{device_id}]", f"{name!r} is not a valid id")


@dataclass(frozen=True, kw_only=True, slots=True)
class NmeaLinkConfig:
    """A GPS receiver speaking NMEA 0183 on a serial link."""

    serial: SerialConfig
    #: Reading.device of the positions (the vehicle, e.g. ``bus-0417``).
    device: str
    #: Measurement of the readings; ``Vehicle`` is the vocabulary's fleet-vehicle position.
    measurement: str = "Vehicle"
    max_pending_readings: int = 10_000

    def __post_init__(self) -> None:
        if not ID_RE.fullmatch(self.device):
            raise ConfigError("device", f"{self.device!r} is not a valid device id")
        if not NAME_RE.fullmatch(self.measurement):
            raise ConfigError("measurement", f"{self.measurement!r} is not a valid name")
        if self.max_pending_readings < 1:
            raise ConfigError("max_pending_readings", "must be >= 1")
