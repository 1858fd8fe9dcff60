"""The cluster profile's broker: a real 3-node NATS JetStream cluster with MQTT on each node,
driven through foundation.mqtt's MQTT 3.1.1 path and nats-py (no mocks).

What is checked: failover between broker addresses on connect failure and on SIGKILL of the
connected node; per-gateway permissions; retained birth and the last will; the topic-to-subject
mapping against what the server stores; the interest-retention trap of ``$MQTT_msgs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import nats
import pytest
from cluster_kit import ClusterFactory, password
from nats.js import api as js_api

from foundation import BrokerAccess, free_port
from foundation.mqtt import (
    Message,
    MqttConfigError,
    MqttConnectError,
    MqttDisconnected,
    MqttSession,
    MqttSubscribeError,
    Outgoing,
    SessionConfig,
)
from smartcity._localstack import ServiceError
from smartcity._localstack_nats import NatsCluster, NatsUser
from telemetry import (
    MQTT_STREAM,
    MQTT_STREAM_PREFIX,
    TopicError,
    check_cluster_id,
    mqtt_to_nats_subject,
    nats_subject_to_mqtt_topic,
)

pytestmark = pytest.mark.integration


def _hosts(cluster: NatsCluster) -> tuple[tuple[str, int], ...]:
    return tuple((n.host, n.mqtt_port) for n in cluster.nodes)


def _config(user: NatsUser, hosts: tuple[tuple[str, int], ...], **kw: object) -> SessionConfig:
    base: dict[str, object] = {
        "client_id": f"edge-{user.name}",
        "access": BrokerAccess(username=user.name, password=user.password),  # type: ignore[arg-type]
        "version": "3.1.1",
        "hosts": hosts,
        "clean_start": False,
        "connect_timeout_s": 3.0,
    }
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


async def _collect(session: MqttSession, into: list[Message]) -> None:
    async for msg in session.messages():
        into.append(msg)


async def _until(cond: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def test_session_fails_over_between_addresses_and_after_sigkill(
    nats_cluster_factory: ClusterFactory,
) -> None:
    gw = NatsUser(name="gw-a", password=password())
    cluster = nats_cluster_factory([gw])
    dead = ("127.0.0.1", free_port())

    async def main() -> None:
        # The first address refuses: the session moves on at once, within one round.
        cfg = _config(gw, (dead, *_hosts(cluster)))
        async with MqttSession(cfg) as s:
            assert s.address == _hosts(cluster)[0]
            assert await s.publish("sc/v1/gw-a/health", b"1", qos=1) == 0
            connected_to = cluster.nodes[0]
            connected_to.kill()  # SIGKILL of the node this session is connected to
            await s.wait_disconnected()
            await asyncio.wait_for(s.wait_connected(), 20)
            assert s.address != (connected_to.host, connected_to.mqtt_port)
            # The killed node led the meta layer: until JetStream elected another leader
            # (seconds) the server closes a connection whose QoS 1 publish it cannot store
            # (no PUBACK, MqttDisconnected); the caller (a spool) publishes again.
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert await s.publish("sc/v1/gw-a/health", b"2", qos=1) == 0
                    break
                except MqttDisconnected:
                    assert time.monotonic() < deadline, "no PUBACK 30 s after the SIGKILL"
                    await asyncio.wait_for(s.wait_connected(), 20)
            assert s.status.reconnects >= 1
            assert s.address != (connected_to.host, connected_to.mqtt_port)
        # Every address refusing: __aenter__ raises after one round.
        with pytest.raises(MqttConnectError):
            async with MqttSession(_config(gw, (dead, ("127.0.0.1", free_port())))):
                pass

    asyncio.run(main())


def test_a_gateway_publishes_and_reads_only_its_own_topics(
    nats_cluster_factory: ClusterFactory,
) -> None:
    a = NatsUser(name="gw-a", password=password())
    b = NatsUser(name="gw-b", password=password())
    api = NatsUser(name="api", password=password(), role="service")
    cluster = nats_cluster_factory([a, b, api])
    hosts = _hosts(cluster)

    async def main() -> None:
        seen: list[Message] = []
        got_a: list[Message] = []
        async with (
            MqttSession(_config(api, hosts, client_id="api-1")) as central,
            MqttSession(_config(a, hosts[1:])) as gw_a,
            asyncio.TaskGroup() as tg,
        ):
            await central.subscribe("sc/v1/#", qos=1)
            collectors = [
                tg.create_task(_collect(central, seen)),
                tg.create_task(_collect(gw_a, got_a)),
            ]
            with pytest.raises(MqttSubscribeError):
                await gw_a.subscribe("sc/v1/gw-b/cmd", qos=1)
            with pytest.raises(MqttSubscribeError):
                await gw_a.subscribe("sc/v1/+/telemetry", qos=1)
            with pytest.raises(MqttSubscribeError):  # the server's internal subjects
                await gw_a.subscribe("$MQTT/msgs/#", qos=1)
            await gw_a.subscribe("sc/v1/gw-a/cmd", qos=1)
            # 3.1.1 has no PUBACK reason: a refused publish is acknowledged all the same...
            assert await gw_a.publish("sc/v1/gw-b/telemetry", b"forged", qos=1) == 0
            assert await gw_a.publish("sc/v1/gw-a/cmd", b"self-command", qos=1) == 0
            assert await gw_a.publish("sc/v1/gw-a/telemetry", b"honest", qos=1) == 0
            await central.publish("sc/v1/gw-a/cmd", b"from-api", qos=1)
            await _until(lambda: len(got_a) >= 1, 10, "the gateway's command")
            await _until(lambda: any(m.payload == b"honest" for m in seen), 10, "telemetry")
            await asyncio.sleep(0.5)
            for task in collectors:
                task.cancel()
        # ...but nobody receives it.
        payloads = {m.payload for m in seen}
        assert b"forged" not in payloads
        assert b"self-command" not in payloads
        assert [m.payload for m in got_a] == [b"from-api"]

    asyncio.run(main())
    # A gateway's password opens only MQTT, not the NATS client port.
    assert b"Authorization Violation" in _nats_connect(cluster, a)
    assert b"PONG" in _nats_connect(cluster, api)


def _nats_connect(cluster: NatsCluster, user: NatsUser) -> bytes:
    """CONNECT on a node's NATS client port (the plain protocol); what the server answers."""
    node = cluster.nodes[0]
    with socket.create_connection((node.host, node.port), timeout=5) as sock:
        sock.recv(4096)  # INFO
        connect = json.dumps({"user": user.name, "pass": user.password, "verbose": False})
        sock.sendall(f"CONNECT {connect}\r\nPING\r\n".encode())
        answer = b""
        with contextlib.suppress(OSError):
            while b"PONG" not in answer and b"-ERR" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer


