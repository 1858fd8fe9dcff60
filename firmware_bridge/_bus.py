"""A Modbus client shared by the meters on one line, one request in flight at a time.

Several Modbus RTU meters are usually daisy-chained on one RS-485 line, i.e. one serial
port. A port has exactly one master: every poller whose serial target names the same port
shares one :class:`ModbusBus` (one pymodbus client), looked up in a per-event-loop registry
keyed by the port string and reference counted::

    ModbusPoller(unit 1) ─┐                        ┌─ supervisor task ─────────────────────┐
    ModbusPoller(unit 2) ─┼─ execute() ─▶ lock ─▶  │ connect ─▶ up ─▶ transport lost ─▶ down │
    ModbusPoller(unit 3) ─┘   (FIFO, one request    │    ▲                                  │
                               in flight)           │    └──── retrying ◀── backoff ◀──────┘
                                                    └────── one AsyncModbusSerialClient ──────┘

- Requests wait for an :class:`asyncio.Lock` (FIFO, no barging), so the meters take turns
  in the order they asked and a request never overlaps another on the wire.
- Each request runs under the asking poller's timeout. A meter that does not answer or
  answers with an exception response is that meter's failure (:class:`DeviceTimeout`,
  :class:`DeviceRefused`): the bus stays up and the next meter's request goes out as soon
  as the slot of the failed one has ended.
- Only a broken transport (port gone, serial error, client not connected) is the bus's
  failure (:class:`BusDown`): the client is closed and re-opened with capped, jittered
  backoff, and every attached poller is told each state change.

Modbus TCP pollers each get a private bus (not in the registry): a TCP gateway to an
RS-485 line serializes the requests of its clients itself, and one connection per meter
keeps a meter that stopped answering from taking the others' connection down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from firmware_bridge._errors import ConfigError, ModbusError
from firmware_bridge._transport import LinkState
from foundation import Backoff

__all__ = [
    "BusDown",
    "BusListener",
    "Client",
    "DeviceRefused",
    "DeviceTimeout",
    "ModbusBus",
    "SerialLine",
    "attach_serial_bus",
    "release_bus",
    "serial_buses",
]

log = logging.getLogger("firmware_bridge.modbus.bus")

Client = AsyncModbusSerialClient | AsyncModbusTcpClient
#: Called on every bus state change; ``event`` names the counter the change bumps
#: (``"connects"``, ``"connect_failed"``, ``"link_down"``) or is ``None``.
BusListener = Callable[[LinkState, str | None], None]

#: pymodbus's own response timeout is a backstop, this factor above the longest timeout
#: of the pollers on the bus: the asking poller's ``asyncio.timeout`` always fires first.
_BACKSTOP: Final = 2.0


class DeviceTimeout(ModbusError):
    """The meter did not answer within its timeout; ``bus_reset`` if the bus was reset."""

    def __init__(self, device: str, reason: str, *, bus_reset: bool) -> None:
        self.bus_reset = bus_reset
        super().__init__(device, reason)


class DeviceRefused(ModbusError):
    """The meter answered with a Modbus exception response (illegal address, ...)."""


class BusDown(ModbusError):
    """The transport under the bus is broken or not connected; the bus is reconnecting."""


@dataclass(frozen=True, slots=True)
class SerialLine:
    """What every user of a serial port must agree on."""

    port: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: int

    def conflicts(self, other: SerialLine) -> dict[str, tuple[object, object]]:
        """Settings that differ, by name: ``{"baudrate": (9600, 19200)}``."""
        names = ("baudrate", "bytesize", "parity", "stopbits")
        return {
            n: (getattr(self, n), getattr(other, n))
            for n in names
            if getattr(self, n) != getattr(other, n)
        }


def _connected(client: Client) -> bool:
    return client.connected


class ModbusBus:
    """One pymodbus client, the lock that serializes its requests, and its reconnects.

    Not created directly: :func:`attach_serial_bus` returns the shared bus of a serial
    port, :meth:`private` a bus of one (Modbus TCP). Detach with :func:`release_bus`.
    """

    def __init__(
        self,
        name: str,
        make_client: Callable[[float, Callable[[bool], None]], Client],
        *,
        backoff: Backoff,
        line: SerialLine | None = None,
        reset_on_timeout: bool = False,
    ) -> None:
        self.name = name
        self.line = line
        self.backoff = backoff
        self.reset_on_timeout = reset_on_timeout
        self.counters: dict[str, int] = dict.fromkeys(
            ("connects", "connect_failed", "link_down", "requests", "timeouts", "refused"), 0
        )
        self._make_client = make_client
        self._state = LinkState.CONNECTING
        self._state_changed = asyncio.Event()
        self._listeners: dict[int, tuple[BusListener, float]] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        self._broken = asyncio.Event()
        self._attempt = 0
        self._quiet_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def private(
        cls,
        name: str,
        make_client: Callable[[float, Callable[[bool], None]], Client],
        *,
        backoff: Backoff,
    ) -> ModbusBus:
        """A bus of one poller (Modbus TCP): a timeout also resets the connection."""
        return cls(name, make_client, backoff=backoff, reset_on_timeout=True)

    # -- users ---------------------------------------------------------------------------

    @property
    def users(self) -> int:
        return len(self._listeners)

    @property
    def state(self) -> LinkState:
        return self._state

    def attach(self, listener: BusListener, response_timeout: float) -> int:
        """Register a user; starts the bus with the first one. Returns the user's handle."""
        if self._closed:
            raise RuntimeError(f"bus {self.name} is closed")
        handle = self._next_id
        self._next_id += 1
        self._listeners[handle] = (listener, response_timeout)
        if self._task is None:
            self._task = asyncio.create_task(
                self._supervise(), name=f"firmware_bridge[bus:{self.name}].connect"
            )
        listener(self._state, None)
        return handle

    def is_last(self, handle: int) -> bool:
        return list(self._listeners) == [handle]

    async def detach(self, handle: int) -> None:
        """Unregister a user; the last one closes the client and stops the bus."""
        self._listeners.pop(handle, None)
        if self._listeners or self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        self._close_client()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_client()  # a connect that completed while being cancelled
        self._set_state(LinkState.CLOSED, None)

    async def wait_up(self) -> None:
        """Wait until the bus is up (bound it with ``asyncio.timeout`` if needed)."""
        while self._state is not LinkState.UP:
            if self._state is LinkState.CLOSED:
                raise BusDown(self.name, "bus closed")
            await self._state_changed.wait()

    # -- requests ------------------------------------------------------------------------

    async def read_registers(
        self,
        device: str,
        *,
        unit: int,
        table: Literal["input", "holding"],
        start: int,
        count: int,
        response_timeout: float,
    ) -> list[int]:
        """One read request, when it is this caller's turn; raises a :class:`ModbusError`.

        ``response_timeout`` bounds the time on the line, not the wait for the turn.
        """
        async with self._lock:
            client = self._client
            if client is None or self._state is not LinkState.UP or not client.connected:
                raise BusDown(device, f"bus {self.name} is {self._state}")
            read = (
                client.read_input_registers if table == "input" else client.read_holding_registers
            )
            loop = asyncio.get_running_loop()
            if (quiet := self._quiet_until - loop.time()) > 0:
                await asyncio.sleep(quiet)
            self.counters["requests"] += 1
            sent = loop.time()
            try:
                async with asyncio.timeout(response_timeout):
                    response = await read(start, count=count, device_id=unit)
            except asyncio.CancelledError:
                # The caller gave up (its poller is closing) but the meter may be answering:
                # RS-485 is half duplex, so the next request waits for the rest of this slot
                # instead of talking over the answer.
                self._quiet_until = sent + response_timeout
                raise
            except (TimeoutError, ModbusIOException) as exc:
                # ModbusIOException is pymodbus's own no-response (the backstop) or a
                # connection it gave up on; which one is told by the client's state.
                if not _connected(client):  # re-read: the request may have lost it
                    self._break(f"transport lost: {exc}")
                    raise BusDown(device, f"bus {self.name}: transport lost") from exc
                self.counters["timeouts"] += 1
                if self.reset_on_timeout:
                    self._break("no answer")
                raise DeviceTimeout(
                    device,
                    f"unit {unit}: no answer within {response_timeout:g} s",
                    bus_reset=self.reset_on_timeout,
                ) from exc
            except ConnectionException as exc:
                self._break(str(exc))
                raise BusDown(device, f"bus {self.name}: {exc}") from exc
            except ModbusException as exc:
                raise DeviceRefused(device, f"unit {unit}: {exc}") from exc
            if response.isError():
                self.counters["refused"] += 1
                raise DeviceRefused(device, f"unit {unit}: exception response {response}")
            self._attempt = 0
            return list(response.registers)

    # -- supervisor ----------------------------------------------------------------------

    def _set_state(self, state: LinkState, event: str | None) -> None:
        if event is not None:
            self.counters[event] += 1
        if state is self._state and event is None:
            return
        if state is not self._state:
            log.info("modbus bus %s: %s -> %s", self.name, self._state, state)
        self._state = state
        changed, self._state_changed = self._state_changed, asyncio.Event()
        changed.set()
        for listener, _ in list(self._listeners.values()):
            listener(state, event)

    def _break(self, reason: str) -> None:
        if not self._broken.is_set():
            log.warning("modbus bus %s: %s", self.name, reason)
            self._broken.set()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _supervise(self) -> None:
        while True:
            self._set_state(LinkState.CONNECTING, None)
            broken = self._broken = asyncio.Event()

            def lost(connected: bool, broken: asyncio.Event = broken) -> None:
                if not connected and not broken.is_set():
                    log.warning("modbus bus %s: connection lost", self.name)
                    broken.set()

            timeout = _BACKSTOP * max((t for _, t in self._listeners.values()), default=1.0)
            client = self._client = self._make_client(timeout, lost)
            try:
                connected = await client.connect()
            except (OSError, ValueError, NotImplementedError) as exc:
                # pyserial raises some of these for URLs it cannot open the way pymodbus asks.
                log.warning("modbus bus %s: cannot open: %r", self.name, exc)
                connected = False
            if connected and client.connected:
                self._set_state(LinkState.UP, "connects")
                await broken.wait()
                self._close_client()
                self._set_state(LinkState.DOWN, "link_down")
            else:
                self._close_client()
                self._set_state(LinkState.RETRYING, "connect_failed")
            delay = self.backoff.delay(self._attempt)
            self._attempt += 1
            self._set_state(LinkState.RETRYING, None)
            await asyncio.sleep(delay)


