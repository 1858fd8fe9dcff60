"""The API's own broker subscription: paho's network thread, handed over to the event loop.

::

    paho network thread                    event loop
    ───────────────────                    ──────────
    on_message ─▶ inbox (deque, bounded) ─▶ drain(): handler(topic, payload) for each
                  schedule drain once         (decode, update state, alerts, push)
                  (call_soon_threadsafe)

The API subscribes without a persistent session (clean start): live state is a cache, and a
restarted API warms it from InfluxDB and the retained status messages instead. Telemetry is
taken at QoS 0 (a dropped reading is replaced by the next one), status/config at QoS 1.
paho reconnects by itself with a capped backoff; on every connect the subscriptions are made
again. Answers to the API's own commands (gap repair's ``resend``) come on
``{root}/v1/+/cmd/response/{client id}``, subscribed when a response handler is set, and go
to that handler with their correlation data. Credentials and TLS (``mqtt_tls_*``, client
certificate) are set up by :func:`foundation._broker.configure_client`, as for every other
client of the platform.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from api._errors import ConfigError, UpstreamUnavailable
from api._metrics import ApiMetrics
from api._settings import ApiSettings
from foundation import BrokerSetupError, configure_client
from telemetry import TopicKind, Topics

__all__ = ["BrokerLink"]

log = logging.getLogger("api.broker")

Handler = Callable[[str, bytes], None]
#: (topic, correlation data or None, payload) of an answer to one of the API's commands.
ResponseHandler = Callable[[str, bytes | None, bytes], None]


class BrokerLink:
    """Subscribes to telemetry, status, health and reported config of every gateway."""

    def __init__(self, settings: ApiSettings, handler: Handler, metrics: ApiMetrics) -> None:
        self._settings = settings
        self._handler = handler
        self._metrics = metrics
        self.topics = Topics(settings.topic_root)
        self._inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._max = settings.mqtt_inbox
        self._lock = threading.Lock()
        self._scheduled = False
        self._responses: ResponseHandler | None = None
        #: Where gateways answer this API's commands.
        self.client_id = settings.mqtt_client_id
        # mqtt_client_id is validated with the gateway id pattern: a valid topic level.
        self._response_filter = (
            f"{self.topics.all_gateways(TopicKind.COMMAND_RESPONSE)}/{settings.mqtt_client_id}"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self.connected = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5,
        )
        # Certificates and the password file are read here, once: a missing file stops the
        # API at start with the setting named.
        access = settings.mqtt_access
        try:
            configure_client(self._client, access)
        except BrokerSetupError as exc:
            raise ConfigError(str(exc)) from exc
        self.tls = access.tls is not None
        self._client.reconnect_delay_set(1, 30)
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def on_response(self, handler: ResponseHandler) -> None:
        """Receive answers to this API's commands (set before entering)."""
        self._responses = handler

    def response_topic(self, gateway: str) -> str:
        return self.topics.command_response(gateway, self.client_id)

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(
            self._settings.mqtt_host, self._settings.mqtt_port, keepalive=30, clean_start=True
        )
        self._client.loop_start()
        try:
            async with asyncio.timeout(self._settings.mqtt_connect_timeout_s):
                await self._connected.wait()
        except TimeoutError:
            log.warning(
                "broker not reachable yet; serving and retrying in the background",
                extra={
                    "host": self._settings.mqtt_host,
                    "port": self._settings.mqtt_port,
                    "tls": self.tls,
                },
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._metrics.mqtt_connected.set(0)

    # -- paho thread ------------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
        _props: Any,
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection", extra={"reason": str(reason)})
            return
        t = self.topics
        subscriptions = [
            (t.all_gateways(TopicKind.STATUS), 1),
            (t.all_gateways(TopicKind.CONFIG_REPORTED), 1),
            (t.all_gateways(TopicKind.TELEMETRY), 0),
            (t.all_gateways(TopicKind.HEALTH), 0),
        ]
        if self._responses is not None:
            subscriptions.append((self._response_filter, 1))
        client.subscribe(subscriptions)
        self.connected = True
        self._metrics.mqtt_connected.set(1)
        log.info("subscribed to the broker", extra={"root": t.root, "tls": self.tls})
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
        _props: Any,
    ) -> None:
        self.connected = False
        self._metrics.mqtt_connected.set(0)
        log.warning("broker connection lost", extra={"reason": str(reason)})

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._responses is not None and mqtt.topic_matches_sub(
            self._response_filter, msg.topic
        ):
            corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(
                    self._responses, msg.topic, corr, bytes(msg.payload)
                )
            return
        if len(self._inbox) >= self._max:
            self._metrics.mqtt_dropped.inc()
            return
        self._inbox.append((msg.topic, bytes(msg.payload)))
        with self._lock:
            if self._scheduled or self._loop is None:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    # -- event loop -------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        inbox, handler = self._inbox, self._handler
        while inbox:
            topic, payload = inbox.popleft()
            handler(topic, payload)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
        wait_s: float = 10.0, response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Publish and wait up to ``wait_s`` for the broker's acknowledgement (MQTT v5
        request/response: ``response_topic`` and ``correlation`` data, optional)."""
        if not self.connected:
            raise UpstreamUnavailable("not connected to the broker")
        props = None
        if response_topic is not None or correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        try:
            await asyncio.to_thread(info.wait_for_publish, wait_s)
        except (RuntimeError, ValueError) as exc:
            raise UpstreamUnavailable(f"broker did not accept the message: {exc}") from exc
        if not info.is_published():
            raise UpstreamUnavailable("broker did not acknowledge the message in time")
