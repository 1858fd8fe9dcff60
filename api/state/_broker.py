"""The API's own broker subscription, on the platform's one session layer (``foundation.mqtt``).

::

    event loop (no thread, no hand-off: the MQTT engine runs inside the loop, in the session)
    ──────────────────────────────────────────────────────────────────────────────
    task api[<id>].broker
      async with MqttSession ─ first connect fails: Backoff, enter again (serving meanwhile)
        subscribe status, config/reported (QoS 1), telemetry, health (QoS 0),
                  cmd/response/<id> (QoS 1, when a response handler is set)
        async for msg in session.messages():
            cmd/response/<id> ─▶ response handler(topic, correlation data, payload)
            anything else     ─▶ handler(topic, payload)  (decode, state, alerts, push)
    task api[<id>].mqtt.connection (the session's): reconnect with the Backoff, subscriptions
                                   made again (clean start: the broker kept nothing)
    publish() ─▶ session.publish ─▶ PUBACK reason code (>= 0x80: refused)

The API subscribes without a persistent session (clean start): live state is a cache, and a
restarted API warms it from InfluxDB and the retained status messages instead (the broker
sends them again on every subscribe, so a reconnect refreshes the inventory). Telemetry is
taken at QoS 0 (a dropped reading is replaced by the next one), status/config at QoS 1.

The layer fails fast when the *first* connect of a session fails; the API serves without the
broker instead (``/readyz`` says so) and enters the session again with the same
:class:`foundation.Backoff` the session uses for its reconnects. After that the session
reconnects by itself. When the consumer falls ``mqtt.max_buffered`` messages behind, the
session stops reading the socket (TCP pushes back on the broker) instead of dropping.

Credentials and TLS (the ``mqtt`` block) are prepared once at start-up by
:func:`prepare_broker`, which ``api check-config`` runs too: the TLS context is built (CA
bundle, client certificate and key read) and the password file read, and a problem is a
:class:`ConfigError` naming the key (``mqtt.tls.ca_file: file not found: ...``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Literal, Self

import msgspec

from api._errors import ConfigError, UpstreamUnavailable
from api._metrics import ApiMetrics
from api._settings import ApiSettings, MqttSettings
from foundation import Backoff, BrokerSetupError
from foundation.mqtt import (
    Message,
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttSession,
    MqttSubscribeError,
    SessionConfig,
    SessionStatus,
    publish_properties,
)
from telemetry import (
    CommandRequest,
    CommandResponse,
    PayloadError,
    TopicError,
    TopicKind,
    Topics,
    decode_message,
    encode_message,
)

__all__ = ["BrokerLink", "prepare_broker"]

log = logging.getLogger("api.broker")

Handler = Callable[[str, bytes], None]
#: (topic, correlation data or None, payload) of an answer to one of the API's commands.
ResponseHandler = Callable[[str, bytes | None, bytes], None]

#: The reconnect schedule: 1 s doubling up to 30 s, jittered (the session's and the first
#: connect's).
_BACKOFF: Final = Backoff(initial=1.0, maximum=30.0)
#: Publishes waiting for their PUBACK at once (config pushes, gap repair's commands).
_MAX_INFLIGHT: Final = 100
_REFUSED: Final = 0x80
#: The consumer gives the event loop back at least this often while messages are queued.
_HOLD_LOOP_S: Final = 0.002


def prepare_broker(mqtt: MqttSettings) -> ssl.SSLContext | None:
    """What start-up does before the first connect: build the TLS context (reads the CA
    bundle, the client certificate and key) and read the password file. Raise
    :class:`ConfigError` naming the key and the file (``mqtt.tls.ca_file: file not found:
    /etc/...``). ``api check-config`` calls it too, so it says what start-up would."""
    try:
        context = None if mqtt.tls is None else mqtt.tls.ssl_context("mqtt.tls.")
        mqtt.read_password("mqtt.password_file")
    except BrokerSetupError as exc:
        raise ConfigError(str(exc)) from exc
    return context


class BrokerLink:
    """Subscribes to telemetry, status, health and reported config of every gateway;
    publishes the API's config pushes and commands. An async context manager that owns its
    task (``api[<client id>].broker``)."""

    def __init__(self, settings: ApiSettings, handler: Handler, metrics: ApiMetrics) -> None:
        mqtt = settings.mqtt
        self._handler = handler
        self._metrics = metrics
        self.topics = Topics(settings.topic_root)
        self._responses: ResponseHandler | None = None
        #: Where gateways answer this API's commands (a valid topic level: validated).
        self.client_id = mqtt.client_id
        self._response_suffix = f"/{TopicKind.COMMAND_RESPONSE.value}/{mqtt.client_id}"
        self._response_filter = (
            f"{self.topics.all_gateways(TopicKind.COMMAND_RESPONSE)}/{mqtt.client_id}"
        )
        self.tls = mqtt.tls is not None
        self.name = f"api[{mqtt.client_id}]"
        self._connect_timeout_s = mqtt.connect_timeout_s
        self.session = MqttSession(
            SessionConfig(
                host=mqtt.host,
                port=mqtt.port,
                client_id=mqtt.client_id,
                access=mqtt,
                ssl_context=prepare_broker(mqtt),
                # mqtt311: the cluster profile. Clean start and QoS 0 telemetry there too: the
                # live feed leaves no consumer behind that would pile up while the API is down.
                version="5" if mqtt.protocol == "mqtt5" else "3.1.1",
                hosts=mqtt.addresses if mqtt.hosts else (),
                keepalive_s=30,
                connect_timeout_s=mqtt.connect_timeout_s,
                clean_start=True,
                max_inflight=_MAX_INFLIGHT,
                max_buffered=mqtt.max_buffered,
                backoff=_BACKOFF,
                name=f"{self.name}.mqtt",
            ),
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )
        self._v5 = mqtt.protocol == "mqtt5"
        self._subscribed = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    def on_response(self, handler: ResponseHandler) -> None:
        """Receive answers to this API's commands (set before entering). Several handlers
        (gap repair, the command endpoint) each see every answer and take their own
        correlations."""
        first = self._responses
        if first is None:
            self._responses = handler
            return

        def both(topic: str, correlation: bytes | None, payload: bytes) -> None:
            first(topic, correlation, payload)
            handler(topic, correlation, payload)

        self._responses = both

    def response_topic(self, gateway: str) -> str:
        return self.topics.command_response(gateway, self.client_id)

    @property
    def connected(self) -> bool:
        """Connected and subscribed (what ``/readyz`` reports)."""
        return self._subscribed.is_set() and self.session.connected

    @property
    def status(self) -> SessionStatus:
        """The session's status: connected, reconnects, connect failures, last error..."""
        return self.session.status

    # -- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._group is not None:
            raise RuntimeError("the broker link is not re-entrant")
        self._subscribed = asyncio.Event()
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        self._task = group.create_task(self._run(), name=f"{self.name}.broker")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._subscribed.wait()
        except TimeoutError:
            log.warning(
                "broker not reachable yet; serving and retrying in the background",
                extra={
                    "url": self.session.config.url,
                    "error": str(self.session.status.last_error),
                },
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, task = self._group, self._task
        self._group = self._task = None
        try:
            if task is not None:
                task.cancel()  # the session's exit sends DISCONNECT
            if group is not None:
                await group.__aexit__(None, None, None)
        finally:
            self._subscribed.clear()
            self._metrics.mqtt_connected.set(0)

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with self.session as session:
                    attempt = 0
                    await self._subscribe(session)
                    await self._consume(session)
                return  # the session ended (only when the link exits)
            except (MqttConnectError, MqttConfigError) as exc:
                # Only the first connect of a session raises; the session retries the rest.
                delay = _BACKOFF.delay(attempt)
                attempt += 1
                log.warning(
                    "broker connect failed; retrying",
                    extra={"url": self.session.config.url, "error": str(exc),
                           "retry_in_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)
            except Exception:
                # A handler bug: the link stops (``/readyz`` answers 503) and says why; the
                # error is raised again when the link exits.
                log.critical("broker link stopped", exc_info=True)
                raise

    async def _subscribe(self, session: MqttSession) -> None:
        t = self.topics
        filters: list[tuple[str, Literal[0, 1]]] = [
            (t.all_gateways(TopicKind.STATUS), 1),
            (t.all_gateways(TopicKind.CONFIG_REPORTED), 1),
            (t.all_gateways(TopicKind.TELEMETRY), 0),
            (t.all_gateways(TopicKind.HEALTH), 0),
        ]
        if self._responses is not None:
            filters.append((self._response_filter, 1))
        for topic, qos in filters:
            try:
                await session.subscribe(topic, qos)
            except MqttSubscribeError as exc:
                log.error(
                    "broker refused a subscription",
                    extra={"topic": topic, "reason_code": exc.reason_code},
                )
            except MqttDisconnected:
                pass  # remembered: made when the session reconnects
        self._subscribed.set()
        self._metrics.mqtt_connected.set(1 if session.connected else 0)
        log.info("subscribed to the broker", extra={"root": t.root, "tls": self.tls})

    async def _consume(self, session: MqttSession) -> None:
        handler, suffix = self._handler, self._response_suffix
        observe, clock = self._metrics.mqtt_handle.observe, time.perf_counter
        held_since = clock()
        async for msg in session.messages():
            if msg.topic.endswith(suffix) and self._responses is not None:
                self._response(msg)
            else:
                start = clock()
                handler(msg.topic, msg.payload)
                observe(clock() - start)
            # While messages are queued, taking the next one never suspends: a burst of a
            # thousand gateways would hold the loop until it is handled, and the live events
            # it made (and HTTP requests) would wait for the whole of it.
            if clock() - held_since > _HOLD_LOOP_S:
                await asyncio.sleep(0)
                held_since = clock()

    def _response(self, msg: Message) -> None:
        assert self._responses is not None
        try:
            _gateway, kind = self.topics.parse(msg.topic)
        except TopicError:
            kind = None
        if kind is TopicKind.COMMAND_RESPONSE:
            correlation = msg.correlation_data
            if correlation is None and not self._v5:  # 3.1.1 form: echoed in the body
                correlation = _body_correlation(msg.payload)
            self._responses(msg.topic, correlation, msg.payload)
        else:
            self._handler(msg.topic, msg.payload)

    # -- session hooks (event loop) ---------------------------------------------------------
    def _on_connect(self, status: SessionStatus) -> None:
        if self._subscribed.is_set():
            self._metrics.mqtt_connected.set(1)
        if status.reconnects:
            self._metrics.mqtt_reconnects.inc()
            log.info("broker connection restored", extra={"reconnects": status.reconnects})

    def _on_disconnect(self, status: SessionStatus) -> None:
        self._metrics.mqtt_connected.set(0)
        self._metrics.mqtt_losses.inc()
        log.warning("broker connection lost", extra={"reason": str(status.last_error)})

    # -- publishing -------------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, *, qos: Literal[0, 1] = 1, retain: bool = False,
        wait_s: float = 10.0, response_topic: str | None = None,
        correlation: bytes | None = None, expiry_s: int | None = None,
    ) -> int:
        """Publish and wait up to ``wait_s`` for the broker's acknowledgement (MQTT v5
        request/response: ``response_topic`` and ``correlation`` data, optional); return
        the PUBACK reason code (0, or 0x10 when nobody subscribes). ``expiry_s``: the MQTT v5
        message expiry (the broker drops it undelivered after that; 3.1.1: none).
        :class:`UpstreamUnavailable` when not connected, lost, refused (>= 0x80) or not
        acknowledged in time."""
        props = None
        if (response_topic is not None or correlation is not None) and not self._v5:
            # MQTT 3.1.1 (no properties): the reply address goes in the request's body.
            payload = _with_reply_address(payload, response_topic, correlation)
        elif self._v5 and (
            response_topic is not None or correlation is not None or expiry_s is not None
        ):
            props = publish_properties(response_topic=response_topic, correlation_data=correlation,
                                       message_expiry_s=expiry_s)
        try:
            async with asyncio.timeout(wait_s):
                reason = await self.session.publish(
                    topic, payload, qos=qos, retain=retain, properties=props
                )
        except TimeoutError as exc:
            raise UpstreamUnavailable("broker did not acknowledge the message in time") from exc
        except MqttDisconnected as exc:
            raise UpstreamUnavailable(f"not connected to the broker: {exc}") from exc
        except MqttError as exc:
            raise UpstreamUnavailable(f"broker did not accept the message: {exc}") from exc
        if reason >= _REFUSED:
            raise UpstreamUnavailable(f"broker refused the message (reason code {reason:#04x})")
        return reason



def _with_reply_address(payload: bytes, topic: str | None, correlation: bytes | None) -> bytes:
    """A command request in the MQTT 3.1.1 form: ``reply_to`` and ``correlation`` (hex) in
    its body (docs/wire-protocol.md, Commands)."""
    try:
        request = decode_message(payload, CommandRequest)
    except PayloadError as exc:
        raise UpstreamUnavailable(f"not a command request: {exc}") from exc
    return encode_message(
        msgspec.structs.replace(
            request,
            reply_to=topic,
            correlation=None if correlation is None else correlation.hex(),
        )
    )


def _body_correlation(payload: bytes) -> bytes | None:
    """The correlation a 3.1.1 answer echoes in its body (hex, as sent), or ``None``."""
    try:
        corr = decode_message(payload, CommandResponse).correlation
        return None if corr is None else bytes.fromhex(corr)
    except (PayloadError, ValueError):
        return None
