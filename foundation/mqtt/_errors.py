"""Errors of :mod:`foundation.mqtt`: one base, paho's errors translated at the boundary.

::

    MqttError                       base: catch this to catch everything the layer raises
     ├── MqttConfigError            a setting is invalid (also ValueError): .key, .reason
     ├── MqttConnectError           no connection: .url, .errno (socket), .reason_code (CONNACK)
     ├── MqttDisconnected           no connection now, or it was lost before the broker
     │                              answered (PUBACK, SUBACK): .reason
     ├── MqttSubscribeError         the broker refused a subscription: .topic, .reason_code
     ├── MqttWindowFull             publish_nowait() with the in-flight window full
     └── MqttReentrantError         a session entered while already running (also RuntimeError)
"""

from __future__ import annotations

__all__ = [
    "MqttConfigError",
    "MqttConnectError",
    "MqttDisconnected",
    "MqttError",
    "MqttReentrantError",
    "MqttSubscribeError",
    "MqttWindowFull",
]


class MqttError(Exception):
    """Base of every error raised by :mod:`foundation.mqtt`."""


class MqttConfigError(MqttError, ValueError):
    """A session setting is invalid: ``key`` names it, ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class MqttConnectError(MqttError):
    """A connection attempt failed.

    ``errno`` is set when the socket said no (``ECONNREFUSED``, ``ETIMEDOUT``, a TLS
    failure has none); ``reason_code`` when the broker refused in its CONNACK (``0x86`` bad
    user name or password, ``0x87`` not authorized, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        errno: int | None = None,
        reason_code: int | None = None,
    ) -> None:
        self.url = url
        self.errno = errno
        self.reason_code = reason_code
        super().__init__(f"{url}: {message}")


class MqttDisconnected(MqttError):
    """There is no connection, or it was lost before the broker answered.

    A QoS 1 publish that fails this way may or may not have reached the broker: the caller
    keeps the message and publishes it again (at least once).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class MqttSubscribeError(MqttError):
    """The broker refused a subscription (SUBACK reason code >= 0x80)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        self.topic = topic
        self.reason_code = reason_code
        super().__init__(f"subscription to {topic!r} refused: {reason} (0x{reason_code:02x})")


class MqttWindowFull(MqttError):
    """``publish_nowait`` found the in-flight window full: wait for a PUBACK first."""


class MqttReentrantError(MqttError, RuntimeError):
    """A session is reusable (enter, exit, enter again) but not re-entrant."""
