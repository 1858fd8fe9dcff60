"""How the MQTT topic namespace looks on a NATS server (the cluster profile).

A NATS server with MQTT enabled turns every MQTT topic into a NATS subject; JetStream stores
QoS 1 messages in the stream ``$MQTT_msgs`` under ``$MQTT.msgs.<subject>``, and permissions
(who may publish or subscribe where) are written as subjects. The conversion, as
nats-server 2.x does it (``server/mqtt.go`` ``mqttToNATSSubjectConversion``)::

    MQTT topic                       NATS subject
    sc/v1/cab-017/telemetry    ─▶    sc.v1.cab-017.telemetry       '/'  ─▶ '.'
    sc/v1/bus.42/telemetry     ─▶    sc.v1.bus//42.telemetry       '.'  ─▶ '//'
    sc/v1/+/telemetry          ─▶    sc.v1.*.telemetry             '+'  ─▶ '*'  (filters)
    sc/v1/gw/#                 ─▶    sc.v1.gw.>                    '#'  ─▶ '>'  (filters)
    a topic with ' ', TAB, CR, LF, FF or DEL                       refused by the server

Every gateway id the contract allows (:data:`telemetry.ID_RE`) converts to exactly one
subject token, so each gateway's permissions can name its own subtree. A ``.`` in an id
survives as ``//`` but makes every permission, consumer filter and log line differ from the
MQTT topic an operator reads; :func:`check_cluster_id` refuses it, and the cluster profile
checks every gateway id with it when its configuration is loaded. Pure; no I/O.
"""

from __future__ import annotations

from typing import Final

from telemetry._errors import TopicError
from telemetry._model import ID_RE

__all__ = [
    "MQTT_STREAM",
    "MQTT_STREAM_PREFIX",
    "check_cluster_id",
    "mqtt_to_nats_subject",
    "nats_subject_to_mqtt_topic",
]

#: The JetStream stream where a NATS server stores QoS 1 MQTT messages, and its subject prefix.
MQTT_STREAM: Final = "$MQTT_msgs"
MQTT_STREAM_PREFIX: Final = "$MQTT.msgs."
_REFUSED: Final = frozenset(" \t\n\r\f\x7f")


def mqtt_to_nats_subject(topic: str, *, filter_: bool = False) -> str:
    """The NATS subject of an MQTT topic name (``filter_``: a topic filter, with wildcards).

    Raises :class:`TopicError` for what the server refuses (whitespace, DEL, wildcards in a
    topic name) and for empty levels (``a//b``, a leading or trailing ``/``), which the
    server encodes in ways no permission of ours names.
    """
    if not topic:
        raise TopicError("an empty topic has no NATS subject")
    out: list[str] = []
    for level in topic.split("/"):
        if not level:
            raise TopicError(f"topic {topic!r} has an empty level")
        if _REFUSED.intersection(level):
            raise TopicError(f"topic {topic!r} holds whitespace or DEL (a NATS server refuses it)")
        if ("+" in level or "#" in level) and not filter_:
            raise TopicError(f"topic name {topic!r} holds a wildcard")
        if level == "+":
            out.append("*")
        elif level == "#":
            out.append(">")
        elif "+" in level or "#" in level:
            raise TopicError(f"topic filter {topic!r}: a wildcard must be a whole level")
        else:
            out.append(level.replace(".", "//"))
    return ".".join(out)


def nats_subject_to_mqtt_topic(subject: str) -> str:
    """The MQTT topic of a subject :func:`mqtt_to_nats_subject` made (``$MQTT.msgs.`` stripped
    when present); raises :class:`TopicError` for a subject no topic of ours maps to."""
    subject = subject.removeprefix(MQTT_STREAM_PREFIX)
    levels = [t.replace("//", ".") for t in subject.split(".")]
    # An empty level, or a '/' left over (the server's encodings of empty levels).
    if not subject or any(not lv or "/" in lv for lv in levels):
        raise TopicError(f"subject {subject!r} is not one of an MQTT topic with no empty level")
    return "/".join(levels)


def check_cluster_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid id that maps to itself as one NATS subject token;
    raise :class:`TopicError` naming ``kind`` (``gateway id``, ``topic root`` ...) otherwise."""
    if not ID_RE.fullmatch(value):
        raise TopicError(f"{kind} {value!r} must match {ID_RE.pattern}")
    if "." in value:
        raise TopicError(
            f"{kind} {value!r} holds '.', which a NATS server turns into '//' in subjects "
            "(permissions and consumer filters would no longer read like the topic); "
            "use '-' or '_' in the cluster profile"
        )
    return value
