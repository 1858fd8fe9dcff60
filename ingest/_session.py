"""The worker's MQTT session: the shared layer (:mod:`foundation.mqtt`) behind the few calls
the worker makes. No paho here: the layer drives paho inside the event loop.

::

    event loop (one thread; no network thread, no hand-off between threads)
    ──────────────────────────────────────────────────────────────────────────────────────
    foundation.mqtt.MqttSession      task ingest[<id>].connection (the layer's): connect,
      │                              reconnect with foundation.Backoff, $share subscription
      │                              made again on every connect, Receive Maximum R
      ▼ PUBLISH
    layer buffer  ≤ R/2 messages; full: the layer stops reading the socket (≤ keepalive/2)
      │ task ingest[<id>].inbox: hands messages over while the inbox has room
      ▼
    inbox (deque) ≤ R/2 messages ─▶ batch loop: inbox.popleft(), make_room(),
                                    wait_for_messages(timeout), wake()
    PUBACK ◀── Message.ack() ◀───── acknowledge(ledger.release): the Message of every
               (layer: receive        (mid) the ledger releases, if it came on the live
                order, live            connection
                connection only)
    publish() ─▶ publish_nowait ─▶ PUBACK reason checked (dead-letter notifications: they
                                   hold no ack; 0x10 and >= 0x80 count as not delivered)

Connect: MQTT v5, clean start off, session expiry and Receive Maximum R in CONNECT, manual
acks, a stable client id, the shared subscription at QoS 1. ``resubscribe="always"``: the
subscription is made again on every connect, because mosquitto 2.0.11 forgets the shared
subscriptions of offline persistent sessions when it restarts (yet reports the session
present). The layer reconnects by itself with ``Backoff(reconnect_min_delay,
reconnect_max_delay)``.

Who decides what about acks (one job each, no decision taken twice):

- **The ack ledger decides when** (``_ledger.py``): a message is done once InfluxDB confirmed
  all its points; :meth:`AckLedger.release` pops done messages from the front only, so they
  come out in receive order, and drops those of an older connection. It counts no epochs of
  its own: ``Message.epoch`` and ``MqttSession.epoch`` are the layer's.
- **The layer sends** (``Message.ack()``): it owns the packet ids, the order of PUBACKs on a
  connection, and the one check that matters for correctness: an ack for a message whose
  connection is gone is never sent (the broker redelivers it; its packet id may name another
  message now). Because the ledger already releases in receive order, the layer's own
  ordering never holds a PUBACK back; it is the safety net, not a second decision.
- **This adapter only maps** a released ``mid`` back to its :class:`~foundation.mqtt.Message`:
  ``_live`` holds the messages handed over on the live connection, by packet id, and is
  emptied when that connection is lost. Packet ids are unique among a connection's
  unacknowledged messages, and the broker reuses one only after our PUBACK, which follows
  the pop. A message not found there (older connection, QoS 0) gets no ack: the broker
  redelivers it.

The alternative, acking each message the moment its last part is done and letting the layer
order the PUBACKs, would need the ledger to report single entries (it reports a released
prefix) and would still keep two receive-order queues; this way the ledger stays the one
place that decides, and the epoch check stays in the layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

from foundation import Backoff, BrokerSetupError
from foundation.mqtt import (
    NO_MATCHING_SUBSCRIBERS,
    Message,
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttSubscribeError,
    SessionConfig,
    SessionStatus,
)
from foundation.mqtt import MqttSession as SharedSession
from ingest._config import MqttConfig
from ingest._errors import BrokerError, ConfigError
from ingest._inbox import Inbox
from ingest._metrics import IngestMetrics

__all__ = ["Inbound", "MqttSession"]

log = logging.getLogger("ingest")

#: A received message as the worker takes it: topic, payload, qos, dup, mid, epoch.
Inbound: TypeAlias = Message

_CONNECT_TIMEOUT: Final = 30.0
#: CONNACK reason codes that reconnecting cannot fix: protocol version, client id, auth.
_FATAL_REFUSALS: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8C})
#: At most one "notification not delivered" warning per this many seconds (with a count).
_WARN_EVERY_S: Final = 60.0


class MqttSession(Inbox):
    """A persistent, manually acknowledged shared subscription with Receive Maximum.

    Use from the event loop: :meth:`connect` (returns once subscribed), then take messages
    from :attr:`inbox`, acknowledge with :meth:`acknowledge`, publish with :meth:`publish`,
    and :meth:`close`. :meth:`stop_accepting` is safe from any thread.
    """

    def __init__(self, config: MqttConfig, *, subscription: str, metrics: IngestMetrics) -> None:
        self._subscription = subscription
        self._metrics = metrics
        self._worker = config.client_id
        self._name = f"ingest[{config.client_id}]"
        self._url = f"{config.host}:{config.port}"
        r = config.receive_maximum
        try:
            # Fail at start with the key named; the layer reads the password file again at
            # every connect (a rotated password is picked up on the next one).
            ssl_context = None if config.tls is None else config.tls.ssl_context("mqtt.tls.")
            config.read_password("mqtt.password_file")
            self._backoff = Backoff(
                initial=float(config.reconnect_min_delay),
                maximum=float(max(config.reconnect_min_delay, config.reconnect_max_delay)),
            )
            self._layer = SharedSession(
                SessionConfig(
                    host=config.host,
                    port=config.port,
                    client_id=config.client_id,
                    access=config,
                    ssl_context=ssl_context,
                    version="5",
                    keepalive_s=config.keepalive,
                    clean_start=False,
                    session_expiry_s=config.session_expiry,
                    manual_ack=True,
                    receive_maximum=r,
                    # R/2 in the layer's buffer + R/2 in the inbox: at most R messages wait.
                    max_buffered=max(1, r // 2),
                    max_inflight=r,
                    resubscribe="always",
                    backoff=self._backoff,
                    name=self._name,
                ),
                on_connect=self._on_connect,
                on_disconnect=self._on_disconnect,
            )
        except (BrokerSetupError, MqttConfigError) as exc:
            raise ConfigError(str(exc)) from exc
        super().__init__(r)
        #: Messages handed over on the live connection and not acknowledged yet, by mid.
        self._live: dict[int, Message] = {}
        self._accepting = True
        self._subscribed = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._pump: asyncio.Task[None] | None = None
        self._undelivered = 0
        self._warned_at = float("-inf")

    @property
    def connected(self) -> bool:
        return self._layer.connected

    @property
    def status(self) -> SessionStatus:
        """The layer's view: connected, epoch, reconnects, last_error, buffered..."""
        return self._layer.status

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and subscribe; return once subscribed.

        A refused TCP connection, a timeout or a connection lost before the SUBACK is tried
        again with the backoff for up to 30 s (the broker may be restarting, a supervisor
        may start the worker first). :class:`BrokerError` at once when the broker refuses
        the client (bad credentials, not authorised, client id) or the subscription;
        :class:`ConfigError` when a certificate or the password file cannot be read.
        """
        attempt = 0
        last: MqttError | None = None
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                while True:
                    try:
                        await self._open()
                        break
                    except MqttConnectError as exc:
                        if exc.reason_code in _FATAL_REFUSALS:
                            raise BrokerError(f"broker refused the connection: {exc}") from exc
                        last = exc
                    except MqttDisconnected as exc:
                        last = exc
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                    log.warning(
                        "cannot subscribe at the broker yet; retrying",
                        extra={"worker": self._worker, "error": str(last), "retry_in_s": delay},
                    )
                    await asyncio.sleep(delay)
        except TimeoutError as exc:
            raise BrokerError(
                f"no subscription on {self._url} within {_CONNECT_TIMEOUT:.0f}s"
                + (f": {last}" if last is not None else "")
            ) from exc
        except MqttConfigError as exc:
            raise ConfigError(str(exc)) from exc
        self._subscribed = True
        self._metrics.connected.set(1)
        status = self._layer.status
        log.info(
            "connected to broker",
            extra={"worker": self._worker, "session_present": status.session_present},
        )

    async def _open(self) -> None:
        """One attempt: enter the layer's session, start the hand-off, subscribe.

        The hand-off runs before the SUBACK is awaited: a persistent session with a backlog
        gets its queued messages right after CONNACK, ahead of the SUBACK, and a layer that
        stopped reading at its buffer limit would never read the SUBACK.
        """
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self._layer)
                group = await stack.enter_async_context(asyncio.TaskGroup())
                pump = group.create_task(self._hand_over(), name=f"{self._name}.inbox")
                stack.callback(pump.cancel)  # before the group exits: it awaits the task
                try:
                    await self._layer.subscribe(self._subscription, qos=1)
                except MqttSubscribeError as exc:
                    raise BrokerError(
                        f"subscription to {self._subscription} refused: {exc}"
                    ) from exc
                self._pump = pump
                self._stack = stack.pop_all()
        except BaseException:
            # Taken on a connection that is gone: the broker redelivers them.
            self.inbox.clear()
            self._live.clear()
            raise

    async def close(self) -> None:
        """Stop the hand-off, then leave the session: DISCONNECT goes out after the acks
        sent so far (one ordered out-queue); the layer's task is cancelled and awaited."""
        self._accepting = False
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._pump = None
            self._live.clear()
            self._metrics.connected.set(0)

    def stop_accepting(self) -> None:
        """Take no more messages (they stay unacknowledged with the broker). Safe from any
        thread: only a flag, which the hand-off reads at its next message or on :meth:`wake`."""
        self._accepting = False

    # -- taking messages ------------------------------------------------------------------
    async def _hand_over(self) -> None:
        """Move received messages from the layer into :attr:`inbox` while it has room."""
        layer, inbox, live = self._layer, self.inbox, self._live
        high = self._high_water
        async for msg in layer.messages():
            if not self._accepting:
                return  # stopping: this message and the rest stay with the broker
            self._put(msg)
            # Only an ack of the live connection can be sent (the epoch changes at CONNACK,
            # before the messages that follow it are delivered).
            if msg.qos and msg.epoch == layer.epoch and layer.connected:
                live[msg.mid] = msg
            # Until connect() returns nobody takes from the inbox, and nothing is acked yet,
            # so the broker's Receive Maximum (honoured exactly while no acks flow) bounds it.
            while self._subscribed and len(inbox) >= high and self._accepting:
                await self._wait_for_room()

    # -- acks and publishing --------------------------------------------------------------
    async def acknowledge(self, release: Callable[[int], Iterable[tuple[int, int]]]) -> None:
        """Acknowledge each ``(mid, qos)`` that ``release(epoch)`` returns for the current
        connection epoch, in that order; the layer sends a PUBACK only while the message's
        connection is alive."""
        live = self._live
        for mid, _qos in release(self._layer.epoch):
            msg = live.pop(mid, None)
            if msg is not None:
                await msg.ack()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish a notification at QoS 1, best effort: it holds no ack. Its PUBACK reason
        is checked when it comes: 0x10 (no subscriber), >= 0x80 (refused) or a connection
        lost first count as not delivered (logged, with a count). :class:`BrokerError` when
        it cannot be sent now (not connected, the publish window full)."""
        try:
            fut = self._layer.publish_nowait(topic, payload, qos=1)
        except MqttError as exc:
            raise BrokerError(f"not published to {topic}: {exc}") from exc
        fut.add_done_callback(functools.partial(self._answered, topic))

    def _answered(self, topic: str, fut: asyncio.Future[int]) -> None:
        if fut.cancelled():
            return
        error = fut.exception()
        if error is None:
            code = fut.result()
            if code == 0:
                return
            kind, why = (
                ("no_subscriber", "no subscriber (PUBACK 0x10)")
                if code == NO_MATCHING_SUBSCRIBERS
                else ("refused", f"refused (PUBACK 0x{code:02x})")
            )
        elif self._accepting:
            kind, why = "connection_lost", f"connection lost before the PUBACK ({error})"
        else:
            return  # closing: the session ended under it
        self._undelivered += 1
        self._metrics.notifications_undelivered.labels(kind).inc()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "notification not delivered",
                extra={"worker": self._worker, "topic": topic, "reason": why,
                       "undelivered_total": self._undelivered},
            )

    # -- the layer's hooks (in the event loop) ---------------------------------------------
    def _on_connect(self, status: SessionStatus) -> None:
        if not self._subscribed:
            return  # the first connect: connect() reports it once subscribed
        self._metrics.connected.set(1)
        log.info(
            "reconnected to broker",
            extra={"worker": self._worker, "epoch": status.epoch,
                   "session_present": status.session_present, "reconnects": status.reconnects},
        )

    def _on_disconnect(self, status: SessionStatus) -> None:
        # Every message not acknowledged so far will be redelivered: none of them is acked.
        self._live.clear()
        self._metrics.connected.set(0)
        if self._accepting and self._subscribed:
            log.warning(
                "disconnected from broker; reconnecting",
                extra={"worker": self._worker, "error": str(status.last_error)},
            )
