"""Modbus meters serving the firmware bridge's shipped register maps (pymodbus server).

Modbus TCP by default; ``framing="rtu"`` serves RTU frames (with their CRC) over the TCP
socket instead, as an RS-485-to-Ethernet converter in transparent mode does, so that a
poller's serial (RTU) client is exercised through a ``socket://`` serial URL.

Values come from a callable (field name, time) -> value; the registers of a map are
rewritten from it on every read request, encoded exactly as the map says (type, scale,
word order), so the poller's decoding is checked against an independent writer path.
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Mapping
from functools import partial
from typing import Literal, Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_bridge import RegisterMap, encode_value

__all__ = ["ModbusMeterServer", "meter_values"]

MeterValues = Callable[[str, float], float]

_BASE: Mapping[str, float] = {
    "voltage": 230.0,
    "current": 12.0,
    "activePower": 2700.0,
    "reactivePower": 310.0,
    "powerFactor": 0.97,
    "frequency": 50.0,
    "totalActiveEnergyImport": 123456.7,
    "totalActiveEnergyExport": 12.5,
    "flow": 42.0,
    "velocity": 1.4,
    "pressure": 4.2,
    "temperature": 11.5,
    "alarmFlags": 0,
    "consumption": 98765.432,
    "reverseConsumption": -1.25,
}


def meter_values(field: str, t: float) -> float:
    """Plausible, slowly varying values keyed by field name (per-phase fields share a base)."""
    key = field.rstrip("123").removesuffix("L") if field[-1:] in "123" else field
    base = _BASE.get(key, 1.0)
    if key in ("alarmFlags", "totalActiveEnergyExport", "reverseConsumption"):
        return base
    if key in ("totalActiveEnergyImport", "consumption"):
        return base + t / 3600.0
    return base * (1.0 + 0.02 * math.sin(t / 5.0 + len(field)))


class ModbusMeterServer:
    """A Modbus TCP server with one meter per unit id, each described by a register map.

    ``async with ModbusMeterServer({1: load_register_map("eastron-sdm630")}) as server:``
    then connect to ``server.port`` on 127.0.0.1 (an ephemeral port unless given).
    """

    def __init__(
        self,
        meters: Mapping[int, RegisterMap],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        values: MeterValues = meter_values,
        framing: Literal["tcp", "rtu"] = "tcp",
    ) -> None:
        self.meters = dict(meters)
        self.framing = framing
        self.host = host
        self.values = values
        self.requests = 0
        self._requested_port = port
        self._server: ModbusTcpServer | None = None
        self.port = port

    def _device(self, unit_id: int, register_map: RegisterMap) -> SimDevice:
        top = max(g.start + g.count for g in register_map.groups)
        blank = [SimData(address=0, count=top, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        holding = [SimData(address=0, count=top, values=0, datatype=DataType.REGISTERS)]
        action = partial(self._refresh, register_map)
        return SimDevice(id=unit_id, simdata=(bits, list(bits), holding, blank), action=action)

    async def _refresh(
        self,
        register_map: RegisterMap,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = {3: "holding", 4: "input"}.get(function_code)
        if table is None:
            return None
        self.requests += 1
        t = time.time()
        for group in register_map.groups:
            if group.table != table:
                continue
            for reg in group.registers:
                words = encode_value(register_map, reg, self.values(reg.field, t))
                offset = reg.address - start_address
                registers[offset : offset + len(words)] = words
        return None

    async def __aenter__(self) -> Self:
        devices = [self._device(uid, m) for uid, m in self.meters.items()]
        framer = FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET
        self._server = ModbusTcpServer(
            devices, framer=framer, address=(self.host, self._requested_port)
        )
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        sockets = getattr(transport, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
