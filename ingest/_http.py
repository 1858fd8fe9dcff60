"""Keep-alive HTTP/1.1 connections for InfluxDB's ``/write``: the write path without httpx.

::

    InfluxV1Sink.write(body)
      └─ WritePool.post(body)
           ├─ an idle connection (last in, first out), or a new one (TCP, TLS if https)
           ├─ request: POST <target>, the pool's fixed headers, Content-Length; the body is
           │  handed to the socket as it is (h11's pass-through: no copy)
           ├─ answer: status, headers, body (Content-Length or chunked), parsed by h11
           └─ both sides done: the connection goes back to the pool; anything else closes it

Why not httpx on this path: on the benchmark machine httpx spent ~3.5 ms of CPU on each
5,000-point body (420 kB) against ~0.5 ms here for the same exchange on the same
influxd (``bench/ingest.py``, docs/ingest.md): at 100,000s of points per second that is a
tenth of a core. The setup calls (``/ping``, ``/query``) stay on httpx: they are rare.

Errors: every failure is :class:`WriteRetryable` raised ``from`` the library error (so a
caller can still find an ``ssl.SSLError`` in the chain), and closes its connection. A
connection taken from the pool may have been closed by the server while idle; when it fails
before any byte of an answer came back, the request is sent once more on a new connection.
That is safe because a write is idempotent (a point is identified by measurement, tag set and
time) and spares the caller a retry with backoff after every idle spell. Timeouts: ``connect``
for opening a connection (TLS handshake included), ``timeout`` for sending the request and
again for the answer. Cancelled mid-exchange, the connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode, urlsplit

import h11

from ingest._errors import WriteRetryable

__all__ = ["Answer", "WritePool"]

#: Bytes of an answer's body kept (InfluxDB's error texts are short); the rest is read and
#: dropped so the connection stays usable.
_MAX_BODY: Final = 64 * 1024
_READ_SIZE: Final = 64 * 1024
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Answer:
    """InfluxDB's answer: status, headers (lower-case names), the start of the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Stale(Exception):
    """A reused connection failed before any answer: send again on a new one."""


class _Connection:
    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()


class WritePool:
    """POSTs to one URL over reused connections; at most ``max_idle`` are kept idle.

    ``url`` is the server (``http://host:port`` or ``https://...``, a path prefix allowed),
    ``path`` and ``params`` the request target below it, ``headers`` sent with every request.
    """

    def __init__(
        self,
        url: str,
        path: str,
        params: dict[str, str],
        *,
        headers: Sequence[tuple[str, str]],
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        connect_timeout: float,
        max_idle: int,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._ssl = ssl_context if parts.scheme == "https" else None
        target = f"{parts.path.rstrip('/')}{path}"
        self._target = f"{target}?{urlencode(params)}" if params else target
        netloc = parts.netloc.rpartition("@")[2]  # never send user info in Host
        self._headers = [("Host", netloc), *headers]
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def post(self, body: bytes) -> Answer:
        """Send ``body``; return the answer whatever its status. :class:`WriteRetryable`
        when no answer came (connection, TLS, timeout, a malformed answer)."""
        if self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, body, reused=True)
            except _Stale:
                pass  # closed by the server while idle: once more on a new connection
        return await self._exchange(await self._connect(), body, reused=False)

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        conns = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(OSError, ssl.SSLError):
                await conn.writer.wait_closed()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                    limit=_READ_SIZE,
                )
        except TimeoutError as exc:
            raise WriteRetryable(f"timeout: connecting to {self._host}:{self._port}") from exc
        except OSError as exc:  # ssl.SSLError included
            raise WriteRetryable(f"connection: {exc!r}") from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, body: bytes, *, reused: bool) -> Answer:
        self._busy.add(conn)
        done = False
        try:
            answer = await self._roundtrip(conn, body, reused=reused)
            done = True
        finally:
            self._busy.discard(conn)
            state = conn.h11
            if done and state.our_state is state.their_state is h11.DONE:
                state.start_next_cycle()
                if len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                else:
                    conn.close()
            else:
                conn.close()
        return answer

    async def _roundtrip(self, conn: _Connection, body: bytes, *, reused: bool) -> Answer:
        state = conn.h11
        headers = [*self._headers, ("Content-Length", str(len(body)))]
        try:
            out = (
                state.send_with_data_passthrough(
                    h11.Request(method="POST", target=self._target, headers=headers)
                )
                or []
            )
            out += state.send_with_data_passthrough(h11.Data(data=body)) or []
            out += state.send_with_data_passthrough(h11.EndOfMessage()) or []
        except h11.LocalProtocolError as exc:
            raise WriteRetryable(f"request not sent: {exc}") from exc
        answered = False
        try:
            async with asyncio.timeout(self._timeout):
                conn.writer.writelines(out)
                await conn.writer.drain()
            async with asyncio.timeout(self._timeout):
                status = 0
                headers_in: dict[str, str] = {}
                kept = bytearray()
                while True:
                    event = state.next_event()
                    if event is h11.NEED_DATA:
                        state.receive_data(await conn.reader.read(_READ_SIZE))
                        continue
                    if isinstance(event, h11.Response):
                        answered = True
                        status = event.status_code
                        headers_in = {
                            k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers
                        }
                    elif isinstance(event, h11.Data):
                        if len(kept) < _MAX_BODY:
                            kept += event.data[: _MAX_BODY - len(kept)]
                    elif isinstance(event, h11.EndOfMessage):
                        return Answer(status, headers_in, bytes(kept))
                    elif isinstance(event, h11.ConnectionClosed):
                        raise h11.RemoteProtocolError("connection closed mid-answer")
        except TimeoutError as exc:
            raise WriteRetryable(f"timeout: no answer within {self._timeout}s") from exc
        except (OSError, h11.RemoteProtocolError) as exc:
            if reused and not answered:
                raise _Stale from exc
            raise WriteRetryable(f"connection: {exc!r}") from exc
