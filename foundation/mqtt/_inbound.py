"""Received PUBLISH packets without paho's per-message objects, when they say nothing more.

::

    PUBLISH, after the fixed header's first byte and the remaining length (MQTT 3.1.1 and
    5.0, section 3.3); paho hands over the rest as ``_in_packet["packet"]``:

    byte 0 of the fixed header   0011 | DUP | QoS (2 bits) | RETAIN
    ┌──────────────┬──────────────────┬───────────────────┬──────────────────┬─────────┐
    │ topic length │ topic (UTF-8)    │ packet id         │ v5: property     │ payload │
    │ 2 bytes, BE  │                  │ 2 bytes, QoS > 0  │ length 0: 0x00   │         │
    └──────────────┴──────────────────┴───────────────────┴──────────────────┴─────────┘

paho 2.x turns every PUBLISH into an ``MQTTMessage`` (with an ``MQTTMessageInfo`` and its
``threading.Condition``) and, with MQTT 5, a ``Properties`` whose constructor builds its
name and type tables even when the packet carries no property, then hands it to the
callback under two locks. Most PUBLISH a service receives (telemetry, status, health)
carry no property: for those, :func:`plain_publish` reads the three things the session
keeps (topic, packet id, where the payload starts) straight from the bytes, and the
connection builds its :class:`~foundation.mqtt.Message` from them
(``Connection.handle_publish``). Anything else, i.e. QoS 2, a packet with properties (a
command's response topic and correlation data, user properties, a topic alias), an empty
or non-UTF-8 topic or a packet too short to hold its header, returns ``None`` and takes
paho's own path unchanged.
"""

from __future__ import annotations

__all__ = ["plain_publish"]


def plain_publish(header: int, packet: bytes | bytearray, v5: bool) -> tuple[str, int, int] | None:
    """``(topic, packet id, payload offset)`` of a QoS 0/1 PUBLISH without properties;
    ``None`` when paho is to decode it (see the module docstring). ``header`` is the fixed
    header's first byte, ``packet`` the rest after the remaining length; the packet id is
    0 at QoS 0."""
    qos = (header >> 1) & 3
    size = len(packet)
    if qos > 1 or size < 2:
        return None
    end = 2 + (packet[0] << 8 | packet[1])
    start = end + 2 if qos else end
    if end == 2 or start + v5 > size:
        return None
    if v5:
        if packet[start]:  # a property length other than 0
            return None
        start += 1
    try:
        topic = packet[2:end].decode()
    except UnicodeDecodeError:
        return None
    return topic, (packet[end] << 8 | packet[end + 1]) if qos else 0, start
