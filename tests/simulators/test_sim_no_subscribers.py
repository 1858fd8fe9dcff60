"""A PUBACK with 0x10 No matching subscribers is not a delivery: with ``retry_unrouted`` the
gateway keeps the batch.

Found by the chaos run (``simulators._chaos``): mosquitto 2.0.11 does not restore the shared
subscriptions of offline persistent sessions when it restarts. Until an ingest worker has
reconnected and subscribed again, telemetry goes to nobody, and the broker says so only in the
PUBACK's reason code (0x10). The fleet counted those batches as delivered and dropped them from
its spool: 255 batches (1,920 readings) lost over three broker restarts in an 80 s run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
import sim_helpers as h
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulators import FleetConfig, GatewayFleet
from smartcity._localstack import Mosquitto
from telemetry import decode_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class SharedMember:
    """A persistent member of a share group (clean start off, session expiry), like ingest."""

    def __init__(self, broker: Mosquitto, client_id: str, topic: str, *, subscribe: bool) -> None:
        self.seqs: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )

        def on_connect(client: mqtt.Client, *_a: object) -> None:
            if subscribe:
                client.subscribe(topic, qos=1)
            else:
                ready.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        batch = decode_batch(msg.payload)
        with self._lock:
            self.seqs.add((batch.gateway, batch.seq))

    def received(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_batches_delivered_to_nobody_after_a_broker_restart_stay_spooled_until_ingest_is_back(
    mosquitto_factory: Callable[..., Mosquitto], topic_root: str
) -> None:
    broker = mosquitto_factory()
    member_id = f"ingest-{topic_root}"
    topic = f"$share/g/{topic_root}/v1/+/telemetry"
    SharedMember(broker, member_id, topic, subscribe=True).close()
    broker.stop()
    broker.start()  # the member's session is back, its shared subscription is not
    steps = 5
    fleet = GatewayFleet(
        FleetConfig(
            scenario=h.scenario(duration_s=steps * 60, topic_root=topic_root),
            host=broker.host,
            port=broker.port,
            client_prefix=f"sim{uuid.uuid4().hex[:6]}",
            drain_timeout_s=60,
            retry_unrouted=True,
        )
    )
    runner = threading.Thread(target=fleet.run, name="test.fleet")
    runner.start()
    member: SharedMember | None = None
    try:
        deadline = time.monotonic() + 15
        while fleet.stats.no_subscribers < fleet.layout.gateways and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        # Every PUBACK said "no matching subscribers": nothing counts as delivered.
        assert fleet.stats.no_subscribers >= fleet.layout.gateways
        assert fleet.ledger.readings == 0
        assert fleet.spooled_batches() == fleet.layout.gateways * steps
        member = SharedMember(broker, member_id, topic, subscribe=True)
        runner.join(60)
        assert not runner.is_alive()
    finally:
        fleet.stop()
        runner.join(60)
        if member is not None:
            member.close()
    expected = {(gw, seq) for gw in fleet.gateway_ids for seq in range(steps)}
    assert member.received() == expected
    assert fleet.ledger.readings == fleet.ledger.created_readings
    assert fleet.spooled_batches() == 0


def test_without_retry_unrouted_a_broker_restart_loses_what_is_published_before_ingest_is_back(
    mosquitto_factory: Callable[..., Mosquitto], topic_root: str
) -> None:
    """The broker behaviour itself (mosquitto 2.0.11), and why ``retry_unrouted`` exists."""
    broker = mosquitto_factory()
    member_id = f"ingest-{topic_root}"
    topic = f"$share/g/{topic_root}/v1/+/telemetry"
    SharedMember(broker, member_id, topic, subscribe=True).close()
    broker.stop()
    broker.start()
    fleet = GatewayFleet(
        FleetConfig(
            scenario=h.scenario(duration_s=2 * 60, topic_root=topic_root),
            host=broker.host,
            port=broker.port,
            client_prefix=f"sim{uuid.uuid4().hex[:6]}",
        )
    )
    fleet.run()
    member = SharedMember(broker, member_id, topic, subscribe=True)
    time.sleep(1.0)
    member.close()
    assert fleet.ledger.readings == fleet.ledger.created_readings > 0  # "delivered"...
    assert fleet.stats.no_subscribers == fleet.layout.gateways * 2
    assert member.received() == set()  # ...to nobody
