"""The asyncio MQTT session: paho's protocol engine driven inside the event loop.

::

    event loop thread (everything below runs here; no paho thread, no hand-off)
    ──────────────────────────────────────────────────────────────────────────────────────
    task {name}.connection
      connect ── paho connect() in the default executor (DNS, TCP, TLS handshake, CONNECT)
        │        then the socket is handed to the loop:
        │          add_reader ─▶ loop_read ─▶ on_message / on_publish / on_subscribe
        │          call_soon / add_writer ─▶ loop_write   (only while paho has bytes queued)
        │          call_later(1 s) ─▶ loop_misc           (keepalive PINGREQ)
        ├─ CONNACK ─▶ epoch += 1 ─▶ birth ─▶ restore subscriptions ─▶ on_connect ─▶ connected
        └─ lost ─▶ in-flight publishes fail (MqttDisconnected), pending acks are forgotten,
                   on_disconnect ─▶ Backoff.delay(attempt) ─▶ connect again (fresh paho client)

    publish() / publish_nowait() ─▶ paho publish ─▶ future per mid ◀── PUBACK reason code
    messages()  ◀── inbox (at max_buffered the session stops reading the socket) ◀── PUBLISH
    Message.ack() ─▶ ack ledger of its connection, released in receive order ─▶ PUBACK

**One paho client per connection.** A new connection starts with empty in-flight state,
so the layer never re-sends a publish by itself: a QoS 1 publish whose connection is lost
before its PUBACK fails with :class:`MqttDisconnected`, and the caller (a spool) decides.

**Acks belong to a connection.** With ``manual_ack`` a message is acknowledged only by
:meth:`Message.ack`, and acks are released in receive order (MQTT 4.6). After a connection
loss the broker redelivers every unacknowledged message (persistent session), so an ack for
a message of an older epoch is never sent: it could acknowledge another message that now
carries the same packet id.

**Backpressure.** With manual acks the broker sends at most Receive Maximum unacknowledged
messages. As mosquitto 2.0.11 overshoots that once acks flow, the session also stops reading
the socket while ``max_buffered`` messages wait for the consumer (at most keepalive/2 at a
time, so the connection stays alive), and TCP pushes back on the broker.

Why paho in the loop and not aiomqtt (measured with ``bench/mqtt_session.py``, see
``docs/mqtt-session.md``): aiomqtt 2.5.1 drops the PUBACK reason code (0x10 is invisible),
has no manual ack, no DUP flag, discards messages when its queue is full and does not
reconnect; its publish path is also slower at the fleet's shape. It drives paho exactly as
this module does (add_reader / add_writer / a misc timer), so this module keeps that design
and adds the semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import functools
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from foundation import BrokerSetupError, configure_client
from foundation.mqtt._config import Outgoing, SessionConfig, SessionStatus
from foundation.mqtt._errors import (
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttReentrantError,
    MqttSubscribeError,
    MqttWindowFull,
)

__all__ = ["Message", "MqttSession", "StatusHook"]

log = logging.getLogger("foundation.mqtt")

_MISC_EVERY_S: Final = 1.0
#: loop_read() reads one packet; a readable socket usually holds many.
_READS_PER_WAKE: Final = 64
_SUCCESS: Final = MQTTErrorCode.MQTT_ERR_SUCCESS
#: What paho's Properties holds before any property is set (its tables, per instance).
_NO_PROPERTIES: Final = frozenset(
    vars(Properties(PacketTypes.PUBLISH))  # type: ignore[no-untyped-call]
)

#: Called in the event loop with a status snapshot after every connect / connection loss.
StatusHook = Callable[[SessionStatus], None]


class Message:
    """A received PUBLISH. ``epoch`` is the connection it came on (:attr:`MqttSession.epoch`);
    ``properties`` the MQTT v5 properties (``None`` with 3.1.1, and when it carried none)."""

    __slots__ = (
        "_acked",
        "_conn",
        "dup",
        "epoch",
        "mid",
        "payload",
        "properties",
        "qos",
        "retain",
        "topic",
    )

    def __init__(
        self,
        *,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        mid: int,
        epoch: int,
        properties: Properties | None,
        conn: _Connection | None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.mid = mid
        self.epoch = epoch
        self.properties = properties
        self._conn = conn
        self._acked = conn is None

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, qos={self.qos}, retain={self.retain}, "
            f"dup={self.dup}, epoch={self.epoch}, bytes={len(self.payload)})"
        )

    @property
    def response_topic(self) -> str | None:
        return getattr(self.properties, "ResponseTopic", None)

    @property
    def correlation_data(self) -> bytes | None:
        return getattr(self.properties, "CorrelationData", None)

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        return list(getattr(self.properties, "UserProperty", None) or ())

    async def ack(self) -> bool:
        """Acknowledge this message (``manual_ack`` sessions).

        True when the PUBACK is sent, now or as soon as every message received before this
        one on the same connection is acknowledged too. False when nothing will be sent:
        QoS 0, manual ack off, already acknowledged, or the connection it came on is gone
        (the broker redelivers it on the next one).
        """
        conn = self._conn
        if self._acked or conn is None:
            return False
        self._acked = True
        return conn.release_acks()


@dataclass(frozen=True, slots=True)
class _Subscription:
    topic: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int

    def paho(self, v5: bool) -> tuple[str, Any]:
        if not v5:
            return (self.topic, self.qos)
        return (
            self.topic,
            SubscribeOptions(
                qos=self.qos,
                noLocal=self.no_local,
                retainAsPublished=self.retain_as_published,
                retainHandling=self.retain_handling,
            ),
        )


class _Connection:
    """One paho client, one socket, one epoch. Callbacks run in the event loop."""

    def __init__(self, session: MqttSession, client: mqtt.Client) -> None:
        self.session = session
        self.client = client
        self.loop = session.loop
        self.epoch = 0
        self.fd = -1
        self.tls = False
        self.reader = False
        self.writer = False
        self.flush_pending = False
        self.reading = True
        self.packets = 0
        self.window = session.config.max_inflight
        self.connack: asyncio.Future[tuple[bool, int | None]] = self.loop.create_future()
        self.lost: asyncio.Future[MqttDisconnected] = self.loop.create_future()
        self.inflight: dict[int, asyncio.Future[int]] = {}
        self.subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self.ledger: deque[Message] = deque()
        self.misc: asyncio.TimerHandle | None = None
        self.resume_at: asyncio.TimerHandle | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe

    # -- socket hand-off ------------------------------------------------------------------
    def attach(self) -> None:
        """Take over the socket paho connected in the executor: from now on, loop only."""
        client = self.client
        sock = client.socket()
        if sock is None:
            raise MqttConnectError("no socket after connect", url=self.session.url)
        self.fd = sock.fileno()
        self.tls = isinstance(sock, ssl.SSLSocket)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.loop.add_reader(self.fd, self.on_readable)
        self.reader = True
        if client.want_write():
            self._on_register_write(client, None, sock)
        self.misc = self.loop.call_later(_MISC_EVERY_S, self._on_misc)

    def _detach(self) -> None:
        """Stop watching the fd: before it is closed, never after (the number is reused)."""
        if self.reader:
            self.reader = False
            self.loop.remove_reader(self.fd)
        if self.writer:
            self.writer = False
            self.loop.remove_writer(self.fd)
        for handle in (self.misc, self.resume_at):
            if handle is not None:
                handle.cancel()

    def on_readable(self) -> None:
        client = self.client
        for _ in range(_READS_PER_WAKE):
            before = self.packets
            if client.loop_read() != _SUCCESS or self.lost.done() or not self.reading:
                return
            if self.packets == before and not (self.tls and self._tls_pending()):
                return

    def _tls_pending(self) -> bool:
        sock = self.client.socket()
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _on_register_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        # Publishes queued in one loop iteration go out in one loop_write; the fd is
        # watched for writability only when the socket buffer is full.
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_pending = False
        if self.lost.done():
            return
        self.client.loop_write()
        if not self.lost.done() and self.client.want_write() and not self.writer:
            self.writer = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        self.client.loop_write()

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        if self.writer:
            self.writer = False
            self.loop.remove_writer(self.fd)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        self._detach()
        self._set_lost("connection closed")

    def _on_misc(self) -> None:
        if self.lost.done():
            return
        self.client.loop_misc()
        if not self.lost.done():
            self.misc = self.loop.call_later(_MISC_EVERY_S, self._on_misc)

    # -- backpressure ---------------------------------------------------------------------
    def pause(self) -> None:
        if not self.reading or self.lost.done():
            return
        self.reading = False
        if self.reader:
            self.reader = False
            self.loop.remove_reader(self.fd)
        # Never longer than keepalive/2: the PINGRESP must be read in time.
        delay = self.session.config.keepalive_s / 2
        self.resume_at = self.loop.call_later(delay, self.resume)

    def resume(self) -> None:
        if self.reading or self.lost.done():
            return
        self.reading = True
        if self.resume_at is not None:
            self.resume_at.cancel()
            self.resume_at = None
        if not self.reader:
            self.reader = True
            self.loop.add_reader(self.fd, self.on_readable)

    # -- paho callbacks (inside loop_read / loop_write / loop_misc) -------------------------
    def _on_connect(
        self, _c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        self.packets += 1
        if self.connack.done():
            return
        if rc.is_failure:
            self.connack.set_exception(
                MqttConnectError(
                    f"broker refused the connection: {rc}",
                    url=self.session.url,
                    reason_code=rc.value,
                )
            )
            return
        server_rm = getattr(props, "ReceiveMaximum", None)
        if server_rm is not None:
            self.window = min(self.window, int(server_rm))
        # Messages may follow CONNACK in this very read: they belong to the new epoch, and
        # the birth goes out before anything else.
        self.session.connack(self, bool(flags.session_present))
        self.connack.set_result((bool(flags.session_present), server_rm))

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self._set_lost(f"connection lost: {rc}")

    def _set_lost(self, reason: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(
                MqttConnectError(f"closed before CONNACK ({reason})", url=self.session.url)
            )
        if not self.lost.done():
            self.lost.set_result(MqttDisconnected(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        self.packets += 1
        session = self.session
        manual = session.config.manual_ack and m.qos > 0
        # paho builds a Properties object (~5 KB: its own name and type tables) for every v5
        # PUBLISH, and most carry none: a message held in the inbox or the ack ledger keeps
        # it only when it says something (10,000 unacked messages: 50 MB otherwise).
        props = getattr(m, "properties", None)
        if props is not None and vars(props).keys() <= _NO_PROPERTIES:
            props = None
        msg = Message(
            topic=m.topic,
            payload=m.payload if isinstance(m.payload, bytes) else bytes(m.payload),
            qos=m.qos,
            retain=bool(m.retain),
            dup=bool(m.dup),
            mid=m.mid,
            epoch=self.epoch,
            properties=props,
            conn=self if manual else None,
        )
        if manual:
            self.ledger.append(msg)
        session.deliver(msg, self)

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.packets += 1
        fut = self.inflight.pop(mid, None)
        if fut is None:
            return  # QoS 0 written, or a publish nobody waits for
        if not fut.done():
            fut.set_result(rc.value)
        self.session.slot_freed()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        self.packets += 1
        fut = self.subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _on_unsubscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        self._on_subscribe(_c, _u, mid, codes, _p)

    # -- acks -----------------------------------------------------------------------------
    def release_acks(self) -> bool:
        """Send the PUBACKs of the acknowledged prefix of the ledger (receive order)."""
        if self.lost.done():
            return False
        ledger, client = self.ledger, self.client
        while ledger and ledger[0]._acked:
            m = ledger.popleft()
            client.ack(m.mid, m.qos)
        return True

    # -- the end --------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """Lose the connection abruptly (no DISCONNECT: the broker publishes the will)."""
        if self.lost.done():
            return
        self._detach()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            # paho sees EOF, closes the socket itself and reports the loss.
            self.client.loop_read()
        self._set_lost(reason)

    def fail_pending(self, error: MqttDisconnected) -> None:
        self._detach()
        for fut in self.inflight.values():
            if not fut.done():
                fut.set_exception(error)
        for sub in self.subacks.values():
            if not sub.done():
                sub.set_exception(error)
        self.inflight.clear()
        self.subacks.clear()
        self.ledger.clear()


def _discard_late_client(client: mqtt.Client, fut: asyncio.Future[Any]) -> None:
    """A connect() that finished in the executor after we gave up on it: close it."""
    if fut.cancelled() or fut.exception() is not None:
        return
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _close_abandoned_sockets(exc: BaseException) -> None:
    """Close the socket of a failed TLS handshake, which paho leaves to the garbage collector
    (``Client._ssl_wrap_socket`` does not close it when the handshake or the host name check
    raises). Only the frames of ``exc``'s traceback hold it, and the futures it travelled
    through keep those in reference cycles: without this, the descriptor stays open until
    some later gc run (a ResourceWarning far from its cause; one per failed attempt)."""
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket) and value.fileno() != -1:
                value.close()
        tb = tb.tb_next


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class _Messages:
    def __init__(self, session: MqttSession) -> None:
        self._session = session

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        return await self._session.next_message()


class MqttSession:
    """One MQTT session with reconnect, as an async context manager.

    ::

        async with MqttSession(SessionConfig(host=..., client_id="ingest-0",
                                             clean_start=False, session_expiry_s=3600,
                                             manual_ack=True, receive_maximum=1000)) as s:
            await s.subscribe("$share/ingest/city/v1/+/telemetry", qos=1)
            async for msg in s.messages():
                ...                                  # store it
                await msg.ack()

    ``__aenter__`` returns once the first connection is up (raises :class:`MqttConnectError`
    otherwise: fail fast on a wrong broker); after that the session reconnects by itself
    with ``config.backoff`` until it exits. ``__aexit__`` sends DISCONNECT (unless
    :meth:`abort` was called), cancels and awaits its task. Reusable, not re-entrant.

    ``on_connect`` / ``on_disconnect`` are called in the event loop with a status snapshot
    after every connect (birth sent, subscriptions restored) and every loss; an exception
    there ends the session (it propagates through the session's task group).
    """

    def __init__(
        self,
        config: SessionConfig,
        *,
        on_connect: StatusHook | None = None,
        on_disconnect: StatusHook | None = None,
    ) -> None:
        self.config = config
        self._on_connect_hook = on_connect
        self._on_disconnect_hook = on_disconnect
        self._v5 = config.version == "5"
        self._subscriptions: dict[str, _Subscription] = {}
        self._epoch = 0
        self._reconnects = 0
        self._failures = 0
        self._losses = 0
        self._session_present = False
        self._last_error: MqttError | None = None
        self._running = False
        self._closing = False
        self._aborted = False
        self._conn: _Connection | None = None
        self._inbox: deque[Message] = deque()
        self._message_waiters: list[asyncio.Future[None]] = []
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._state_waiters: list[asyncio.Future[None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Index into ``config.addresses``: where the session connects (or is connected).
        self._address = 0
        self._round_start = 0

    # -- state ----------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise MqttDisconnected("the session is not running")
        return self._loop

    @property
    def address(self) -> tuple[str, int]:
        """The broker address (host, port) the session is connected or connecting to."""
        return self.config.addresses[self._address]

    @property
    def url(self) -> str:
        return self.config.url_of(*self.address)

    def _next_address(self) -> bool:
        """Move on to the next address; True when that starts a new round over the list."""
        self._address = (self._address + 1) % len(self.config.addresses)
        return self._address == self._round_start

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.lost.done()

    @property
    def epoch(self) -> int:
        """The current connection: incremented on every successful connect."""
        return self._epoch

    @property
    def status(self) -> SessionStatus:
        conn = self._conn
        return SessionStatus(
            connected=self.connected,
            epoch=self._epoch,
            reconnects=self._reconnects,
            connect_failures=self._failures,
            losses=self._losses,
            session_present=self._session_present,
            last_error=self._last_error,
            inflight=0 if conn is None else len(conn.inflight),
            window=self.config.max_inflight if conn is None else conn.window,
            buffered=len(self._inbox),
        )

    @property
    def inflight(self) -> int:
        """QoS 1/2 publishes waiting for their PUBACK on this connection."""
        conn = self._conn
        return 0 if conn is None else len(conn.inflight)

    @property
    def window(self) -> int:
        conn = self._conn
        return self.config.max_inflight if conn is None else conn.window

    async def wait_connected(self) -> None:
        """Return once connected; :class:`MqttDisconnected` if the session ends first."""
        while not self.connected:
            if not self._running or self._closing:
                raise MqttDisconnected("the session is closed")
            await self._state_change()

    async def wait_disconnected(self) -> None:
        """Return once the connection is lost or the session ends."""
        while self.connected and not self._closing:
            await self._state_change()

    async def _state_change(self) -> None:
        fut = self.loop.create_future()
        self._state_waiters.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._state_waiters.remove(fut)

    def _notify(self) -> None:
        waiters, self._state_waiters = self._state_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._running:
            raise MqttReentrantError("the session is reusable, but not re-entrant")
        cfg = self.config
        ctx = cfg.ssl_context
        if ctx is None and cfg.access.tls is not None:
            try:
                ctx = cfg.access.tls.ssl_context()
            except BrokerSetupError as exc:
                raise MqttConfigError(exc.key, exc.reason) from exc
        self._ssl = ctx
        self._running, self._closing, self._aborted = True, False, False
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        self._task = tg.create_task(self._run(), name=f"{cfg.label}.connection")
        try:
            await self._first
        except BaseException:
            self._closing = True
            self._task.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                self._reset()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg = self._tg
        if tg is None:
            return
        self._closing = True
        self._notify()
        conn = self._conn
        try:
            if conn is not None and not conn.lost.done():
                conn.client.disconnect()
                try:
                    async with asyncio.timeout(2.0):
                        await asyncio.shield(conn.lost)
                except TimeoutError:
                    conn.kill("no answer to DISCONNECT")
        finally:
            if self._task is not None:
                self._task.cancel()  # stops a reconnect wait; losses are handled in _run
            try:
                # The body's own exception is not handed to the group: it propagates as it
                # is (no ExceptionGroup around a caller's error); a failure of the session's
                # task still does, as an ExceptionGroup.
                await tg.__aexit__(None, None, None)
            finally:
                self._reset()

    def abort(self) -> None:
        """End the session now, as a power cut would: the socket is closed without
        DISCONNECT (the broker publishes the will) and no reconnect follows. The
        ``async with`` block still has to exit."""
        if not self._running:
            return
        self._closing = self._aborted = True
        conn = self._conn
        if conn is not None:
            conn.kill("aborted")
        self._notify()

    def drop(self) -> None:
        """Lose the current connection abruptly (no DISCONNECT, the will is published) and
        reconnect with the backoff, as a flaky uplink would."""
        conn = self._conn
        if conn is not None:
            conn.kill("dropped")

    def _stopping(self) -> bool:
        return self._closing

    def _reset(self) -> None:
        self._tg = None
        self._task = None
        self._first = None
        self._conn = None
        self._running = False
        self._inbox.clear()
        for fut in [*self._message_waiters, *self._slot_waiters]:
            if not fut.done():
                fut.set_result(None)
        self._message_waiters.clear()
        self._slot_waiters.clear()
        self._notify()

    # -- the connection task --------------------------------------------------------------
    async def _run(self) -> None:
        cfg = self.config
        first = self._first
        assert first is not None
        attempt = 0
        self._round_start = self._address
        try:
            while not self._stopping():
                try:
                    conn = await self._connect()
                except (MqttConnectError, MqttConfigError) as exc:
                    self._failures += 1
                    self._last_error = exc
                    failed_url = self.url
                    # Several addresses: try the next at once until a whole round failed.
                    round_done = self._next_address()
                    if not round_done:
                        log.warning(
                            "MQTT connect failed; trying the next broker address",
                            extra={
                                "session": cfg.label,
                                "url": failed_url,
                                "error": str(exc),
                                "next": self.url,
                            },
                        )
                        continue
                    if not first.done():
                        first.set_exception(exc)
                        return
                    delay = cfg.backoff.delay(attempt)
                    attempt += 1
                    code = getattr(exc, "errno", None)
                    log.warning(
                        "MQTT connect failed; retrying",
                        extra={
                            "session": cfg.label,
                            "url": failed_url,
                            "error": str(exc),
                            # the symbolic name (ECONNREFUSED), for whoever reads the log
                            "errno": None if code is None else errno_codes.errorcode.get(code),
                            "reason_code": getattr(exc, "reason_code", None),
                            "retry_in_s": delay,
                        },
                    )
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                await self._established(conn)
                if not first.done():
                    first.set_result(None)
                error = await conn.lost
                self._lost(conn, error)
                if self._stopping():
                    return
                lost_url = self.url
                if len(cfg.addresses) > 1:
                    # The node may be gone: the next one first; a new round starts there.
                    self._next_address()
                    self._round_start = self._address
                log.warning(
                    "MQTT connection lost; reconnecting",
                    extra={
                        "session": cfg.label,
                        "url": lost_url,
                        "reason": error.reason,
                        "next": self.url,
                    },
                )
                await asyncio.sleep(cfg.backoff.delay(0))
        finally:
            conn_ = self._conn
            if conn_ is not None:
                conn_.kill("session closed")
                self._lost(conn_, MqttDisconnected("session closed"))

    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        if self._v5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
                manual_ack=cfg.manual_ack,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id,
                protocol=MQTTProtocolVersion.MQTTv311,
                clean_session=cfg.clean_start,
                manual_ack=cfg.manual_ack,
            )
        client.connect_timeout = cfg.connect_timeout_s
        # The window is ours (publish / publish_nowait): paho sends what it is given.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if cfg.will is not None:
            w = cfg.will
            client.will_set(w.topic, w.payload, w.qos, w.retain, w.properties)
        try:
            configure_client(client, cfg.access, context=self._ssl)
        except BrokerSetupError as exc:
            raise MqttConfigError(exc.key, exc.reason) from exc
        return client

    def _connect_call(self, client: mqtt.Client) -> Callable[[], MQTTErrorCode]:
        cfg = self.config
        host, port = self.address
        if not self._v5:
            return functools.partial(client.connect, host, port, cfg.keepalive_s)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if cfg.session_expiry_s is not None:
            props.SessionExpiryInterval = cfg.session_expiry_s
        if cfg.receive_maximum is not None:
            props.ReceiveMaximum = cfg.receive_maximum
        return functools.partial(
            client.connect,
            host,
            port,
            cfg.keepalive_s,
            clean_start=cfg.clean_start,
            properties=props if (cfg.session_expiry_s or cfg.receive_maximum) else None,
        )

    async def _connect(self) -> _Connection:
        cfg = self.config
        loop = self.loop
        client = self._new_client()
        conn = _Connection(self, client)
        # paho's connect() blocks (DNS, TCP, TLS handshake): the executor does it, and
        # the loop takes the socket over once it returns (attach). A connect we stop
        # waiting for is closed when it finishes.
        call = loop.run_in_executor(None, self._connect_call(client))
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                try:
                    rc = await asyncio.shield(call)
                except BaseException:
                    call.add_done_callback(functools.partial(_discard_late_client, client))
                    raise
                if rc != _SUCCESS:
                    raise MqttConnectError(mqtt.error_string(rc), url=self.url)
                conn.attach()
                session_present, server_rm = await conn.connack
        except TimeoutError as exc:
            conn.kill("connect timed out")
            raise MqttConnectError(
                f"no connection within {cfg.connect_timeout_s} s",
                url=self.url,
                errno=errno_codes.ETIMEDOUT,
            ) from exc
        except MqttConnectError:
            conn.kill("connect failed")
            raise
        except ssl.SSLError as exc:
            _close_abandoned_sockets(exc)
            raise MqttConnectError(f"TLS: {exc.reason or exc}", url=self.url) from exc
        except OSError as exc:
            raise MqttConnectError(exc.strerror or str(exc), url=self.url, errno=exc.errno) from exc
        except ValueError as exc:  # paho: bad host, certificate name mismatch
            _close_abandoned_sockets(exc)
            raise MqttConnectError(str(exc), url=self.url) from exc
        except BaseException:
            conn.kill("cancelled")
            raise
        del session_present, server_rm  # taken in connack()
        return conn

    def connack(self, conn: _Connection, session_present: bool) -> None:
        """CONNACK accepted (inside paho's read): a new epoch, the birth first."""
        self._epoch += 1
        conn.epoch = self._epoch
        if self._epoch > 1:
            self._reconnects += 1
        self._session_present = session_present
        self._conn = conn
        birth = self.config.birth
        if birth is not None:
            self._send(conn, birth()).add_done_callback(_consume)

    async def _established(self, conn: _Connection) -> None:
        cfg = self.config
        subs = list(self._subscriptions.values())
        if subs and (not self._session_present or cfg.resubscribe == "always"):
            try:
                async with asyncio.timeout(cfg.connect_timeout_s):
                    codes = await self._send_subscribe(conn, subs)
            except TimeoutError:
                self._last_error = MqttDisconnected("no SUBACK for the restored subscriptions")
            except MqttDisconnected as exc:
                self._last_error = exc
            else:
                for sub, code in zip(subs, codes, strict=False):
                    if code.is_failure:
                        self._last_error = MqttSubscribeError(sub.topic, code.value, str(code))
                        log.error(
                            "broker refused a restored subscription",
                            extra={"session": cfg.label, "topic": sub.topic, "reason": str(code)},
                        )
        if conn.lost.done():
            return
        log.info(
            "MQTT connected",
            extra={
                "session": cfg.label,
                "epoch": self._epoch,
                "session_present": self._session_present,
            },
        )
        if self._on_connect_hook is not None:
            self._on_connect_hook(self.status)
        self._notify()

    def _lost(self, conn: _Connection, error: MqttDisconnected) -> None:
        conn.fail_pending(error)
        if self._conn is conn:
            self._conn = None
        self._losses += 1
        if not self._closing:
            self._last_error = error
        for fut in self._slot_waiters:
            if not fut.done():
                fut.set_result(None)
        self._slot_waiters.clear()
        self._notify()
        if self._on_disconnect_hook is not None:
            self._on_disconnect_hook(self.status)

    # -- publishing -----------------------------------------------------------------------
    def _live(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.lost.done() or self._closing:
            raise MqttDisconnected("not connected")
        return conn

    def _send(self, conn: _Connection, out: Outgoing) -> asyncio.Future[int]:
        return self._publish(conn, out.topic, out.payload, out.qos, out.retain, out.properties)

    def _publish(
        self,
        conn: _Connection,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None,
    ) -> asyncio.Future[int]:
        if properties is not None and not self._v5:
            raise MqttConfigError("properties", "are MQTT v5 only (version is '3.1.1')")
        try:
            info = conn.client.publish(topic, payload, qos, retain, properties)
        except ValueError as exc:
            raise MqttError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc != _SUCCESS:
            raise MqttDisconnected(f"publish failed: {mqtt.error_string(info.rc)}")
        fut: asyncio.Future[int] = conn.loop.create_future()
        if qos == 0:
            fut.set_result(0)
        else:
            conn.inflight[info.mid] = fut
        return fut

    def publish_nowait(
        self,
        topic: str,
        payload: bytes = b"",
        *,
        qos: Literal[0, 1, 2] = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[int]:
        """Publish now; the future resolves to the PUBACK reason code (0 for QoS 0 once
        queued) or fails with :class:`MqttDisconnected` when the connection is lost first.

        Raises :class:`MqttWindowFull` when ``window`` QoS 1/2 messages already wait for
        their PUBACK, :class:`MqttDisconnected` when not connected.
        """
        conn = self._live()
        if qos and len(conn.inflight) >= conn.window:
            raise MqttWindowFull(f"{len(conn.inflight)} publishes wait for their PUBACK")
        return self._publish(conn, topic, payload, qos, retain, properties)

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        *,
        qos: Literal[0, 1, 2] = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Publish and return the broker's answer: the PUBACK reason code for QoS 1
        (0 success, :data:`NO_MATCHING_SUBSCRIBERS` 0x10, >= 0x80 refused; always 0 with
        MQTT 3.1.1), 0 for QoS 0 once handed to the socket buffer.

        Waits for room in the in-flight window first. :class:`MqttDisconnected` when not
        connected or when the connection is lost before the PUBACK (the message may have
        arrived: publish it again). Bound the wait with ``asyncio.timeout`` at the call site.
        """
        if qos:
            while True:
                conn = self._live()
                if len(conn.inflight) < conn.window:
                    break
                fut = self.loop.create_future()
                self._slot_waiters.append(fut)
                try:
                    await fut
                finally:
                    with contextlib.suppress(ValueError):
                        self._slot_waiters.remove(fut)
        return await self.publish_nowait(
            topic, payload, qos=qos, retain=retain, properties=properties
        )

    def slot_freed(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # -- subscribing ----------------------------------------------------------------------
    def _send_subscribe(
        self, conn: _Connection, subs: list[_Subscription]
    ) -> asyncio.Future[list[ReasonCode]]:
        rc, mid = conn.client.subscribe([s.paho(self._v5) for s in subs])
        if rc != _SUCCESS or mid is None:
            raise MqttDisconnected(f"subscribe failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = conn.loop.create_future()
        conn.subacks[mid] = fut
        return fut

    async def subscribe(
        self,
        topic: str,
        qos: Literal[0, 1, 2] = 1,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: Literal[0, 1, 2] = 0,
    ) -> int:
        """Subscribe and return the granted QoS. The subscription is remembered and made
        again after a reconnect (see ``SessionConfig.resubscribe``), even when this call
        fails with :class:`MqttDisconnected`. :class:`MqttSubscribeError` when refused
        (then it is forgotten). Shared subscriptions: ``$share/<group>/<filter>``.
        ``no_local``, ``retain_as_published``, ``retain_handling`` are MQTT v5 options.
        """
        if not self._v5 and (no_local or retain_as_published or retain_handling):
            raise MqttConfigError("subscribe", "subscription options are MQTT v5 only")
        sub = _Subscription(topic, qos, no_local, retain_as_published, retain_handling)
        self._subscriptions[topic] = sub
        codes = await self._send_subscribe(self._live(), [sub])
        code = codes[0]
        if code.is_failure:
            if self._subscriptions.get(topic) == sub:
                del self._subscriptions[topic]
            raise MqttSubscribeError(topic, code.value, str(code))
        return code.value

    async def unsubscribe(self, topic: str) -> None:
        """Forget a subscription and, when connected, end it at the broker."""
        self._subscriptions.pop(topic, None)
        conn = self._conn
        if conn is None or conn.lost.done():
            return
        rc, mid = conn.client.unsubscribe(topic)
        if rc != _SUCCESS or mid is None:
            raise MqttDisconnected(f"unsubscribe failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = conn.loop.create_future()
        conn.subacks[mid] = fut
        await fut

    # -- receiving ------------------------------------------------------------------------
    def messages(self) -> AsyncIterator[Message]:
        """Received messages, across reconnects, until the session exits. Meant for one
        consumer; ``max_buffered`` of them wait at most (then reading pauses)."""
        return _Messages(self)

    def deliver(self, msg: Message, conn: _Connection) -> None:
        inbox = self._inbox
        inbox.append(msg)
        if self._message_waiters:
            waiters, self._message_waiters = self._message_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        if len(inbox) >= self.config.buffer_limit:
            conn.pause()

    async def next_message(self) -> Message:
        inbox = self._inbox
        while not inbox:
            if not self._running or self._closing:
                raise StopAsyncIteration
            fut = self.loop.create_future()
            self._message_waiters.append(fut)
            try:
                await fut
            finally:
                with contextlib.suppress(ValueError):
                    self._message_waiters.remove(fut)
        msg = inbox.popleft()
        conn = self._conn
        if conn is not None and not conn.reading and len(inbox) <= self.config.buffer_limit // 2:
            conn.resume()
        return msg
