"""Byte transport over a pyserial URL, usable from asyncio.

pyserial is blocking, so one reader thread per link owns the port; it hands every chunk
to the event loop with ``call_soon_threadsafe`` (the only thread/loop crossing), and writes
run in the default executor under a lock. The thread also owns reconnection::

    connecting ──open ok──▶ up ──read/write error──▶ down ──▶ retrying ──backoff──▶ connecting
        │                                                        ▲
        └───────────────────────open failed──────────────────────┘
    any state ──close()──▶ closed

Backoff is capped, exponential and jittered (:class:`firmware_bridge.Backoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import threading
import types
from collections.abc import Callable
from typing import Any, Self

import serial

from firmware_bridge._config import SerialConfig
from firmware_bridge._errors import LinkClosed, LinkDown, LinkError

__all__ = ["LinkState", "SerialTransport"]

log = logging.getLogger("firmware_bridge.transport")

#: Seconds a write may block on a stalled port (flow control held, USB adapter hung).
_WRITE_TIMEOUT = 5.0


def _describe(exc: BaseException) -> str:
    """``ENOENT: could not open port ...``: the symbolic errno first when there is one."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code) if isinstance(code, int) else None
    return f"{name}: {exc}" if name else f"{type(exc).__name__}: {exc}"


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    RETRYING = "retrying"
    CLOSED = "closed"


class SerialTransport:
    """An async byte stream over a pyserial URL that survives unplugging.

    Use as an async context manager; :meth:`read` returns the next chunk of bytes,
    :meth:`write` sends. ``on_state`` is called in the event loop on every state change.
    Counters (``link_up``, ``link_down``, ``open_failed``, ``rx_bytes``, ``tx_bytes``,
    ``rx_dropped_bytes``) are in :attr:`counters`.
    """

    def __init__(
        self,
        config: SerialConfig,
        *,
        on_state: Callable[[LinkState], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.label
        self.counters: dict[str, int] = dict.fromkeys(
            ("link_up", "link_down", "open_failed", "rx_bytes", "tx_bytes", "rx_dropped_bytes"),
            0,
        )
        self._on_state = on_state
        self._state = LinkState.CONNECTING
        self._state_changed = asyncio.Event()
        self._stop = threading.Event()
        self._port: serial.SerialBase | None = None
        self._port_lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(config.queue_chunks + 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._used = False
        self._failure: BaseException | None = None
        #: The latest open/read/write error (``"ENOENT: ..."``), kept after a reconnect.
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._used:
            raise RuntimeError("a SerialTransport is not reusable; create a new one")
        self._used = True
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"firmware_bridge[{self.name}].reader", daemon=True
        )
        self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reader thread and close the port. Idempotent."""
        self._stop.set()
        with self._port_lock:
            port = self._port
        if port is not None and hasattr(port, "cancel_read"):
            with contextlib.suppress(OSError, serial.SerialException):
                port.cancel_read()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._apply_state(LinkState.CLOSED)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    async def wait_state(self, *states: LinkState) -> LinkState:
        """Wait until the link is in one of ``states``; bound it with ``asyncio.timeout``."""
        while self._state not in states:
            await self._state_changed.wait()
        return self._state

    def _apply_state(self, state: LinkState) -> None:
        if state is self._state or self._state is LinkState.CLOSED:
            return
        log.info(
            "link state %s -> %s",
            self._state,
            state,
            extra={"link": self.name, "state": str(state)},
        )
        self._state = state
        event, self._state_changed = self._state_changed, asyncio.Event()
        event.set()
        if self._on_state is not None:
            self._on_state(state)

    # -- I/O ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk of received bytes. Raises :class:`LinkClosed` once closed."""
        item = await self._queue.get()
        if item is None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            if self._failure is not None:
                raise LinkError(
                    self.name, f"reader thread failed: {self._failure!r}"
                ) from self._failure
            raise LinkClosed(self.name, "transport closed")
        return item

    async def write(self, data: bytes) -> None:
        """Send ``data``. Raises :class:`LinkDown` if the device is not connected."""
        if self._stop.is_set():
            raise LinkClosed(self.name, "transport closed")
        async with self._write_lock:
            await asyncio.to_thread(self._write_sync, data)
        self.counters["tx_bytes"] += len(data)

    def _write_sync(self, data: bytes) -> None:
        with self._port_lock:
            port = self._port
        if port is None:
            raise LinkDown(self.name, "device not connected")
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise LinkDown(self.name, f"write failed: {exc}") from exc

    # -- reader thread -----------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop.set()
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed between the check and the call
            self._stop.set()

    def _deliver(self, data: bytes) -> None:
        self.counters["rx_bytes"] += len(data)
        if self._queue.qsize() >= self.config.queue_chunks:
            self.counters["rx_dropped_bytes"] += len(data)
            return
        self._queue.put_nowait(data)

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    def _open(self) -> serial.SerialBase:
        cfg = self.config
        # pyserial's RFC 2217 client refuses any write_timeout (NotImplementedError from
        # open(), pyserial 3.5); its writes are sendall() on a socket that already has a
        # 5 s timeout, so they are bounded anyway.
        write_timeout = None if cfg.url.lower().startswith("rfc2217://") else _WRITE_TIMEOUT
        return serial.serial_for_url(
            cfg.url,
            baudrate=cfg.baudrate,
            bytesize=cfg.bytesize,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            timeout=cfg.read_timeout,
            write_timeout=write_timeout,
        )

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._apply_state(LinkState.DOWN)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def _run(self) -> None:
        try:
            self._reconnect_loop()
        except BaseException as exc:
            # A bug or an error pyserial should not raise (e.g. a warning turned into an
            # error): readers of the link get it instead of a silent dead thread.
            log.exception("reader thread failed", extra={"link": self.name})
            self._post(self._fail, exc)

    def _reconnect_loop(self) -> None:
        attempt = 0
        backoff = self.config.backoff
        while not self._stop.is_set():
            self._post(self._apply_state, LinkState.CONNECTING)
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError, NotImplementedError) as exc:
                # ValueError/NotImplementedError: a URL or setting pyserial cannot open. It
                # is retried and counted like an absent device, never a dead reader thread.
                self._post(self._count, "open_failed")
                self.last_error = _describe(exc)
                delay = backoff.delay(attempt)
                attempt += 1
                log.info(
                    "open failed, retrying in %.2fs: %s",
                    delay,
                    exc,
                    extra={"link": self.name, "attempt": attempt, "delay_s": round(delay, 3)},
                )
                self._post(self._apply_state, LinkState.RETRYING)
                self._stop.wait(delay)
                continue
            attempt = 0
            with self._port_lock:
                self._port = port
            self._post(self._count, "link_up")
            self._post(self._apply_state, LinkState.UP)
            try:
                self._pump(port)
            except (serial.SerialException, OSError) as exc:
                log.warning("link lost: %s", exc, extra={"link": self.name})
                self.last_error = _describe(exc)
                self._post(self._count, "link_down")
                self._post(self._apply_state, LinkState.DOWN)
            finally:
                with self._port_lock:
                    self._port = None
                with contextlib.suppress(OSError, serial.SerialException):
                    port.close()
            if not self._stop.is_set():
                delay = backoff.delay(attempt)
                attempt += 1
                self._post(self._apply_state, LinkState.RETRYING)
                self._stop.wait(delay)

    def _pump(self, port: serial.SerialBase) -> None:
        stop = self._stop
        while not stop.is_set():
            waiting = port.in_waiting
            data = port.read(min(max(waiting, 1), 65536))
            if data:
                self._post(self._deliver, bytes(data))
