"""The worker's MQTT session: one paho client, its network thread, and the hand-off to asyncio.

::

    paho network thread                          event loop (the worker)
    ───────────────────                          ───────────────────────
    on_message ─▶ inbox (deque) ───────────────▶ inbox.popleft() ... make_room()
                  past R messages: stop reading   wait_for_messages(timeout)
                  the socket ≤ keepalive/2
    on_disconnect: epoch += 1 ─┐
                               ├─ ack lock ────── acknowledge(release): PUBACKs of the
    PUBACK to the broker ◀─────┘                  current epoch only
    on_publish(mid) ─────────────────────────────▶ on_published(mid)  (call_soon_threadsafe)

Connect: MQTT v5, clean start off, session expiry and Receive Maximum R announced in CONNECT,
manual acknowledgement, shared subscription QoS 1; paho reconnects by itself. A connection
loss bumps the epoch: every message not acknowledged by then is redelivered by the broker,
so acks of the old epoch are never sent (their packet ids may name other messages now).

This module is the only one that knows paho: moving the worker to the shared asyncio
session layer (:mod:`foundation.mqtt`) replaces this module behind the same few methods.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from foundation import BrokerSetupError, configure_client
from ingest._config import MqttConfig
from ingest._errors import BrokerError, ConfigError
from ingest._metrics import IngestMetrics

__all__ = ["Inbound", "MqttSession"]

log = logging.getLogger("ingest")

_CONNECT_TIMEOUT = 30.0
#: CONNACK reason codes that reconnecting cannot fix: protocol version, client id, auth.
_FATAL_REFUSALS = frozenset({0x84, 0x85, 0x86, 0x87, 0x8C})


@dataclass(slots=True)
class Inbound:
    """A message as the network thread hands it over; ``epoch`` names its connection."""

    epoch: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    dup: bool


class MqttSession:
    """A persistent, manually acknowledged shared subscription with Receive Maximum.

    Use from the event loop: :meth:`connect` (returns once subscribed), then take messages
    from :attr:`inbox`, acknowledge with :meth:`acknowledge`, publish with :meth:`publish`,
    and :meth:`close`. :meth:`stop_accepting` is safe from any thread.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        subscription: str,
        metrics: IngestMetrics,
        on_published: Callable[[int], None],
    ) -> None:
        self._config = config
        self._subscription = subscription
        self._metrics = metrics
        self._on_published = on_published
        self._worker = config.client_id
        # Certificates and the password file are read once, before anything connects.
        self._tls_context: ssl.SSLContext | None = None
        try:
            if config.tls is not None:
                self._tls_context = config.tls.ssl_context("mqtt.tls.")
            self._password = config.read_password("mqtt.password_file")
        except BrokerSetupError as exc:
            raise ConfigError(str(exc)) from exc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        # Shared with the network thread (plain attributes and a deque: atomic under the GIL).
        #: Messages received and not yet taken, in receive order.
        self.inbox: collections.deque[Inbound] = collections.deque()
        # Flow control of the network thread: past the high-water mark it stops reading the
        # socket until the event loop has taken the inbox below the low-water mark.
        self._high_water = config.receive_maximum
        self._low_water = max(1, config.receive_maximum // 2)
        self._max_pause = config.keepalive / 2
        self._room = threading.Event()
        self._accepting = True
        self._idle = False
        self._epoch = 0
        self._ack_lock = threading.Lock()
        # event-loop state
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._connect_error: BrokerError | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and subscribe; :class:`BrokerError` if refused or not done in 30 s."""
        self._loop = asyncio.get_running_loop()
        m = self._config
        client = self._client = self._make_client()
        try:
            client.connect_async(
                m.host,
                m.port,
                keepalive=m.keepalive,
                clean_start=False,
                properties=self._connect_properties(),
            )
            rc = client.loop_start()
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {m.host}:{m.port}: {exc!r}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"cannot start the MQTT loop: {mqtt.error_string(rc)}")
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await self._subscribed.wait()
        except TimeoutError as exc:
            raise BrokerError(
                f"no subscription on {m.host}:{m.port} within {_CONNECT_TIMEOUT}s"
                + (f": {self._connect_error}" if self._connect_error else "")
            ) from exc
        if self._connect_error is not None:
            raise self._connect_error

    async def close(self) -> None:
        """Disconnect (the acks sent so far go out first) and stop the network thread."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(self._disconnect, client)

    @staticmethod
    def _disconnect(client: mqtt.Client) -> None:
        # The acks queued before DISCONNECT are written first (one ordered out-queue).
        client.disconnect()
        client.loop_stop()

    def stop_accepting(self) -> None:
        """Take no more messages (they stay unacknowledged with the broker); any thread."""
        self._accepting = False
        self._room.set()

    # -- taking messages (event loop) -------------------------------------------------------
    def make_room(self) -> None:
        """Let a paused network thread read again once the inbox is below the low-water mark."""
        if not self._room.is_set() and len(self.inbox) < self._low_water:
            self._room.set()

    def wake(self) -> None:
        """End a :meth:`wait_for_messages` now (the worker is stopping)."""
        self._wake.set()

    async def wait_for_messages(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Return when a message is in the inbox, after ``timeout`` s, or on :meth:`wake`."""
        self._wake.clear()
        self._idle = True
        if self.inbox:  # raced with the network thread
            self._idle = False
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._idle = False

    # -- acks and publishing (event loop) ---------------------------------------------------
    def acknowledge(self, release: Callable[[int], Iterable[tuple[int, int]]]) -> None:
        """Send a PUBACK for each ``(mid, qos)`` that ``release(epoch)`` returns for the
        current connection epoch; the epoch cannot change meanwhile."""
        client = self._client
        with self._ack_lock:
            for mid, qos in release(self._epoch):
                if client is not None:
                    client.ack(mid, qos)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; return the packet id that ``on_published`` will report."""
        if self._client is None:
            raise BrokerError("the session is closed")
        return self._client.publish(topic, payload, qos=1).mid

    # -- paho -------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        m = self._config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        configure_client(client, m, context=self._tls_context, password=self._password)
        client.reconnect_delay_set(m.reconnect_min_delay, m.reconnect_max_delay)
        # Dead-letter records are rare; let them all be in flight rather than queue behind 20.
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._config.session_expiry
        props.ReceiveMaximum = self._config.receive_maximum
        return props

    def _call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop from the network thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closing: nothing left to tell
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker refused the connection",
                extra={"worker": self._worker, "reason": str(reason_code)},
            )
            if reason_code.value in _FATAL_REFUSALS:
                self._call(self._fail_connect, BrokerError(f"broker refused: {reason_code}"))
            return
        client.subscribe(self._subscription, options=SubscribeOptions(qos=1, noLocal=False))
        self._metrics.connected.set(1)
        self._call(self._connected.set)
        log.info(
            "connected to broker",
            extra={"worker": self._worker, "session_present": flags.session_present},
        )

    def _fail_connect(self, error: BrokerError) -> None:
        self._connect_error = error
        self._subscribed.set()

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self._call(
                self._fail_connect,
                BrokerError(f"subscription to {self._subscription} refused: {failed}"),
            )
            return
        self._call(self._subscribed.set)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        # Every message not acknowledged so far will be redelivered: stop acking them.
        with self._ack_lock:
            self._epoch += 1
        self._metrics.connected.set(0)
        self._call(self._connected.clear)
        if self._accepting:
            log.warning(
                "disconnected from broker; paho reconnects",
                extra={"worker": self._worker, "reason": str(reason_code)},
            )

    def _on_message(self, client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # shutting down: leave it unacknowledged, the broker keeps it
        inbox = self.inbox
        inbox.append(
            Inbound(self._epoch, msg.mid, msg.qos, msg.topic, bytes(msg.payload), msg.dup)
        )
        if self._idle:
            self._idle = False
            self._call(self._wake.set)
        if len(inbox) >= self._high_water:
            # Receive Maximum alone is not a bound: mosquitto 2.0.11 overshoots it once acks
            # flow (docs/ingest.md). Stop reading the socket so TCP pushes back on the broker.
            # Never longer than keepalive/2, so the connection stays alive; our PUBACKs wait.
            self._room.clear()
            if len(inbox) >= self._high_water and self._accepting:
                self._room.wait(self._max_pause)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        self._call(self._on_published, mid)
