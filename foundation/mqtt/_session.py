"""The asyncio MQTT session: paho's protocol engine driven inside the event loop.

::

    event loop thread (everything below runs here; no paho thread, no hand-off)
    ──────────────────────────────────────────────────────────────────────────────────────
    task {name}.connection                                  (this module: MqttSession._run)
      connect ── _connect.connect(): paho connect() in the default executor, then the socket
        │        is handed to the loop (_connection.Connection: add_reader / add_writer /
        │        a 1 s loop_misc timer)
        ├─ CONNACK ─▶ epoch += 1 ─▶ birth ─▶ restore subscriptions ─▶ on_connect ─▶ connected
        └─ lost ─▶ in-flight publishes fail (MqttDisconnected), pending acks are forgotten,
                   on_disconnect ─▶ next address / Backoff.delay(attempt) ─▶ connect again
                   (fresh paho client)

    publish() / publish_nowait() ─▶ window check ─▶ Connection.publish ◀── PUBACK reason code
    messages()  ◀── inbox (at max_buffered the connection stops reading the socket) ◀── PUBLISH
    Message.ack() ─▶ ack ledger of its connection, released in receive order ─▶ PUBACK

The rooms of the layer: this module (lifecycle, reconnect and failover, the publish window,
remembered subscriptions, the inbox); ``_connection.py`` (one paho client and socket: the
hand-off to the loop, backpressure, in-flight futures, the ack ledger, and why acks belong
to a connection); ``_readahead.py`` (one socket read for paho's many small ones);
``_connect.py`` (opening a connection, MQTT 5 vs 3.1.1); ``_message.py`` (:class:`Message`);
``_waiters.py``; ``_config.py`` and ``_errors.py``.

Why paho in the loop and not aiomqtt (measured with ``bench/mqtt_session.py``, see
``docs/mqtt-session.md``): aiomqtt 2.5.1 drops the PUBACK reason code (0x10 is invisible),
has no manual ack, no DUP flag, discards messages when its queue is full and does not
reconnect; its publish path is also slower at the fleet's shape. It drives paho exactly as
this layer does (add_reader / add_writer / a misc timer), so the layer keeps that design
and adds the semantics.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Literal, Self

from paho.mqtt.properties import Properties

from foundation import BrokerSetupError
from foundation.mqtt._config import Outgoing, SessionConfig, SessionStatus
from foundation.mqtt._connect import connect
from foundation.mqtt._connection import Connection
from foundation.mqtt._errors import (
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttReentrantError,
    MqttWindowFull,
)
from foundation.mqtt._failover import Failover
from foundation.mqtt._message import Message, MessageIterator
from foundation.mqtt._subscriptions import Subscription, Subscriptions
from foundation.mqtt._waiters import Waiters

__all__ = ["Message", "MqttSession", "StatusHook"]

log = logging.getLogger("foundation.mqtt")

#: Called in the event loop with a status snapshot after every connect / connection loss.
StatusHook = Callable[[SessionStatus], None]


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


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
        self._subscriptions = Subscriptions(v5=self._v5, label=config.label)
        self._epoch = 0
        self._reconnects = 0
        self._failures = 0
        self._losses = 0
        self._session_present = False
        self._last_error: MqttError | None = None
        self._running = False
        self._closing = False
        self._aborted = False
        self._conn: Connection | None = None
        self._inbox: deque[Message] = deque()
        self._buffer_limit = config.buffer_limit
        self._message_waiters = Waiters()
        self._slot_waiters = Waiters()
        self._state_waiters = Waiters()
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failover = Failover(config)

    # -- state ----------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise MqttDisconnected("the session is not running")
        return self._loop

    @property
    def address(self) -> tuple[str, int]:
        """The broker address (host, port) the session is connected or connecting to."""
        return self._failover.address

    @property
    def url(self) -> str:
        return self._failover.url

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
            await self._state_waiters.wait(self.loop)

    async def wait_disconnected(self) -> None:
        """Return once the connection is lost or the session ends."""
        while self.connected and not self._closing:
            await self._state_waiters.wait(self.loop)

    def _notify(self) -> None:
        self._state_waiters.wake_all()

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
        self._message_waiters.wake_all()
        self._slot_waiters.wake_all()
        self._notify()

    # -- the connection task --------------------------------------------------------------
    async def _run(self) -> None:
        first = self._first
        assert first is not None
        failover = self._failover
        failover.start()
        try:
            while not self._stopping():
                try:
                    conn = await connect(self, failover.address, self._ssl)
                except (MqttConnectError, MqttConfigError) as exc:
                    self._failures += 1
                    self._last_error = exc
                    # Several addresses: try the next at once until a whole round failed.
                    if not failover.connect_failed(exc):
                        continue
                    if not first.done():
                        first.set_exception(exc)
                        return
                    await asyncio.sleep(failover.retry_delay(exc))
                    continue
                failover.connected()
                await self._established(conn)
                if not first.done():
                    first.set_result(None)
                error = await conn.lost
                self._lost(conn, error)
                if self._stopping():
                    return
                await asyncio.sleep(failover.lost(error.reason))
        finally:
            conn_ = self._conn
            if conn_ is not None:
                conn_.kill("session closed")
                self._lost(conn_, MqttDisconnected("session closed"))

    def connack(self, conn: Connection, session_present: bool) -> None:
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

    async def _established(self, conn: Connection) -> None:
        cfg = self.config
        if not self._session_present or cfg.resubscribe == "always":
            error = await self._subscriptions.restore(conn, cfg.connect_timeout_s)
            if error is not None:
                self._last_error = error
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

    def _lost(self, conn: Connection, error: MqttDisconnected) -> None:
        conn.fail_pending(error)
        if self._conn is conn:
            self._conn = None
        self._losses += 1
        if not self._closing:
            self._last_error = error
        self._slot_waiters.wake_all()
        self._notify()
        if self._on_disconnect_hook is not None:
            self._on_disconnect_hook(self.status)

    # -- publishing -----------------------------------------------------------------------
    def _live(self) -> Connection:
        conn = self._conn
        if conn is None or conn.lost.done() or self._closing:
            raise MqttDisconnected("not connected")
        return conn

    def _send(self, conn: Connection, out: Outgoing) -> asyncio.Future[int]:
        return conn.publish(out.topic, out.payload, out.qos, out.retain, out.properties)

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
        conn = self._conn  # _live(), inlined: the fleet's per-message path
        if conn is None or self._closing or conn.lost.done():
            raise MqttDisconnected("not connected")
        if qos and len(conn.inflight) >= conn.window:
            raise MqttWindowFull(f"{len(conn.inflight)} publishes wait for their PUBACK")
        return conn.publish(topic, payload, qos, retain, properties)

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
                await self._slot_waiters.wait(self.loop)
        return await self.publish_nowait(
            topic, payload, qos=qos, retain=retain, properties=properties
        )

    def slot_freed(self) -> None:
        self._slot_waiters.wake_one()

    # -- subscribing ----------------------------------------------------------------------
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
        sub = Subscription(topic, qos, no_local, retain_as_published, retain_handling)
        self._subscriptions.remember(sub)
        return await self._subscriptions.send(self._live(), sub)

    async def unsubscribe(self, topic: str) -> None:
        """Forget a subscription and, when connected, end it at the broker."""
        self._subscriptions.forget(topic)
        conn = self._conn
        if conn is None or conn.lost.done():
            return
        await conn.unsubscribe(topic)

    # -- receiving ------------------------------------------------------------------------
    def messages(self) -> AsyncIterator[Message]:
        """Received messages, across reconnects, until the session exits. Meant for one
        consumer; ``max_buffered`` of them wait at most (then reading pauses)."""
        return MessageIterator(self.next_message)

    def deliver(self, msg: Message, conn: Connection) -> None:
        inbox = self._inbox
        inbox.append(msg)
        self._message_waiters.wake_all()
        if len(inbox) >= self._buffer_limit:
            conn.pause()

    async def next_message(self) -> Message:
        inbox = self._inbox
        while not inbox:
            if not self._running or self._closing:
                raise StopAsyncIteration
            await self._message_waiters.wait(self.loop)
        msg = inbox.popleft()
        conn = self._conn
        if conn is not None and not conn.reading and len(inbox) <= self._buffer_limit // 2:
            conn.resume()
        return msg
