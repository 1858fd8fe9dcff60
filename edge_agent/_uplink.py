"""The uplink: spool → central broker over MQTT v5, QoS 1, with presence and control topics.

::

       asyncio loop (agent)                        paho network thread (one per connection)
    ┌──────────────────────────┐   publish()    ┌───────────────────────────┐
    │ Uplink.run               │ ─────────────▶ │ socket, keepalive, PUBACK │
    │   connect / backoff      │ ◀───────────── │ callbacks                 │
    │   sender: spool → window │ call_soon_     └───────────────────────────┘
    │   acks: mark delivered   │ threadsafe
    └──────────────────────────┘

Hand-off: paho callbacks never touch agent state; they post to the loop with
``call_soon_threadsafe``. Reconnects back off exponentially with full jitter, capped at
``backoff_max_s``.

**Session.** The broker keeps a persistent MQTT v5 session for the gateway (clean start off,
Session Expiry Interval ``broker.session_expiry_s``): config and commands published while the
gateway is offline are queued by the broker and delivered on reconnect. Clean start is off
from the very first connection: mosquitto 2.0.11 does not restore, after a broker restart, a
session that was created with clean start (docs/operations.md). The session carries only the
*inbound* side (subscriptions, queued control messages). Telemetry state lives in the spool:
each connection still gets a fresh paho client with empty in-flight state, so paho never
re-sends a batch by itself, and a reconnect replays unacknowledged batches from the spool
only. The broker keeps no state for QoS 1 messages *from* a client, so a resumed session
holds nothing that would be published twice. What can be doubled, as before, is a batch whose
PUBACK was lost with the connection (at most ``inflight_window`` batches per cut, exact
replays with the same ``seq``), and a control message the broker redelivers (DUP) because its
PUBACK was lost: commands are answered once per correlation id.

**Backlog and live data.** At connect time the highest spool id is the *boundary*: batches at
or below it are backlog, newer ones are live. The sender keeps at most ``inflight_window``
batches unacknowledged and fills free slots alternately with the *newest* unsent live batch
and the *oldest* unsent backlog batch (all slots go to one side when the other is empty). So
the backlog is replayed oldest-first in order while fresh data gets at least half of the
uplink: a day-long backlog never delays live data by more than a window.

**Resend.** :meth:`Uplink.resend` takes delivered batches the spool made waiting again (the
``resend`` command): they are published first, before new picks, within the same window, and
their PUBACK is handled like any other (0x10 keeps them, success marks them delivered again).
A reconnect forgets the list: the new session re-reads the waiting batches from the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent._config import BrokerConfig
from edge_agent._errors import UplinkError
from edge_agent._spool import Spool, SpooledBatch
from foundation import BrokerSetupError, configure_client
from telemetry import Death, Topics, encode_message

__all__ = ["ControlMessage", "Uplink", "UplinkStats"]

log: Final = logging.getLogger("edge_agent.uplink")

#: MQTT v5 PUBACK reason code: the broker accepted the message but no subscription matched.
_NO_MATCHING_SUBSCRIBERS: Final = 0x10
_UNROUTED_FIRST_S: Final = 0.2
_UNROUTED_MAX_S: Final = 5.0


class ControlMessage:
    """A message on a control topic (config, command), handed to the agent's loop.

    ``redelivered``: the broker set DUP (it sent this message before and saw no PUBACK).
    """

    __slots__ = ("correlation", "payload", "redelivered", "response_topic", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None,
        correlation: bytes | None,
        *,
        redelivered: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.response_topic = response_topic
        self.correlation = correlation
        self.redelivered = redelivered


class UplinkStats:
    __slots__ = (
        "acked_batches",
        "acked_readings",
        "connects",
        "published_batches",
        "resent_batches",
        "resumed_sessions",
        "state",
        "unrouted_batches",
    )

    def __init__(self) -> None:
        self.state = "down"
        self.connects = 0
        #: Connects where the broker still had the gateway's session (CONNACK session present).
        self.resumed_sessions = 0
        self.published_batches = 0
        self.acked_batches = 0
        self.acked_readings = 0
        #: Delivered batches published again on a ``resend`` request.
        self.resent_batches = 0
        #: PUBACKs with reason 0x10 "No matching subscribers": the broker took the batch and
        #: delivered it to nobody (e.g. ingest's shared subscription not back yet after a
        #: broker restart). Such a batch stays in the spool and is sent again.
        self.unrouted_batches = 0


class _Connection:
    """One paho client and the events its callbacks post to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.failure: str | None = None
        self.client: mqtt.Client | None = None
        self.session_present = False  # written by paho's thread before on_connected is posted

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def on_connected(self, ok: bool, reason: str) -> None:
        if ok:
            self.connected.set()
        else:
            self.failure = reason
            self.closed.set()

    def on_closed(self, reason: str) -> None:
        self.failure = self.failure or reason
        self.closed.set()


