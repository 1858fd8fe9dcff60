"""Helpers for the ingest tests: configs, publishers, dead-letter listeners, waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import IngestConfig, load_config
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Batch, Reading, Topics, encode_batch

MEASUREMENT = "TrafficFlowObserved"


#: Persistent sessions the current test created: (broker, client id). The autouse fixture
#: in conftest.py removes them from the broker after each test.
SESSIONS: list[tuple[Mosquitto, str]] = []


def worker_id(root: str, n: int = 0) -> str:
    """A client id unique to the test (its topic root), stable across the test's restarts.

    The session broker outlives every test: ids like ``ingest-0`` shared between tests would
    resume another test's persistent session, with its subscriptions and any message it left
    unacknowledged.
    """
    return f"ingest-{n}-{root}"


def make_config(
    broker: Mosquitto, server: Influxd, root: str, db: str, *, worker: int = 0,
    **sections: dict[str, Any],
) -> IngestConfig:
    """A worker config for the test's broker, database and topic root.

    Client id (:func:`worker_id`) and share group are derived from the topic root, so no two
    tests share a session or a group; the session is registered for removal after the test.
    """
    client_id = worker_id(root, worker)
    base: dict[str, Any] = {
        "mqtt": {"port": broker.port, "topic_root": root, "keepalive": 10,
                 "client_id": client_id, "group": f"g-{root}"},
        "influx": {"url": server.url, "database": db},
        "batch": {"max_age": 0.05, "retry": {"initial_delay": 0.1, "max_delay": 1.0}},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    config = load_config(None, base)
    register_session(broker, config.mqtt.client_id)
    return config


def register_session(broker: Mosquitto, client_id: str) -> None:
    if (broker, client_id) not in SESSIONS:
        SESSIONS.append((broker, client_id))


def purged_sessions() -> Iterator[None]:
    """A test's body, then every persistent session it registered removed from its broker.

    Workers have persistent sessions (7 days by default); on the session broker they would
    outlive the test, stay members of its share group and keep queueing messages. The
    conftests make it an autouse fixture."""
    SESSIONS.clear()
    yield
    sessions = list(SESSIONS)
    SESSIONS.clear()
    for broker, client_id in sessions:
        if broker.running:
            purge_session(broker, client_id)


def purge_session(broker: Mosquitto, client_id: str, timeout: float = 10.0) -> None:
    """Delete a persistent session and its queue: clean start, Session Expiry 0, disconnect.

    The worker using ``client_id`` must be stopped, or this takes its session over.
    """
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *_a: connected.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, clean_start=True, properties=props)
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise AssertionError(f"could not connect as {client_id} to purge its session")
    finally:
        client.disconnect()
        client.loop_stop()


def readings(gateway_index: int, seq: int, n: int, base_ts: int) -> list[Reading]:
    """``n`` readings, distinct in (series, time) across gateways and seqs."""
    return [
        Reading(
            device=f"loop-{i % 4}",
            measurement=MEASUREMENT,
            ts=base_ts + (gateway_index * 1_000_000 + seq * 1000 + i) * 1000,
            fields={"intensity": float(i), "occupancy": 0.5},
            tags={"lane": str(i % 2 + 1)},
        )
        for i in range(n)
    ]


def batch_payload(gateway: str, gateway_index: int, seq: int, n: int, base_ts: int) -> bytes:
    return encode_batch(
        Batch(gateway=gateway, seq=seq, readings=readings(gateway_index, seq, n, base_ts))
    )


class Publisher:
    """A QoS 1 publisher for a test; ``close()`` releases its socket and thread."""

    def __init__(self, broker: Mosquitto, root: str) -> None:
        self.topics = Topics(root)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(500)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def telemetry(self, gateway: str, payload: bytes) -> None:
        self.raw(self.topics.telemetry(gateway), payload)

    def raw(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1))

    def flush(self, timeout: float = 30.0) -> None:
        for info in self.infos:
            info.wait_for_publish(timeout)
        self.infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """Collects every message on a topic filter (for dead letters)."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[bytes] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, m: self.messages.append(m.payload)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def count_points(influx: Influxd, db: str) -> int:
    return influx.count(db, MEASUREMENT, "intensity")


