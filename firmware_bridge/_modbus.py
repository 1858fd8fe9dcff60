"""Modbus RTU/TCP meters polled per register group through pymodbus.

Each group of the register map is one request, scheduled on its own interval; a poll
yields one :class:`telemetry.Reading` with the group's fields, stamped with gateway time
(meters have no clock: ``clock="gateway"``). A failed poll is counted and the connection
is re-established with capped, jittered backoff; the schedule carries on afterwards::

    connect ─▶ [ wait for the next due group ─▶ read ─▶ decode ─▶ Reading ] ─┐
       ▲                                   │ error                           │
       └────────── backoff ◀──── close ◀───┘◀────────────────────────────────┘
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Self

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from firmware_bridge._buffer import ReadingBuffer
from firmware_bridge._config import Backoff
from firmware_bridge._errors import ConfigError, ModbusError
from firmware_bridge._registers import RegisterGroup, RegisterMap, decode_registers
from firmware_bridge._transport import LinkState
from telemetry import ID_RE, MAX_TAGS, NAME_RE, Reading

__all__ = ["ModbusPoller", "ModbusPollerConfig", "ModbusSerialTarget", "ModbusTcpTarget"]

log = logging.getLogger("firmware_bridge.modbus")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModbusTcpTarget:
    host: str
    port: int = 502

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("target.host", "must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError("target.port", f"must be 1..65535, got {self.port!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModbusSerialTarget:
    """Modbus RTU on a serial line; ``port`` is a device path or pyserial URL."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    def __post_init__(self) -> None:
        if not self.port:
            raise ConfigError("target.port", "must not be empty")
        if self.baudrate <= 0:
            raise ConfigError("target.baudrate", f"must be > 0, got {self.baudrate!r}")
        if self.parity not in ("N", "E", "O"):
            raise ConfigError("target.parity", "must be N, E or O")
        if self.stopbits not in (1, 2):
            raise ConfigError("target.stopbits", "must be 1 or 2")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModbusPollerConfig:
    """One meter: where it is, which map describes it, what its readings are called."""

    device: str
    target: ModbusTcpTarget | ModbusSerialTarget
    register_map: RegisterMap
    unit_id: int = 1
    #: Per-request timeout in seconds (pymodbus retries are off: the poller decides).
    timeout: float = 1.0
    #: Group interval overrides, by group name.
    intervals: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)
    max_pending_readings: int = 10_000

    def __post_init__(self) -> None:
        if not ID_RE.fullmatch(self.device):
            raise ConfigError("device", f"{self.device!r} is not a valid device id")
        if not 0 <= self.unit_id <= 247:
            raise ConfigError("unit_id", f"must be 0..247, got {self.unit_id!r}")
        if not self.timeout > 0:
            raise ConfigError("timeout", "must be > 0")
        names = {g.name for g in self.register_map.groups}
        for name, interval in self.intervals.items():
            if name not in names:
                raise ConfigError(f"intervals.{name}", f"no such group; groups: {sorted(names)}")
            if not interval > 0:
                raise ConfigError(f"intervals.{name}", "must be > 0")
        if len(self.tags) > MAX_TAGS or not all(NAME_RE.fullmatch(k) for k in self.tags):
            raise ConfigError("tags", f"at most {MAX_TAGS} tags with valid names")