class Uplink:
    """Publishes spooled batches and control messages; owns the broker connection.

    ``birth`` builds the retained birth payload (called on every connect), ``on_control``
    receives config and command messages on the agent's loop.
    """

    def __init__(
        self,
        *,
        gateway: str,
        client_id: str,
        broker: BrokerConfig,
        topics: Topics,
        spool: Spool,
        birth: Callable[[], bytes],
        on_control: Callable[[ControlMessage], None],
    ) -> None:
        self.gateway = gateway
        self.client_id = client_id
        self.cfg = broker
        self.topics = topics
        self.spool = spool
        self._birth = birth
        self._on_control = on_control
        self.stats = UplinkStats()
        self._wake = asyncio.Event()
        self._conn: _Connection | None = None
        self._inflight: dict[int, SpooledBatch] = {}
        self._acked: list[SpooledBatch] = []
        #: Batches the broker routed to nobody, oldest first, sent again at ``_retry_at``.
        self._unrouted: list[SpooledBatch] = []
        self._retry_at = 0.0
        self._retry_delay = _UNROUTED_FIRST_S
        #: Delivered batches asked for again, oldest first, published before new picks.
        self._resend: list[SpooledBatch] = []
        self._stopping = False
        self._telemetry_topic = topics.telemetry(gateway)
        self._status_topic = topics.status(gateway)
        # Files are read once, here: a missing CA or password file stops the agent at
        # start-up with the key and the file named, not at the first reconnect.
        self._tls_context: ssl.SSLContext | None = None
        try:
            if broker.tls is not None:
                self._tls_context = broker.tls.ssl_context("broker.tls.")
            self._password = broker.read_password("broker.password_file")
        except BrokerSetupError as exc:
            raise UplinkError(str(exc)) from exc

    # -- public API (agent loop) ---------------------------------------------------------------
    @property
    def connected(self) -> bool:
        c = self._conn
        return c is not None and c.connected.is_set() and not c.closed.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def notify(self) -> None:
        """New batches are in the spool."""
        self._wake.set()

    def resend(self, batches: list[SpooledBatch]) -> None:
        """Publish again batches the spool has made waiting again (:meth:`Spool.redeliver`).

        Not connected: nothing to do here, the next session replays them from the spool.
        """
        if not batches or not self.connected:
            return
        known = {b.id for b in self._resend}
        self._resend.extend(b for b in batches if b.id not in known)
        self._resend.sort(key=lambda b: b.id)
        self._wake.set()

    def publish_control(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> bool:
        """Publish a control-plane message if connected; returns whether it was queued."""
        c = self._conn
        if c is None or c.client is None or not self.connected:
            return False
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        info = c.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def run(self) -> None:
        """Connect, replay and publish until cancelled; reconnect with backoff on loss."""
        delay = self.cfg.backoff_initial_s
        while True:
            conn = _Connection(asyncio.get_running_loop())
            self._conn = conn
            self.stats.state = "connecting"
            try:
                client = self._make_client(conn)
                conn.client = client
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.cfg.session_expiry_s
                client.connect_async(
                    self.cfg.host,
                    self.cfg.port,
                    keepalive=self.cfg.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
                client.loop_start()
                try:
                    async with asyncio.timeout(self.cfg.connect_timeout_s):
                        done = await _first(conn.connected, conn.closed)
                    if done is conn.connected and not conn.closed.is_set():
                        delay = self.cfg.backoff_initial_s
                        await self._session(conn, client)
                    else:
                        log.warning(
                            "uplink connect failed",
                            extra={"broker": self._where(), "reason": conn.failure},
                        )
                except TimeoutError:
                    log.warning("uplink connect timed out", extra={"broker": self._where()})
                finally:
                    await self._teardown(conn, client)
            finally:
                self.stats.state = "down"
                self._inflight.clear()
            if self._stopping:
                return
            delay = min(delay * 2, self.cfg.backoff_max_s)
            await asyncio.sleep(random.uniform(0, delay))

    async def close(self, *, grace_s: float = 3.0) -> None:
        """Clean shutdown while connected: let in-flight batches be acknowledged briefly and
        publish the retained death message (``reason="shutdown"``)."""
        c = self._conn
        self._stopping = True
        if c is None or c.client is None or not self.connected:
            return
        try:
            async with asyncio.timeout(grace_s):
                while self._inflight and self.connected:
                    self._wake.clear()
                    await self._wake.wait()
        except TimeoutError:
            log.warning("shutdown with batches still in flight (they stay in the spool)")
        death = encode_message(Death(gw=self.gateway, ts=time.time_ns(), reason="shutdown"))
        info = c.client.publish(self._status_topic, death, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            try:
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, grace_s), grace_s)
            except (TimeoutError, RuntimeError, ValueError):
                log.warning("death message not acknowledged before shutdown")
        c.client.disconnect()

    # -- connection ------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _make_client(self, conn: _Connection) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        # paho must not reconnect by itself: a lost connection ends this client.
        client.reconnect_delay_set(3600, 3600)
        client.max_inflight_messages_set(self.cfg.inflight_window + 16)
        client.max_queued_messages_set(0)
        death = encode_message(Death(gw=self.gateway, reason="lost"))
        client.will_set(self._status_topic, death, qos=1, retain=True)
        configure_client(client, self.cfg, context=self._tls_context, password=self._password)

        def on_connect(
            _c: mqtt.Client, _u: object, flags: ConnectFlags, rc: ReasonCode, _p: object
        ) -> None:
            conn.session_present = bool(flags.session_present)
            conn.post(conn.on_connected, not rc.is_failure, str(rc))

        def on_connect_fail(_c: mqtt.Client, _u: object) -> None:
            conn.post(conn.on_closed, "connection failed")

        def on_disconnect(
            _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
        ) -> None:
            conn.post(conn.on_closed, str(rc))

        def on_publish(
            _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object
        ) -> None:
            conn.post(self._on_puback, conn, mid, int(rc.value))

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            props = getattr(msg, "properties", None)
            response = getattr(props, "ResponseTopic", None)
            corr = getattr(props, "CorrelationData", None)
            control = ControlMessage(
                msg.topic, bytes(msg.payload), response, corr, redelivered=bool(msg.dup)
            )
            conn.post(self._on_control, control)

        client.on_connect = on_connect
        client.on_connect_fail = on_connect_fail
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        return client

    async def _teardown(self, conn: _Connection, client: mqtt.Client) -> None:
        if not conn.closed.is_set():
            client.disconnect()
        # loop_stop joins paho's thread; it ends within about a second.
        await asyncio.to_thread(client.loop_stop)
        self._conn = None if self._conn is conn else self._conn

    async def _session(self, conn: _Connection, client: mqtt.Client) -> None:
        self.stats.connects += 1
        self.stats.resumed_sessions += conn.session_present
        self.stats.state = "up"
        log.info(
            "uplink connected",
            extra={"broker": self._where(), "session_present": conn.session_present},
        )
        client.publish(self._status_topic, self._birth(), qos=1, retain=True)
        # Subscribing again is harmless when the session was resumed (and needed when it
        # expired). Retained messages (the desired config) only come with a new subscription:
        # a resumed session already delivered them.
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe(
            [
                (self.topics.config_desired(self.gateway), opts),
                (self.topics.command(self.gateway), opts),
            ]
        )
        boundary = self.spool.max_id()
        cursor = 0  # highest id the oldest-first side has handed to paho in this session
        live_turn = True
        window = self.cfg.inflight_window
        loop = asyncio.get_running_loop()
        self._unrouted = []  # a new session re-reads the spool from its start
        self._resend = []
        while not conn.closed.is_set():
            self._apply_acks()
            free = window - len(self._inflight)
            if self._resend and free > 0:
                busy = {b.id for b in self._inflight.values()} | {b.id for b in self._unrouted}
                again = [b for b in self._resend[:free] if b.id not in busy]
                self._resend = self._resend[free:]
                for batch in again:
                    if not self._send(client, conn, batch):
                        break
                    self.stats.resent_batches += 1
                free = window - len(self._inflight)
            if self._unrouted and loop.time() >= self._retry_at and free > 0:
                again, self._unrouted = self._unrouted[:free], self._unrouted[free:]
                for batch in again:
                    if not self._send(client, conn, batch):
                        break
                free = window - len(self._inflight)
            if free > 0 and not self._stopping:
                for batch, oldest_side in self._pick(boundary, cursor, free, live_turn):
                    if not self._send(client, conn, batch):
                        break
                    if oldest_side:
                        cursor = max(cursor, batch.id)
                    live_turn = oldest_side
            self._wake.clear()
            if self._acked or conn.closed.is_set():
                continue
            if self._unrouted:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._retry_at - loop.time())):
                        await _first(self._wake, conn.closed)
            else:
                await _first(self._wake, conn.closed)
        log.warning("uplink lost", extra={"broker": self._where(), "reason": conn.failure})

    def _send(self, client: mqtt.Client, conn: _Connection, batch: SpooledBatch) -> bool:
        """Hand ``batch`` to paho (QoS 1) and track it until its PUBACK; False if paho refused
        (the connection is then treated as lost)."""
        info = client.publish(self._telemetry_topic, batch.payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            conn.on_closed(f"publish failed: {info.rc}")
            return False
        self._inflight[info.mid] = batch
        self.stats.published_batches += 1
        return True

    def _pick(
        self, boundary: int, cursor: int, n: int, live_first: bool
    ) -> list[tuple[SpooledBatch, bool]]:
        """Up to ``n`` unsent batches, alternating the newest live batch (sealed after this
        connection began) and the oldest unsent one. Items are (batch, from_oldest_side)."""
        busy = (
            {b.id for b in self._inflight.values()}
            | {b.id for b in self._unrouted}
            | {b.id for b in self._resend}
        )
        oldest = self.spool.oldest(after_id=cursor, exclude=busy, limit=n)
        live = self.spool.newest(above_id=max(boundary, cursor), exclude=busy, limit=n)
        out: list[tuple[SpooledBatch, bool]] = []
        seen: set[int] = set()
        sides = [(live, False), (oldest, True)]
        if not live_first:
            sides.reverse()
        while len(out) < n and (sides[0][0] or sides[1][0]):
            for side, is_oldest in sides:
                while side and side[0].id in seen:
                    side.pop(0)
                if side and len(out) < n:
                    b = side.pop(0)
                    seen.add(b.id)
                    out.append((b, is_oldest))
        return out

    def _on_puback(self, conn: _Connection, mid: int, reason: int) -> None:
        if conn is not self._conn:
            return
        batch = self._inflight.pop(mid, None)
        if batch is None:
            return  # a control message (birth, config report, response)
        if reason == _NO_MATCHING_SUBSCRIBERS:
            # Taken and delivered to nobody: not delivered. Keep it and send it again,
            # backing off while nobody subscribes (0.2 s doubling to 5 s).
            if not self._unrouted:
                self._retry_at = asyncio.get_running_loop().time() + self._retry_delay
                if self._retry_delay == _UNROUTED_FIRST_S:
                    log.warning(
                        "broker has no subscriber for telemetry (PUBACK 0x10): batches stay "
                        "in the spool and are sent again", extra={"seq": batch.seq},
                    )
                self._retry_delay = min(self._retry_delay * 2, _UNROUTED_MAX_S)
            self._unrouted.append(batch)
            self._unrouted.sort(key=lambda b: b.id)
            self.stats.unrouted_batches += 1
        elif reason < 0x80:
            self._acked.append(batch)
            self._retry_delay = _UNROUTED_FIRST_S
        else:
            log.warning("broker refused a batch", extra={"seq": batch.seq, "reason": reason})
        self._wake.set()

    def _apply_acks(self) -> None:
        acked, self._acked = self._acked, []
        if not acked:
            return
        self.spool.delivered([b.id for b in acked])
        self.stats.acked_batches += len(acked)
        self.stats.acked_readings += sum(b.readings for b in acked)


async def _first(*events: asyncio.Event) -> asyncio.Event:
    """Wait until one of ``events`` is set; return it."""
    for ev in events:
        if ev.is_set():
            return ev
    waiters = {asyncio.ensure_future(ev.wait()): ev for ev in events}
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return waiters[next(iter(done))]
