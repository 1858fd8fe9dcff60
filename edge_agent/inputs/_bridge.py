"""Inputs over :mod:`firmware_bridge`: firmware protocol (``firmware``), NMEA GPS (``nmea``),
Modbus meters (``modbus``).

Each wraps one bridge link (an async context manager with ``readings()`` and ``state``);
the bridge owns reconnects with backoff, the plugin reports the link state and forwards
readings. Bridge errors are translated to :class:`edge_agent.InputError` at this boundary.
``firmware_bridge`` is imported only when a config uses one of these inputs (Modbus
only with a Modbus input).
"""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import PurePosixPath
from typing import Annotated, Any, Final, Literal, Protocol, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, field_validator, model_validator

from edge_agent._errors import InputError
from edge_agent._model import FrozenModel, Id, Name
from edge_agent.inputs._base import Input, Sink
from telemetry import Reading

__all__ = [
    "FirmwareInput",
    "FirmwareInputConfig",
    "ModbusInput",
    "ModbusInputConfig",
    "ModbusTcp",
    "NmeaInput",
    "NmeaInputConfig",
    "SerialLine",
    "check_serial_url",
    "check_shared_lines",
    "is_shipped_map_name",
]


# -- configs ---------------------------------------------------------------------------------


#: pyserial URL schemes an input may use, and the query options each may carry. Refused:
#: ``spy://`` (its ``file=`` option writes, and truncates, any file the agent can write),
#: ``alt://``, ``hwgrep://``, ``cp2110://``, and ``logging=`` (it reconfigures the root logger).
SERIAL_SCHEMES: Final[dict[str, frozenset[str]]] = {
    "socket": frozenset(),
    "rfc2217": frozenset({"ign_set_control", "poll_modem", "timeout"}),
    "loop": frozenset(),
}
_SHIPPED_MAP: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_serial_url(url: str) -> None:
    """Refuse a serial URL outside the allowlist (:class:`ValueError`, the reason).

    Allowed: an absolute device path (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, a pty or
    a link to one) that, if it exists, is a character device; ``socket://host:port``;
    ``rfc2217://host:port`` (options ``ign_set_control``, ``poll_modem``, ``timeout``);
    ``loop://``.
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise ValueError("serial URL contains control characters")
    if "://" not in url:
        path = PurePosixPath(url)
        if not path.is_absolute() or "?" in url:
            raise ValueError(
                f"serial port {url!r} is not an absolute device path (or a socket://, "
                "rfc2217:// or loop:// URL)"
            )
        try:
            mode = os.stat(url).st_mode
        except OSError:
            return  # not plugged in (yet): the link retries with backoff
        if not stat.S_ISCHR(mode):
            raise ValueError(f"serial port {url!r} is not a character device (tty)")
        return
    scheme = url.split("://", 1)[0].lower()  # pyserial picks the handler case-insensitively
    allowed = SERIAL_SCHEMES.get(scheme)
    if allowed is None:
        raise ValueError(
            f"serial URL scheme {scheme + '://'!r} is not allowed "
            f"(allowed: a device path, {', '.join(s + '://' for s in SERIAL_SCHEMES)})"
        )
    options = set(parse_qs(urlsplit(url).query, keep_blank_values=True))
    if options - allowed:
        raise ValueError(
            f"serial URL option(s) {', '.join(sorted(options - allowed))} not allowed "
            f"for {scheme}://"
            + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else "")
        )


def is_shipped_map_name(ref: str) -> bool:
    """``register_map`` names a map shipped with firmware_bridge (not a file path)."""
    return _SHIPPED_MAP.fullmatch(ref) is not None and not ref.endswith((".yaml", ".yml"))


class SerialLine(FrozenModel):
    """A serial link: a tty or pty path, or a ``socket://``, ``rfc2217://`` or ``loop://``
    URL (:func:`check_serial_url`)."""

    url: Annotated[str, Field(min_length=1, max_length=512)]
    baudrate: Annotated[int, Field(gt=0, le=4_000_000)] = 115200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    @field_validator("url")
    @classmethod
    def _allowed(cls, v: str) -> str:
        check_serial_url(v)
        return v


class FirmwareInputConfig(FrozenModel):
    """Devices speaking the project firmware protocol on one serial link (firmware_bridge)."""

    type: Literal["firmware"]
    name: Id
    serial: SerialLine
    #: firmware device id -> device name (others are ``fw-<id as 8 hex digits>``)
    device_names: dict[int, Id] = {}
    max_pending_readings: Annotated[int, Field(ge=1)] = 10_000

    @model_validator(mode="after")
    def _bridge(self) -> Self:
        self.to_bridge()  # firmware_bridge.ConfigError is a ValueError: reported with the path
        return self

    def to_bridge(self) -> Any:
        from firmware_bridge import FirmwareLinkConfig

        return FirmwareLinkConfig(
            serial=_serial(self.serial, self.name),
            device_names=dict(self.device_names),
            max_pending_readings=self.max_pending_readings,
        )


class NmeaInputConfig(FrozenModel):
    """A GPS receiver (NMEA 0183) on a serial link; one ``Vehicle`` reading per fix."""

    type: Literal["nmea"]
    name: Id
    serial: SerialLine
    device: Id
    measurement: Name = "Vehicle"

    @model_validator(mode="after")
    def _bridge(self) -> Self:
        self.to_bridge()
        return self

    def to_bridge(self) -> Any:
        from firmware_bridge import NmeaLinkConfig

        return NmeaLinkConfig(
            serial=_serial(self.serial, self.name),
            device=self.device,
            measurement=self.measurement,
        )


class ModbusTcp(FrozenModel):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502


class ModbusInputConfig(FrozenModel):
    """One Modbus meter (TCP or RTU) polled per register group (firmware_bridge maps)."""

    type: Literal["modbus"]
    name: Id
    device: Id
    tcp: ModbusTcp | None = None
    rtu: SerialLine | None = None
    #: A shipped map name (``eastron-sdm630``) or a path to a map file (``.yaml``/``.yml``).
    register_map: Annotated[str, Field(min_length=1, max_length=1024)]
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0)] = 1.0
    #: Poll interval overrides per register group name, in seconds.
    intervals: dict[str, Annotated[float, Field(gt=0)]] = {}
    tags: dict[Name, str] = {}

    @field_validator("register_map")
    @classmethod
    def _map_ref(cls, v: str) -> str:
        if not is_shipped_map_name(v) and not (
            v.endswith((".yaml", ".yml")) and PurePosixPath(v).is_absolute()
        ):
            raise ValueError(
                f"register_map {v!r} is neither a shipped map name nor an absolute path to "
                "a .yaml/.yml file"
            )
        return v

    @model_validator(mode="after")
    def _bridge(self) -> Self:
        if (self.tcp is None) == (self.rtu is None):
            raise ValueError("set exactly one of tcp and rtu")
        self.to_bridge()
        return self

    def to_bridge(self) -> Any:
        from firmware_bridge import (
            ModbusPollerConfig,
            ModbusSerialTarget,
            ModbusTcpTarget,
            load_register_map,
        )

        target: Any
        if self.tcp is not None:
            target = ModbusTcpTarget(host=self.tcp.host, port=self.tcp.port)
        elif self.rtu is not None:
            target = ModbusSerialTarget(
                port=self.rtu.url,
                baudrate=self.rtu.baudrate,
                parity=self.rtu.parity,
                stopbits=self.rtu.stopbits,
            )
        else:
            raise ValueError("set exactly one of tcp and rtu")
        return ModbusPollerConfig(
            device=self.device,
            target=target,
            register_map=load_register_map(self.register_map),
            unit_id=self.unit_id,
            timeout=self.timeout_s,
            intervals=dict(self.intervals),
            tags=dict(self.tags),
        )


def _serial(line: SerialLine, name: str) -> Any:
    from firmware_bridge import SerialConfig

    return SerialConfig(
        url=line.url,
        baudrate=line.baudrate,
        parity=line.parity,
        stopbits=float(line.stopbits),
        name=name,
    )


def check_shared_lines(specs: Iterable[object]) -> None:
    """Several Modbus meters may share an RS-485 port (one bus); nothing else may.

    Raises :class:`ValueError` naming both inputs (reported as a config issue).
    """
    owners: dict[str, tuple[str, str, SerialLine]] = {}  # url -> (kind, input, line)
    for spec in specs:
        if isinstance(spec, ModbusInputConfig) and spec.rtu is not None:
            kind, name, line = "modbus", spec.name, spec.rtu
        elif isinstance(spec, FirmwareInputConfig | NmeaInputConfig):
            kind, name, line = spec.type, spec.name, spec.serial
        else:
            continue
        first = owners.setdefault(line.url, (kind, name, line))
        if first[1] == name:
            continue
        if kind != "modbus" or first[0] != "modbus":
            raise ValueError(
                f"inputs {first[1]!r} and {name!r} both use serial port {line.url!r}: "
                "only Modbus meters can share a port (one RS-485 bus)"
            )
        theirs = first[2]
        if (line.baudrate, line.parity, line.stopbits) != (
            theirs.baudrate, theirs.parity, theirs.stopbits
        ):
            raise ValueError(
                f"inputs {first[1]!r} and {name!r} share RS-485 port {line.url!r} "
                f"with different settings ({theirs.baudrate} {theirs.parity} "
                f"{theirs.stopbits} vs {line.baudrate} {line.parity} {line.stopbits})"
            )


# -- inputs ----------------------------------------------------------------------------------


class _Link(Protocol):
    @property
    def state(self) -> Any: ...

    @property
    def counters(self) -> Any: ...

    def readings(self) -> Any: ...


class _BridgeInput(Input):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._link: _Link | None = None
        #: Counters of the links of earlier runs (a restart opens a new link).
        self._past: dict[str, int] = {}

    def _open(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def _on_state(self, state: object) -> None:
        self.state = str(state)

    def counters(self) -> dict[str, int]:
        out = dict(self._past)
        link = self._link
        if link is not None:
            for k, v in dict(link.counters).items():
                out[k] = out.get(k, 0) + v
        return out

    def drop_counters(self) -> dict[str, int]:
        from firmware_bridge import DROP_COUNTERS

        return {k: v for k, v in self.counters().items() if k in DROP_COUNTERS}

    def error(self) -> str | None:
        return self._link_error() or self.last_error

    def _link_error(self) -> str | None:
        link = self._link
        err = getattr(link, "last_error", None)  # ModbusPoller
        if err is None:
            err = getattr(getattr(link, "transport", None), "last_error", None)
        return err if isinstance(err, str) else None

    async def run(self, sink: Sink) -> None:
        from firmware_bridge import FirmwareBridgeError

        try:
            async with self._open() as link:
                self._link = link
                self.state = str(link.state)
                reading: Reading
                async for reading in link.readings():
                    if reading.clock == "device":
                        self.clock_offset_s = round((reading.ts - time.time_ns()) / 1e9, 3)
                    sink.submit([reading], None)
        except FirmwareBridgeError as exc:
            self.state = "down"
            raise InputError(f"input {self.name}: {exc}") from exc
        finally:
            link_ = self._link
            if link_ is not None:
                self.last_error = self._link_error() or self.last_error
                for k, v in dict(link_.counters).items():
                    self._past[k] = self._past.get(k, 0) + v
            self._link = None


class FirmwareInput(_BridgeInput):
    """Devices on the project firmware protocol (``type: firmware``)."""

    def __init__(self, cfg: FirmwareInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    @property
    def firmware_link(self) -> Any:
        """The open :class:`firmware_bridge.FirmwareLink` (None while closed): the
        ``time-sync`` command sends TIME_SYNC through it."""
        return self._link

    def _open(self) -> AbstractAsyncContextManager[Any]:
        from firmware_bridge import FirmwareLink

        return FirmwareLink(self.cfg.to_bridge(), on_state=self._on_state)


class NmeaInput(_BridgeInput):
    """A GPS receiver on NMEA 0183 (``type: nmea``)."""

    def __init__(self, cfg: NmeaInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    def _open(self) -> AbstractAsyncContextManager[Any]:
        from firmware_bridge import NmeaLink

        return NmeaLink(self.cfg.to_bridge(), on_state=self._on_state)


class ModbusInput(_BridgeInput):
    """A Modbus TCP/RTU meter polled per register group (``type: modbus``)."""

    def __init__(self, cfg: ModbusInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

    def _open(self) -> AbstractAsyncContextManager[Any]:
        from firmware_bridge import ModbusPoller

        return ModbusPoller(self.cfg.to_bridge(), on_state=self._on_state)
