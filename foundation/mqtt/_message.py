"""What a session hands its consumer: :class:`Message`, a received PUBLISH with its manual
ack handle, and the iterator of :meth:`MqttSession.messages`.

A message acknowledges itself through the ack ledger of the connection it came on
(:class:`AckLedger`, implemented by ``foundation.mqtt._connection.Connection``): when that
connection is gone, nothing is sent and the broker redelivers it on the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, Self

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["AckLedger", "Message", "MessageIterator", "held_properties"]

#: How many attributes paho's Properties holds before any property is set (its tables, per
#: instance); every property set adds one (``Properties.clear`` deletes only those).
_NO_PROPERTIES: Final = len(vars(Properties(PacketTypes.PUBLISH)))  # type: ignore[no-untyped-call]


def held_properties(props: Properties | None) -> Properties | None:
    """The properties worth keeping with a held message: ``None`` when it carried none.

    paho builds a Properties object (~5 KB: its own name and type tables) for every v5
    PUBLISH, and most carry none: a message held in the inbox or the ack ledger keeps it
    only when it says something (10,000 unacked messages: 50 MB otherwise).
    """
    if props is not None and len(vars(props)) <= _NO_PROPERTIES:
        return None
    return props


class AckLedger(Protocol):
    """The acks of one connection, released in receive order (MQTT 4.6)."""

    def release_acks(self) -> bool:
        """Send the PUBACKs of the acknowledged prefix; False when the connection is gone."""
        ...


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
        conn: AckLedger | None,
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


class MessageIterator:
    """``async for msg in session.messages()``: each step is ``next_message``'s coroutine
    itself (returned, not awaited in a coroutine of its own: one frame less per message)."""

    __slots__ = ("_next",)

    def __init__(self, next_message: Callable[[], Coroutine[Any, Any, Message]]) -> None:
        self._next = next_message

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> Coroutine[Any, Any, Message]:
        return self._next()
