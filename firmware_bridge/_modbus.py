"""Modbus RTU/TCP meters polled per register group through pymodbus.

Each group of the register map is one request, scheduled on its own interval; a poll
yields one :class:`telemetry.Reading` with the group's fields, stamped with gateway time
(meters have no clock: ``clock="gateway"``). Requests go through a
:class:`firmware_bridge._bus.ModbusBus`: pollers of one serial port share it (one client,
one request in flight), a Modbus TCP poller has its own::

    bus up? ─▶ [ wait for the next due group ─▶ read ─▶ decode ─▶ Reading ] ─┐
       ▲                            │ meter failed (timeout, exception)      │
       │                            └──▶ count ─▶ this meter's backoff ──────┤
       │                            │ bus down (transport broken)            │
       └────────────────────────────┴──▶ count ─▶ (the bus reconnects) ◀─────┘

A failed poll is counted on the poller; only a broken transport closes the client, which
the bus re-opens with capped, jittered backoff while its pollers wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import types
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Self

from pymodbus.client import AsyncModbusTcpClient

from firmware_bridge._buffer import ReadingBuffer
from firmware_bridge._bus import (
    BusDown,
    Client,
    DeviceRefused,
    DeviceTimeout,
    ModbusBus,
    SerialLine,
    attach_serial_bus,
    release_bus,
)
from firmware_bridge._errors import ConfigError, ModbusError
from firmware_bridge._registers import RegisterGroup, RegisterMap, decode_registers
from firmware_bridge._transport import LinkState
from foundation import Backoff
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
    """Modbus RTU on a serial line; ``port`` is a device path or pyserial URL.

    Pollers whose targets name the same ``port`` (the same string) share one client and
    take turns on the line; they must agree on the line settings.
    """

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    def __post_init__(self) -> None:
        if not self.port:
            raise ConfigError("target.port", "must not be empty")
        if self.port.lower().startswith("rfc2217://"):
            # pymodbus's serial transport sets write_timeout=0, which pyserial's RFC 2217
            # client refuses (NotImplementedError), and waits for data with add_reader() on
            # a file descriptor that client does not have (docs/firmware-protocol.md §3.2).
            raise ConfigError(
                "target.port",
                "rfc2217:// is not supported for Modbus RTU (pymodbus cannot drive "
                "pyserial's RFC 2217 client); put the terminal server's port in raw TCP "
                "mode and use socket://host:port",
            )
        if self.baudrate <= 0:
            raise ConfigError("target.baudrate", f"must be > 0, got {self.baudrate!r}")
        if self.bytesize not in (7, 8):
            raise ConfigError("target.bytesize", f"must be 7 or 8, got {self.bytesize!r}")
        if self.parity not in ("N", "E", "O"):
            raise ConfigError("target.parity", "must be N, E or O")
        if self.stopbits not in (1, 2):
            raise ConfigError("target.stopbits", "must be 1 or 2")

    @property
    def line(self) -> SerialLine:
        return SerialLine(
            port=self.port,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ModbusPollerConfig:
    """One meter: where it is, which map describes it, what its readings are called."""

    device: str
    target: ModbusTcpTarget | ModbusSerialTarget
    register_map: RegisterMap
    unit_id: int = 1
    #: Per-request timeout in seconds (pymodbus retries are off: the poller decides). On a
    #: shared serial bus it is also the longest this meter holds the line.
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
        if self.max_pending_readings < 1:
            raise ConfigError("max_pending_readings", "must be >= 1")
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

    ``state`` is the bus's state while it is not up; while it is up, ``up`` if this meter's
    last poll succeeded (or none failed yet) and ``down`` if it failed. Entering raises
    :class:`ConfigError` if another poller uses the same serial port with other settings.
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
        self._bus_state = LinkState.CONNECTING
        self._meter_ok = True
        self._buffer = ReadingBuffer(self.name, config.max_pending_readings)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._bus: ModbusBus | None = None
        self._handle = -1
        self._used = False
        #: The latest poll error (the meter's or the bus's), kept after a good poll.
        self.last_error: str | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "polls",
                "poll_errors",
                "exception_responses",
                "timeouts",
                "connects",
                "connect_failed",
                "invalid_values",
                "bad_responses",
            ),
            0,
        )

    async def __aenter__(self) -> Self:
        if self._used:
            raise RuntimeError("a ModbusPoller is not reusable; create a new one")
        self._used = True
        cfg = self.config
        target = cfg.target
        if isinstance(target, ModbusSerialTarget):
            self._bus, self._handle = attach_serial_bus(
                target.line, self._on_bus, response_timeout=cfg.timeout, backoff=cfg.backoff
            )
        else:
            bus = ModbusBus.private(
                f"{target.host}:{target.port}", self._tcp_client, backoff=cfg.backoff
            )
            self._bus, self._handle = bus, bus.attach(self._on_bus, cfg.timeout)
        self._task = asyncio.create_task(self._run(), name=f"firmware_bridge[{self.name}].poll")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            # On Python 3.11 a cancel that arrives as a request's asyncio.timeout expires is
            # turned into TimeoutError and lost (fixed in 3.12); the schedule then carries on.
            # So cancel until the task is done, and the schedule also stops on _stopping.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        bus, self._bus = self._bus, None
        if bus is not None:
            await release_bus(bus, self._handle)
        self._set_state(LinkState.CLOSED)
        self._buffer.close()

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def bus(self) -> ModbusBus | None:
        """The bus this poller sends its requests through while it is open."""
        return self._bus

    def readings(self) -> AsyncIterator[Reading]:
        """One reading per successful group poll, until the poller is closed."""
        return aiter(self._buffer)

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state and self._state is not LinkState.CLOSED:
            log.info("modbus state %s -> %s", self._state, state, extra={"device": self.name})
            self._state = state
            if self._on_state is not None:
                self._on_state(state)

    def _update_state(self) -> None:
        bus = self._bus_state
        if bus is LinkState.UP and not self._meter_ok:
            bus = LinkState.DOWN
        self._set_state(bus)

    def _on_bus(self, state: LinkState, event: str | None) -> None:
        if event in ("connects", "connect_failed"):
            self.counters[event] += 1
        if state is LinkState.CLOSED:
            return
        self._bus_state = state
        self._update_state()

    def _tcp_client(self, timeout: float, on_connect: Callable[[bool], None]) -> Client:
        target = self.config.target
        assert isinstance(target, ModbusTcpTarget)
        return AsyncModbusTcpClient(
            target.host,
            port=target.port,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_connect,
        )

    async def poll_group(self, group: RegisterGroup) -> Reading | None:
        """Read and decode one group now (when the bus is free); raises :class:`ModbusError`."""
        bus = self._bus
        if bus is None:
            raise ModbusError(self.name, "not connected")
        cfg = self.config
        try:
            registers = await bus.read_registers(
                self.name,
                unit=cfg.unit_id,
                table=group.table,
                start=group.start,
                count=group.count,
                response_timeout=cfg.timeout,
            )
        except DeviceTimeout as exc:
            self.counters["timeouts"] += 1
            raise ModbusError(self.name, f"group {group.name}: {exc.reason}") from exc
        except DeviceRefused as exc:
            self.counters["exception_responses"] += 1
            raise ModbusError(self.name, f"group {group.name}: {exc.reason}") from exc
        except BusDown as exc:
            raise ModbusError(self.name, f"group {group.name}: {exc.reason}") from exc
        try:
            fields, invalid = decode_registers(cfg.register_map, group, registers)
        except (ValueError, struct.error) as exc:
            # A meter that answers the wrong register count (broken firmware, a wrong map, a
            # hostile device) gave a bad answer: this meter's failure, not the poller's end.
            self.counters["bad_responses"] += 1
            raise ModbusError(self.name, f"group {group.name}: bad answer: {exc}") from exc
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
        bus = self._bus
        assert bus is not None
        groups = cfg.register_map.groups
        intervals = [cfg.intervals.get(g.name, g.interval_s) for g in groups]
        loop = asyncio.get_running_loop()
        due = [loop.time()] * len(groups)
        failures = 0
        while not self._stopping:
            await bus.wait_up()
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
                self.last_error = exc.reason
                log.warning("poll failed: %s", exc.reason, extra={"device": self.name})
                cause = exc.__cause__
                if isinstance(cause, BusDown) or (
                    isinstance(cause, DeviceTimeout) and cause.bus_reset
                ):
                    continue  # the bus reconnects with its backoff; wait_up() waits for it
                # This meter's failure: it backs off, the others on the bus carry on.
                self._meter_ok = False
                self._update_state()
                await asyncio.sleep(cfg.backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            if not self._meter_ok:
                self._meter_ok = True
                self._update_state()
            if reading is not None:
                self._buffer.push([reading])
