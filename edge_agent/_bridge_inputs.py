"""Input plugins over :mod:`firmware_bridge`: firmware protocol, NMEA GPS, Modbus meters.

Each wraps one bridge link (an async context manager with ``readings()`` and ``state``);
the bridge owns reconnects with backoff, the plugin reports the link state and forwards
readings. Bridge errors are translated to :class:`edge_agent.InputError` at this boundary.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from edge_agent._config import FirmwareInputConfig, ModbusInputConfig, NmeaInputConfig
from edge_agent._errors import InputError
from edge_agent._inputs import Input, Sink
from telemetry import Reading

__all__ = ["FirmwareInput", "ModbusInput", "NmeaInput"]


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
