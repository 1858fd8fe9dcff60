"""One asyncio MQTT session layer for the whole platform (MQTT 5 and 3.1.1).

::

    async with MqttSession(SessionConfig(host=..., client_id=...)) as session:
        await session.subscribe("city/v1/+/status")          # remembered across reconnects
        reason = await session.publish(topic, payload)       # PUBACK reason code (QoS 1)
        async for msg in session.messages():                 # Message: topic, payload, qos,
            await msg.ack()                                  #   retain, dup, properties, epoch

Guarantees (docs/mqtt-session.md): ``__aenter__`` returns connected or raises; reconnects
with the shared :class:`foundation.Backoff`; remembered subscriptions are made again when the
broker did not keep the session; the birth is published first on every connect; a QoS 1
publish returns the PUBACK reason code (0x10 :data:`NO_MATCHING_SUBSCRIBERS` included) or
raises :class:`MqttDisconnected`, never re-sent by the layer; manual acks are released in
receive order and never for a message of an older connection; at most ``max_inflight``
publishes and ``max_buffered`` received messages are held; on exit the session's task is
cancelled and awaited.

Errors: :class:`MqttError` is the base of everything raised here (hierarchy in
``foundation.mqtt._errors``). Imports nothing but :mod:`foundation`, paho-mqtt and the
standard library.
"""

from __future__ import annotations

from foundation.mqtt._config import (
    NO_MATCHING_SUBSCRIBERS,
    Outgoing,
    SessionConfig,
    SessionStatus,
    parse_address,
    publish_properties,
)
from foundation.mqtt._errors import (
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttReentrantError,
    MqttSubscribeError,
    MqttWindowFull,
)
from foundation.mqtt._session import Message, MqttSession, StatusHook

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "Message",
    "MqttConfigError",
    "MqttConnectError",
    "MqttDisconnected",
    "MqttError",
    "MqttReentrantError",
    "MqttSession",
    "MqttSubscribeError",
    "MqttWindowFull",
    "Outgoing",
    "SessionConfig",
    "SessionStatus",
    "StatusHook",
    "parse_address",
    "publish_properties",
]