class ModbusPoller:
    """Polls one meter per register group and yields readings.

    ::

        config = ModbusPollerConfig(
            device="substation-4-main",
            target=ModbusTcpTarget(host="10.0.0.7"),
            register_map=load_register_map("eastron-sdm630"),
        )
        async with ModbusPoller(config) as poller:
            async for reading in poller.readings():
                ...
    """

    def __init__(
        self,
        config: ModbusPollerConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        on_state: Callable[[LinkState], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.device
        self._clock_ns = clock_ns
        self._on_state = on_state
        self._state = LinkState.CONNECTING
        self._buffer = ReadingBuffer(self.name, config.max_pending_readings)
        self._task: asyncio.Task[None] | None = None
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "polls",
                "poll_errors",
                "exception_responses",
                "timeouts",
                "connects",
                "connect_failed",
                "invalid_values",
            ),
            0,
        )

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"firmware_bridge[{self.name}].poll")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_client()
        self._set_state(LinkState.CLOSED)
        self._buffer.close()

    @property
    def state(self) -> LinkState:
        return self._state

    def readings(self) -> AsyncIterator[Reading]:
        """One reading per successful group poll, until the poller is closed."""
        return aiter(self._buffer)

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state and self._state is not LinkState.CLOSED:
            log.info("modbus state %s -> %s", self._state, state, extra={"device": self.name})
            self._state = state
            if self._on_state is not None:
                self._on_state(state)

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        target = self.config.target
        timeout = self.config.timeout
        if isinstance(target, ModbusTcpTarget):
            return AsyncModbusTcpClient(
                target.host, port=target.port, timeout=timeout, retries=0, reconnect_delay=0
            )
        return AsyncModbusSerialClient(
            target.port,
            framer=FramerType.RTU,
            baudrate=target.baudrate,
            bytesize=target.bytesize,
            parity=target.parity,
            stopbits=target.stopbits,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
        )

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _connect(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        attempt = 0
        while True:
            self._set_state(LinkState.CONNECTING)
            client = self._make_client()
            if await client.connect():
                self.counters["connects"] += 1
                self._set_state(LinkState.UP)
                self._client = client
                return client
            client.close()
            self.counters["connect_failed"] += 1
            self._set_state(LinkState.RETRYING)
            await asyncio.sleep(self.config.backoff.delay(attempt))
            attempt += 1

    async def poll_group(self, group: RegisterGroup) -> Reading | None:
        """Read and decode one group now; raises :class:`ModbusError` on failure."""
        client = self._client
        if client is None:
            raise ModbusError(self.name, "not connected")
        cfg = self.config
        read = (
            client.read_input_registers if group.table == "input" else client.read_holding_registers
        )
        try:
            async with asyncio.timeout(cfg.timeout * 2):
                response = await read(group.start, count=group.count, device_id=cfg.unit_id)
        except TimeoutError as exc:
            self.counters["timeouts"] += 1
            raise ModbusError(self.name, f"group {group.name}: timeout") from exc
        except ModbusException as exc:
            raise ModbusError(self.name, f"group {group.name}: {exc}") from exc
        if response.isError():
            self.counters["exception_responses"] += 1
            raise ModbusError(self.name, f"group {group.name}: exception response {response}")
        fields, invalid = decode_registers(cfg.register_map, group, response.registers)
        self.counters["polls"] += 1
        self.counters["invalid_values"] += len(invalid)
        if not fields:
            return None
        return Reading(
            device=self.name,
            measurement=cfg.register_map.measurement,
            ts=self._clock_ns(),
            fields=fields,
            tags=dict(cfg.tags),
            clock="gateway",
        )

    async def _run(self) -> None:
        try:
            await self._schedule()
        except Exception as exc:
            # Not "log and continue": the failure is re-raised to readings() consumers.
            self._buffer.fail(exc)
            raise

    async def _schedule(self) -> None:
        cfg = self.config
        groups = cfg.register_map.groups
        intervals = [cfg.intervals.get(g.name, g.interval_s) for g in groups]
        loop = asyncio.get_running_loop()
        due = [loop.time()] * len(groups)
        failures = 0
        while True:
            if self._client is None or not self._client.connected:
                self._close_client()
                await self._connect()
            i = min(range(len(groups)), key=due.__getitem__)
            delay = due[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # Fixed-rate schedule; after a stall skip missed slots instead of bursting.
            due[i] = max(due[i] + intervals[i], loop.time())
            try:
                reading = await self.poll_group(groups[i])
            except ModbusError as exc:
                self.counters["poll_errors"] += 1
                log.warning("poll failed: %s", exc.reason, extra={"device": self.name})
                self._close_client()
                self._set_state(LinkState.DOWN)
                await asyncio.sleep(cfg.backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            if reading is not None:
                self._buffer.push([reading])
