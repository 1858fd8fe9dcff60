"""Errors of the firmware bridge.

Hierarchy::

    FirmwareBridgeError             base of everything this package raises
    ├── ConfigError                 bad configuration or register map (names the key)
    ├── LinkError                   the byte link to a device
    │   ├── LinkDown                write attempted while the device is unplugged/unreachable
    │   └── LinkClosed              the link was closed by its owner
    ├── PayloadError                a frame whose CRC was fine but whose payload breaks the spec
    ├── CommandError                a command sent to a device did not succeed
    │   ├── CommandTimeout          no ack or no result within the timeout (after retries)
    │   └── CommandRejected         the device answered with a non-OK status
    └── ModbusError                 a Modbus poll failed (library errors translated here)

Errors carry their context as attributes (``key``, ``seq``, ``status``...) so a log line or a
metric label can be built without parsing the message. Decoders never raise on bad input
bytes: they count and skip (see :class:`firmware_bridge.FrameDecoder`).
"""

from __future__ import annotations

__all__ = [
    "CommandError",
    "CommandRejected",
    "CommandTimeout",
    "ConfigError",
    "FirmwareBridgeError",
    "LinkClosed",
    "LinkDown",
    "LinkError",
    "ModbusError",
    "PayloadError",
]


class FirmwareBridgeError(Exception):
    """Base of every error raised by :mod:`firmware_bridge`."""


class ConfigError(FirmwareBridgeError, ValueError):
    """A configuration value or register-map entry is invalid.

    ``key`` is the dotted path of the offending key (``serial.baudrate``,
    ``groups[1].registers[3].type``), ``source`` the file it came from when there is one.
    """

    def __init__(self, key: str, reason: str, *, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {reason}")


class LinkError(FirmwareBridgeError):
    """The byte link to a device failed or is unavailable."""

    def __init__(self, link: str, reason: str) -> None:
        self.link = link
        self.reason = reason
        super().__init__(f"link {link}: {reason}")


class LinkDown(LinkError):
    """The device is not connected right now (unplugged, pty closed); the link is retrying."""


class LinkClosed(LinkError):
    """The link was closed by its owner; it does not come back."""


class PayloadError(FirmwareBridgeError):
    """A frame passed the CRC but its payload does not follow the spec."""

    def __init__(self, msg_type: int, reason: str) -> None:
        self.msg_type = msg_type
        self.reason = reason
        super().__init__(f"message type 0x{msg_type:02x}: {reason}")


class CommandError(FirmwareBridgeError):
    """A command to a device did not succeed."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"command seq={seq}: {reason}")


class CommandTimeout(CommandError):
    """No ack (``stage="ack"``) or no result (``stage="result"``) arrived in time."""

    def __init__(self, seq: int, stage: str, timeout: float) -> None:
        self.stage = stage
        self.timeout = timeout
        super().__init__(seq, f"no {stage} within {timeout:g} s")


class CommandRejected(CommandError):
    """The device executed or refused the command and reported a non-OK status."""

    def __init__(self, seq: int, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(seq, f"device answered status={status} ({detail or 'no detail'})")


class ModbusError(FirmwareBridgeError):
    """A Modbus request failed: connection, timeout or an exception response."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"modbus device {device}: {reason}")