def test_retained_birth_and_last_will_on_the_cluster(nats_cluster_factory: ClusterFactory) -> None:
    gw = NatsUser(name="gw-a", password=password())
    api = NatsUser(name="api", password=password(), role="service")
    cluster = nats_cluster_factory([gw, api])
    hosts = _hosts(cluster)
    status = "sc/v1/gw-a/status"

    async def main() -> None:
        cfg = _config(
            gw, hosts,
            will=Outgoing(topic=status, payload=b"dead", retain=True),
            birth=lambda: Outgoing(topic=status, payload=b"alive", retain=True),
        )
        async with MqttSession(cfg) as s:
            await s.publish("sc/v1/gw-a/health", b"x", qos=1)  # the birth went first
            s.abort()  # no DISCONNECT: the server publishes the will
        got: list[Message] = []
        # A late subscriber, on another node, gets the retained status: the will.
        async with MqttSession(_config(api, hosts[2:], client_id="api-1")) as c:
            await c.subscribe(status, qos=1)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(_collect(c, got))
                await _until(lambda: bool(got), 10, "the retained status")
                task.cancel()
        assert got[0].retain
        assert got[0].payload == b"dead"

    asyncio.run(main())


def test_subjects_match_what_the_server_stores_and_interest_retention(
    nats_cluster_factory: ClusterFactory,
) -> None:
    """The server's own mapping (MQTT topic -> subject in $MQTT_msgs) equals
    telemetry.mqtt_to_nats_subject, '.' included; and a QoS 1 message that arrives while no
    consumer filters for it is acknowledged (PUBACK) but not kept: the durable consumer must
    exist before gateways publish."""
    api = NatsUser(name="api", password=password(), role="service")
    cluster = nats_cluster_factory([api])
    topics = [
        "sc/v1/gw-a/telemetry",
        "sc/v1/bus.42/telemetry",
        "sc/v1/c:1/cmd/response/x.",
        "sc/v1/a..b/health",
    ]

    async def main() -> None:
        nc = await nats.connect(servers=cluster.urls, user=api.name, password=api.password)
        try:
            js = nc.jetstream()
            async with MqttSession(_config(api, _hosts(cluster), client_id="api-1")) as s:
                await s.publish(topics[0], b"before", qos=1)  # no consumer yet: dropped
                await nc.jsm().add_consumer(
                    MQTT_STREAM,
                    js_api.ConsumerConfig(
                        durable_name="probe", filter_subject=MQTT_STREAM_PREFIX + "sc.>",
                        ack_policy=js_api.AckPolicy.EXPLICIT,
                    ),
                )
                for t in topics:
                    await s.publish(t, t.encode(), qos=1)
            psub = await js.pull_subscribe_bind(durable="probe", stream=MQTT_STREAM)
            msgs = await psub.fetch(10, timeout=5)
            assert [m.data for m in msgs] == [t.encode() for t in topics]
            for m, t in zip(msgs, topics, strict=True):
                assert m.subject == MQTT_STREAM_PREFIX + mqtt_to_nats_subject(t)
                assert nats_subject_to_mqtt_topic(m.subject) == t
                await m.ack()
        finally:
            await nc.close()

    asyncio.run(main())


def test_ids_that_do_not_map_to_themselves_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TopicError, match="'//'"):
        check_cluster_id("gateway id", "bus.42")
    with pytest.raises(ServiceError, match="gateway id"):
        NatsUser(name="bus.42", password=password())
    with pytest.raises(ServiceError, match="topic root"):
        NatsCluster(data_dir=tmp_path, topic_root="city.oslo")
    with pytest.raises(ServiceError, match="odd"):
        NatsCluster(data_dir=tmp_path, nodes=2)
    with pytest.raises(TopicError):
        mqtt_to_nats_subject("sc/v1/a b/telemetry")
    with pytest.raises(TopicError):
        mqtt_to_nats_subject("sc/v1/+/telemetry")
    assert mqtt_to_nats_subject("sc/v1/+/#", filter_=True) == "sc.v1.*.>"
    with pytest.raises(MqttConfigError, match="hosts"):
        SessionConfig(hosts=(("127.0.0.1", 1883), ("127.0.0.1", 1883)))
