"""Probe: does the broker hold to a v5 subscriber's Receive Maximum once acks flow?

Not a test (not collected): a measurement behind docs/operations.md, run by hand::

    .venv/bin/python tests/ingest/receive_maximum_probe.py R MESSAGES noack|ack shared|plain

It starts a private mosquitto, connects a manual-ack MQTT v5 subscriber announcing Receive
Maximum R (persistent session), publishes MESSAGES QoS 1 messages of 200 bytes, and counts
the most messages the subscriber ever held unacknowledged: received minus ack() calls, the
ack counted *before* the PUBACK is handed to paho, so the figure is a lower bound of what
the broker had in flight. ``noack`` never acks (5 s); ``ack`` acks in receive order, one
message every ~0.2 ms, slower than the broker delivers.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartcity._localstack import Mosquitto


def probe(broker: Mosquitto, receive_maximum: int, messages: int, *, ack: bool,
          shared: bool) -> dict[str, int]:
    topic = "probe/x"
    unacked: collections.deque[int] = collections.deque()
    lock = threading.Lock()
    stats = {"received": 0, "acked": 0, "max_unacked": 0}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-sub",
                      protocol=mqtt.MQTTv5, manual_ack=True)
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            unacked.append(msg.mid)
            stats["received"] += 1
            stats["max_unacked"] = max(stats["max_unacked"], stats["received"] - stats["acked"])

    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = receive_maximum
    props.SessionExpiryInterval = 600
    sub.connect(broker.host, broker.port, clean_start=False, properties=props)
    sub.subscribe(f"$share/g/{topic}" if shared else topic, qos=1)
    sub.loop_start()
    subscribed.wait(5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(0)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(topic, b"x" * 200, qos=1) for _ in range(messages)]
    if ack:
        deadline = time.monotonic() + 60
        while stats["acked"] < messages and time.monotonic() < deadline:
            with lock:
                mid = unacked.popleft() if unacked else None
                if mid is not None:
                    stats["acked"] += 1
            if mid is None:
                time.sleep(0.0005)
                continue
            sub.ack(mid, 1)
            time.sleep(0.0002)
    else:
        time.sleep(5)
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    sub.disconnect()
    sub.loop_stop()
    return stats


def main() -> None:
    receive_maximum, messages = int(sys.argv[1]), int(sys.argv[2])
    ack, shared = sys.argv[3] == "ack", sys.argv[4] == "shared"
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(data_dir=tmp) as broker:
        stats = probe(broker, receive_maximum, messages, ack=ack, shared=shared)
    print(f"R={receive_maximum} messages={messages} {sys.argv[3]} {sys.argv[4]}: {stats}")


if __name__ == "__main__":
    main()
