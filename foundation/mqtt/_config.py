"""What a session is told once (:class:`SessionConfig`) and what it tells back
(:class:`SessionStatus`), plus the outgoing-message value :class:`Outgoing`."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from foundation import Backoff, BrokerAccess
from foundation.mqtt._errors import MqttConfigError, MqttError

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "Outgoing",
    "SessionConfig",
    "SessionStatus",
    "parse_address",
    "publish_properties",
]

#: MQTT v5 PUBACK reason code 0x10 "No matching subscribers": the broker took the message
#: and delivered it to nobody. Not a failure for MQTT, but not a delivery either.
NO_MATCHING_SUBSCRIBERS: Final = 0x10

Version = Literal["5", "3.1.1"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Outgoing:
    """A message the session publishes by itself: the last will, or the birth."""

    topic: str
    payload: bytes
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    properties: Properties | None = None


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """How one session reaches its broker and behaves there. Validated when built;
    :class:`MqttConfigError` names the key.

    - ``access``: credentials and TLS (:class:`foundation.BrokerAccess`), applied with
      :func:`foundation.configure_client`; the password file is read at every connect.
      ``ssl_context``: one context built with ``access.tls.ssl_context()`` and shared by
      many sessions (a fleet); built at ``__aenter__`` from ``access.tls`` when unset.
    - ``version``: ``"5"``, or ``"3.1.1"`` (a NATS JetStream cluster speaks only that:
      no properties, no reason codes, no Receive Maximum, no session expiry).
    - ``clean_start`` off + ``session_expiry_s``: a persistent session; the broker keeps
      subscriptions and queues QoS 1 messages while the session is offline.
    - ``manual_ack``: messages are acknowledged only by :meth:`Message.ack`; otherwise when
      received. ``receive_maximum`` (v5): at most that many unacknowledged messages in
      flight towards this client; set it with ``manual_ack`` (without, mosquitto sends 20).
    - ``max_inflight``: the publish window, QoS 1/2 messages without PUBACK yet (lowered to
      the broker's Receive Maximum from CONNACK). ``max_buffered``: received messages
      waiting for the consumer; at that many the session stops reading the socket
      (default: ``receive_maximum``, else 1000).
    - ``will``: published by the broker when the connection is lost without DISCONNECT;
      ``birth``: called on every connect, its message published before anything else.
    - ``resubscribe``: ``"session_lost"`` makes the remembered subscriptions again when the
      broker did not keep the session (CONNACK session present = 0); ``"always"`` on every
      connect (mosquitto 2.0.11 loses the shared subscriptions of offline persistent
      sessions when it restarts, yet reports the session present).
    - ``backoff``: the reconnect schedule. ``connect_timeout_s``: TCP + TLS + CONNACK.
    - ``hosts``: several broker addresses ``(host, port)`` to fail over between (the nodes
      of a cluster); when given, ``host``/``port`` are not used. The session starts with
      the first; after a failed connect or a lost connection it tries the next one, at once
      while a round over the list is not complete, with the backoff after a whole round
      failed. ``__aenter__`` raises only when every address failed once.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    access: BrokerAccess = field(default_factory=BrokerAccess)
    ssl_context: ssl.SSLContext | None = None
    version: Version = "5"
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    clean_start: bool = True
    session_expiry_s: int | None = None
    manual_ack: bool = False
    receive_maximum: int | None = None
    max_inflight: int = 20
    max_buffered: int | None = None
    will: Outgoing | None = None
    birth: Callable[[], Outgoing] | None = None
    resubscribe: Literal["session_lost", "always"] = "session_lost"
    backoff: Backoff = field(default_factory=Backoff)
    #: Log and task name: tasks are ``"{name}.connection"``; default ``mqtt[{client_id}]``.
    name: str | None = None
    hosts: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.host:
            raise MqttConfigError("host", "must not be empty")
        if not 0 < self.port < 65536:
            raise MqttConfigError("port", f"must be within 1..65535, got {self.port}")
        for i, (h, p) in enumerate(self.hosts):
            if not h:
                raise MqttConfigError(f"hosts[{i}]", "host must not be empty")
            if not 0 < p < 65536:
                raise MqttConfigError(f"hosts[{i}]", f"port must be within 1..65535, got {p}")
        if len(set(self.hosts)) != len(self.hosts):
            raise MqttConfigError("hosts", "lists an address twice")
        if self.version not in ("5", "3.1.1"):
            raise MqttConfigError("version", f"must be '5' or '3.1.1', got {self.version!r}")
        if not self.clean_start and not self.client_id:
            raise MqttConfigError("client_id", "a persistent session (clean_start off) needs one")
        if self.keepalive_s < 1:
            raise MqttConfigError("keepalive_s", f"must be >= 1, got {self.keepalive_s}")
        if not self.connect_timeout_s > 0:
            raise MqttConfigError("connect_timeout_s", "must be > 0")
        if self.max_inflight < 1:
            raise MqttConfigError("max_inflight", f"must be >= 1, got {self.max_inflight}")
        if self.max_buffered is not None and self.max_buffered < 1:
            raise MqttConfigError("max_buffered", f"must be >= 1, got {self.max_buffered}")
        if self.receive_maximum is not None and not 0 < self.receive_maximum < 65536:
            raise MqttConfigError(
                "receive_maximum", f"must be within 1..65535, got {self.receive_maximum}"
            )
        if self.session_expiry_s is not None and not 0 <= self.session_expiry_s < 2**32:
            raise MqttConfigError("session_expiry_s", "must be within 0..4294967295")
        if self.version == "3.1.1":
            for key in ("receive_maximum", "session_expiry_s"):
                if getattr(self, key) is not None:
                    raise MqttConfigError(key, "is MQTT v5 only (version is '3.1.1')")
            if self.will is not None and self.will.properties is not None:
                raise MqttConfigError("will.properties", "is MQTT v5 only")

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Where the session connects, in failover order: ``hosts``, else ``(host, port)``."""
        return self.hosts or ((self.host, self.port),)

    @property
    def url(self) -> str:
        """The URL of the first address (:meth:`url_of` for any)."""
        return self.url_of(*self.addresses[0])

    def url_of(self, host: str, port: int) -> str:
        tls = self.access.tls is not None or self.ssl_context is not None
        return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"

    @property
    def buffer_limit(self) -> int:
        if self.max_buffered is not None:
            return self.max_buffered
        return self.receive_maximum or 1000

    @property
    def label(self) -> str:
        return self.name or f"mqtt[{self.client_id or '-'}]"


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionStatus:
    """A snapshot of a session, for health checks and metrics.

    ``epoch`` counts successful connects (0 before the first); ``reconnects`` those after
    the first; ``connect_failures`` failed attempts. ``last_error`` is the latest failure
    (a connect error carries ``errno`` / ``reason_code``), kept after a reconnect.
    """

    connected: bool
    epoch: int
    reconnects: int
    connect_failures: int
    losses: int
    session_present: bool
    last_error: MqttError | None
    inflight: int
    window: int
    buffered: int


def parse_address(text: str, *, default_port: int = 1883) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) or ``host`` (``default_port``) -> ``(host, port)``, for
    the ``hosts`` lists of the services' settings; :class:`MqttConfigError` (a ``ValueError``)
    when it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep or (":" in host and not host.startswith("[")):
        host, port = text, str(default_port)
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MqttConfigError("hosts", f"{text!r} is not host:port (port within 1..65535)")
    return host, int(port)


def publish_properties(
    *,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
    user_properties: Sequence[tuple[str, str]] = (),
    content_type: str | None = None,
    message_expiry_s: int | None = None,
) -> Properties:
    """MQTT v5 PUBLISH properties for :meth:`MqttSession.publish` (and :class:`Outgoing`)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    if user_properties:
        props.UserProperty = list(user_properties)
    if content_type is not None:
        props.ContentType = content_type
    if message_expiry_s is not None:
        props.MessageExpiryInterval = message_expiry_s
    return props