# -- the registry of serial buses -------------------------------------------------------

_SERIAL_BUSES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ModbusBus]] = (
    weakref.WeakKeyDictionary()
)


def serial_buses() -> dict[str, ModbusBus]:
    """The serial buses open in the running event loop, by port (for health and tests)."""
    return dict(_SERIAL_BUSES.get(asyncio.get_running_loop(), {}))


def _serial_client_factory(line: SerialLine) -> Callable[[float, Callable[[bool], None]], Client]:
    def make(timeout: float, on_connect: Callable[[bool], None]) -> Client:
        return AsyncModbusSerialClient(
            line.port,
            framer=FramerType.RTU,
            baudrate=line.baudrate,
            bytesize=line.bytesize,
            parity=line.parity,
            stopbits=line.stopbits,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_connect,
            name=f"bus:{line.port}",
        )

    return make


def attach_serial_bus(
    line: SerialLine, listener: BusListener, *, response_timeout: float, backoff: Backoff
) -> tuple[ModbusBus, int]:
    """The shared bus of ``line.port`` in the running loop, created on first use.

    Raises :class:`ConfigError` if the bus is open with other line settings: one port is
    one line, every meter on it talks at the same baud rate and framing. The bus reconnects
    with the backoff of the poller that opened it.
    """
    buses = _SERIAL_BUSES.setdefault(asyncio.get_running_loop(), {})
    bus = buses.get(line.port)
    if bus is None:
        bus = buses[line.port] = ModbusBus(
            line.port, _serial_client_factory(line), backoff=backoff, line=line
        )
    elif bus.line is not None and (diff := bus.line.conflicts(line)):
        detail = ", ".join(f"{k} {new!r} vs {old!r} in use" for k, (old, new) in diff.items())
        raise ConfigError(
            "target",
            f"serial port {line.port} is already polled with other line settings: {detail}; "
            "every meter on one RS-485 line must use the same settings",
        )
    return bus, bus.attach(listener, response_timeout)


async def release_bus(bus: ModbusBus, handle: int) -> None:
    """Detach a user; the last user of a serial bus removes it from the registry."""
    if bus.line is not None and bus.is_last(handle):
        buses = _SERIAL_BUSES.get(asyncio.get_running_loop(), {})
        if buses.get(bus.name) is bus:
            del buses[bus.name]
    await bus.detach(handle)
