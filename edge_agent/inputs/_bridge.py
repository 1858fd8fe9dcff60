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

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Literal, Protocol, Self

from pydantic import Field, model_validator

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
    "check_shared_lines",
]


# -- configs ---------------------------------------------------------------------------------


class SerialLine(FrozenModel):
    """A serial link: a tty, a pty, or any pyserial URL (``socket://``, ``rfc2217://``)."""

    url: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(gt=0)] = 115200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


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
    #: A shipped map name (``eastron-sdm630``) or a path to a map file.
    register_map: Annotated[str, Field(min_length=1)]
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0)] = 1.0
    #: Poll interval overrides per register group name, in seconds.
    intervals: dict[str, Annotated[float, Field(gt=0)]] = {}
    tags: dict[Name, str] = {}

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

    def readings(self) -> Any: ...


class _BridgeInput(Input):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._link: _Link | None = None

    def _open(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def _on_state(self, state: object) -> None:
        self.state = str(state)

    async def run(self, sink: Sink) -> None:
        from firmware_bridge import FirmwareBridgeError

        try:
            async with self._open() as link:
                self._link = link
                self.state = str(link.state)
                reading: Reading
                async for reading in link.readings():
                    sink.submit([reading], None)
        except FirmwareBridgeError as exc:
            self.state = "down"
            raise InputError(f"input {self.name}: {exc}") from exc
        finally:
            self._link = None


class FirmwareInput(_BridgeInput):
    """Devices on the project firmware protocol (``type: firmware``)."""

    def __init__(self, cfg: FirmwareInputConfig, *, gateway: str) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg

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
