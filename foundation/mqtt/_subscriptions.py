"""The subscriptions a session remembers, and how it makes them again after a reconnect.

A subscription (``$share/<group>/<filter>`` shared ones included) is remembered when it is
asked for, even while disconnected, and forgotten when the broker refuses it or the caller
unsubscribes. After a reconnect all of them go out again in one SUBSCRIBE when the broker
did not keep the session (CONNACK session present = 0), or on every connect with
``SessionConfig.resubscribe="always"`` (mosquitto 2.0.11 loses the shared subscriptions of
offline persistent sessions on restart while reporting the session present).

MQTT 5 vs 3.1.1: the v5 options (no local, retain as published, retain handling) travel
as paho's ``SubscribeOptions``; 3.1.1 has only the QoS.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from paho.mqtt.subscribeoptions import SubscribeOptions

from foundation.mqtt._connection import Connection
from foundation.mqtt._errors import MqttDisconnected, MqttError, MqttSubscribeError

__all__ = ["Subscription", "Subscriptions"]

log = logging.getLogger("foundation.mqtt")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription the session remembers and makes again after a reconnect."""

    topic: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int

    def paho(self, v5: bool) -> tuple[str, Any]:
        """paho's form: ``(topic, qos)`` for 3.1.1, ``(topic, SubscribeOptions)`` for v5."""
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


class Subscriptions:
    """The remembered subscriptions of one session, by topic filter."""

    __slots__ = ("_by_topic", "_label", "_v5")

    def __init__(self, *, v5: bool, label: str) -> None:
        self._v5 = v5
        self._label = label
        self._by_topic: dict[str, Subscription] = {}

    def remember(self, sub: Subscription) -> None:
        self._by_topic[sub.topic] = sub

    def forget(self, topic: str, sub: Subscription | None = None) -> None:
        """Forget ``topic`` (only while it is still ``sub``, when given)."""
        if sub is None or self._by_topic.get(topic) == sub:
            self._by_topic.pop(topic, None)

    async def send(self, conn: Connection, sub: Subscription) -> int:
        """Subscribe on ``conn``; the granted QoS, :class:`MqttSubscribeError` (forgotten)
        when refused."""
        codes = await conn.subscribe([sub.paho(self._v5)])
        code = codes[0]
        if code.is_failure:
            self.forget(sub.topic, sub)
            raise MqttSubscribeError(sub.topic, code.value, str(code))
        return int(code.value)

    async def restore(self, conn: Connection, timeout_s: float) -> MqttError | None:
        """Make every remembered subscription again on a new connection; the last error
        (``None`` when all were granted). A refused one is logged and stays remembered."""
        subs = list(self._by_topic.values())
        if not subs:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                codes = await conn.subscribe([sub.paho(self._v5) for sub in subs])
        except TimeoutError:
            return MqttDisconnected("no SUBACK for the restored subscriptions")
        except MqttDisconnected as exc:
            return exc
        error: MqttError | None = None
        for sub, code in zip(subs, codes, strict=False):
            if code.is_failure:
                error = MqttSubscribeError(sub.topic, code.value, str(code))
                log.error(
                    "broker refused a restored subscription",
                    extra={"session": self._label, "topic": sub.topic, "reason": str(code)},
                )
        return error
