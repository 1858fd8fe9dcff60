"""The simulated fleet on the cluster profile: MQTT 3.1.1, one NATS user per gateway, the
node addresses to fail over between, and commands answered in the 3.1.1 body form."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from cluster_kit import ClusterFactory, password

from foundation import BrokerAccess
from foundation.mqtt import MqttSession, SessionConfig
from simulators import FleetConfig, GatewayFleet, ScenarioError
from simulators.fleet._uplink import _rotated
from smartcity._localstack_nats import NatsUser
from telemetry import CommandRequest, CommandResponse, decode_message, encode_message


def test_mqtt311_refuses_ids_a_nats_subject_would_change() -> None:
    config = FleetConfig(gateways=2, protocol="mqtt311", client_prefix="sim.v2")
    with pytest.raises(ScenarioError, match=r"client id 'sim\.v2-"):
        GatewayFleet(config)
    with pytest.raises(ScenarioError, match="topic root level"):
        GatewayFleet(FleetConfig(gateways=2, protocol="mqtt311", topic_root="sc.city"))
    GatewayFleet(FleetConfig(gateways=2, protocol="mqtt5", client_prefix="sim.v2"))  # no check
    with pytest.raises(ScenarioError, match="twice"):
        FleetConfig(host="a", port=1, hosts=(("a", 1),))


def test_gateways_spread_over_the_nodes_and_fail_over_in_order() -> None:
    nodes = (("a", 1), ("b", 2), ("c", 3))
    assert _rotated(nodes, 0) == nodes
    assert _rotated(nodes, 4) == (("b", 2), ("c", 3), ("a", 1))


@pytest.mark.integration
def test_fleet_publishes_over_mqtt311_and_answers_commands_in_the_body_form(
    nats_cluster_factory: ClusterFactory,
) -> None:
    fleet = GatewayFleet(FleetConfig(gateways=3, devices_per_gateway=2, interval_s=1.0,
                                     speed=5.0, topic_root="sc"))  # fmt: skip
    passwords = {gw: password() for gw in fleet.gateway_ids}
    ops = NatsUser(name="ops", password=password(), role="service")
    cluster = nats_cluster_factory(
        [*(NatsUser(name=gw, password=pw) for gw, pw in passwords.items()), ops]
    )
    (host, port), *others = [(n.host, n.mqtt_port) for n in cluster.nodes]
    fleet = GatewayFleet(FleetConfig(
        gateways=3, devices_per_gateway=2, interval_s=1.0, speed=5.0, topic_root="sc",
        host=host, port=port, hosts=tuple(others), protocol="mqtt311",
        credentials=lambda gw: (gw, passwords[gw]), drain_timeout_s=10.0,
    ))  # fmt: skip
    thread = threading.Thread(target=fleet.run, name="test.fleet", daemon=True)
    thread.start()
    gw = fleet.gateway_ids[1]
    # Under the gateway's own topics: its NATS user may publish nowhere else.
    reply_to = f"sc/v1/{gw}/cmd/response/ops-1"
    answers: list[CommandResponse] = []

    async def ask() -> None:
        cfg = SessionConfig(
            client_id="ops-1", version="3.1.1", host=host, port=port,
            access=BrokerAccess(username=ops.name, password=ops.password),  # type: ignore[arg-type]
        )  # fmt: skip
        async with MqttSession(cfg) as session:
            await session.subscribe(reply_to, qos=1)
            request = CommandRequest(cmd="ping", reply_to=reply_to, correlation="c-7")
            await session.publish(f"sc/v1/{gw}/cmd", encode_message(request), qos=1)
            async with asyncio.timeout(15):
                async for msg in session.messages():
                    answers.append(decode_message(msg.payload, CommandResponse))
                    return

    try:
        deadline = time.monotonic() + 20
        while fleet.stats.online < 3 or fleet.ledger.readings == 0:
            assert time.monotonic() < deadline, fleet.stats
            assert thread.is_alive(), fleet.stats.last_error
            time.sleep(0.1)
        asyncio.run(ask())
    finally:
        fleet.stop()
        thread.join(30)
    assert answers[0].ok, answers
    assert answers[0].correlation == "c-7", answers
    assert answers[0].result["pong"] is True
    assert fleet.stats.publish_refused == 0
    totals = fleet.ledger.totals()
    assert totals["readings"] == totals["acked_readings"] > 0
