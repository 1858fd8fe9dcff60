"""Test helpers: an RS-485 line in front of a Modbus RTU server, and an RFC 2217 server.

``RtuLine`` stands between RTU masters and a Modbus RTU-over-TCP server (the pymodbus
server of ``simulators.devices.ModbusMeterServer``) the way a half-duplex RS-485 line
does, and watches it:

    master ──socket://──▶ RtuLine ──TCP──▶ ModbusMeterServer(framing="rtu")
                           │ counts connections, requests and answers per unit,
                           │ checks every frame's CRC and that no request is sent
                           │ while another is unanswered; units in ``absent`` never
                           └ answer (their requests are swallowed, as on a real line)

``Rfc2217Server`` serves one serial port (any pyserial URL: a pty, ``socket://...``) over
RFC 2217 on a loopback port with pyserial's ``serial.rfc2217.PortManager``, in threads,
the way a terminal server (ser2net, a Moxa NPort in RFC 2217 mode) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterable

import serial
import serial.rfc2217


def crc16_modbus(data: bytes) -> bytes:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class RtuLine:
    """An asyncio TCP proxy that behaves and is watched like one RS-485 line."""

    def __init__(self, upstream_port: int, *, absent: Iterable[int] = ()) -> None:
        self.upstream_port = upstream_port
        self.absent = set(absent)
        self.port = 0
        self.connections = 0
        self.open_connections = 0
        self.requests: Counter[int] = Counter()
        self.answers: Counter[int] = Counter()
        self.swallowed: Counter[int] = Counter()
        self.bad_frames = 0
        self.overlaps = 0
        self._pending: int | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RtuLine:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in self._writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)  # awaited on exit, so asyncio.run need not cancel it
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        tasks = [
            asyncio.create_task(self._requests(reader, up_writer, writer)),
            asyncio.create_task(self._answers(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            self.open_connections -= 1
            self._handlers.discard(handler)

    async def _requests(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, master: object
    ) -> None:
        buf = b""
        while chunk := await reader.read(4096):
            buf += chunk
            while len(buf) >= 8:  # read requests (FC 03/04) are 8 bytes
                frame, buf = buf[:8], buf[8:]
                if crc16_modbus(frame[:6]) != frame[6:]:
                    self.bad_frames += 1
                    continue
                unit = frame[0]
                self.requests[unit] += 1
                if unit in self.absent:
                    self.swallowed[unit] += 1
                    continue
                if self._pending is not None:
                    self.overlaps += 1
                self._pending = unit
                upstream.write(frame)
                await upstream.drain()

    async def _answers(self, reader: asyncio.StreamReader, master: asyncio.StreamWriter) -> None:
        buf = b""
        while chunk := await reader.read(4096):
            buf += chunk
            while len(buf) >= 5:
                size = 5 if buf[1] & 0x80 else 5 + buf[2]
                if len(buf) < size:
                    break
                frame, buf = buf[:size], buf[size:]
                if crc16_modbus(frame[:-2]) != frame[-2:] or frame[0] != self._pending:
                    self.bad_frames += 1
                self.answers[frame[0]] += 1
                self._pending = None
                master.write(frame)
                await master.drain()


class Rfc2217Server:
    """Serve the serial port ``url`` over RFC 2217 on ``127.0.0.1:port``, in threads.

    One client at a time (like pyserial's examples/rfc2217_server.py); the backing port is
    opened per client and closed when the client goes. :meth:`stop` closes the listener and
    the client connection (a terminal server restarting); :meth:`start` serves again on the
    same port.
    """

    def __init__(self, url: str, *, port: int = 0) -> None:
        self.url = url
        self.port = port
        self.clients = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> Rfc2217Server:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(1)
        listener.settimeout(0.05)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="rfc2217-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> Rfc2217Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.clients += 1
            with self._lock:
                self._conn = conn
            try:
                self._serve(conn)
            finally:
                with self._lock:
                    self._conn = None
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(0.05)
        port: serial.SerialBase
        if self.url.startswith("/"):
            port = _PtySerial(self.url, timeout=0.05)
        else:
            port = serial.serial_for_url(self.url, timeout=0.05)
        try:
            writer = _SocketWriter(conn)
            manager = serial.rfc2217.PortManager(port, writer)
            done = threading.Event()
            pump = threading.Thread(
                target=self._port_to_net, args=(port, writer, manager, done), daemon=True
            )
            pump.start()
            try:
                while not self._stop.is_set() and not done.is_set():
                    try:
                        data = conn.recv(1024)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    port.write(b"".join(manager.filter(data)))
            finally:
                done.set()
                pump.join(5)
        finally:
            port.close()

    def _port_to_net(
        self,
        port: serial.SerialBase,
        writer: _SocketWriter,
        manager: serial.rfc2217.PortManager,
        done: threading.Event,
    ) -> None:
        try:
            while not done.is_set():
                data = port.read(max(1, port.in_waiting))
                if data:
                    writer.write(b"".join(manager.escape(data)))
                manager.check_modem_lines()
        except (OSError, serial.SerialException):
            pass
        finally:
            done.set()


class _PtySerial(serial.Serial):  # type: ignore[misc]
    """A pty has no modem lines (their ioctls fail with ENOTTY): report them idle and ignore
    RTS/DTR/break, which every RFC 2217 client sets on open."""

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass


class _SocketWriter:
    """The ``connection`` PortManager writes telnet answers to."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._conn.sendall(data)
