"""The cluster profile end to end, against real processes only:

    3 edge agents (uplink mqtt311, the 3 node addresses) ─▶ 3-node NATS JetStream cluster
      ─▶ $MQTT_msgs ─▶ durable consumer ─▶ 2 ingest workers (source jetstream) ─▶ influxd

While the agents send, the node they are connected to is SIGKILLed (and started again), then
the node leading ``$MQTT_msgs`` is SIGKILLed (and started again). Every gateway's readings
must be in InfluxDB exactly once: as many distinct points as the agent was given, no seq gap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import ClusterFactory, password

from api._metrics import ApiMetrics
from api._settings import ApiSettings
from api.state._broker import BrokerLink
from edge_agent import EdgeAgent, parse_config
from foundation import BrokerAccess
from foundation.mqtt import MqttSession, SessionConfig
from ingest import BrokerError, load_config
from ingest._run import WorkerThread
from smartcity._localstack import Influxd
from smartcity._localstack_nats import NatsCluster, NatsUser
from telemetry import CommandRequest, CommandResponse, Reading, decode_message, encode_message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GATEWAYS = ("gw-0", "gw-1", "gw-2")
PER_TICK = 20
TICK_S = 0.05
MEASUREMENT = "TrafficFlowObserved"


def _agent_config(tmp_path: Path, cluster: NatsCluster, user: NatsUser) -> dict[str, Any]:
    first, *others = cluster.mqtt_hosts
    host, port = first.rsplit(":", 1)
    return {
        "gateway": {"id": user.name, "state_dir": str(tmp_path / user.name)},
        "broker": {
            "host": host,
            "port": int(port),
            "hosts": others,
            "protocol": "mqtt311",
            "username": user.name,
            "password": user.password,
            "client_id": f"edge-{user.name}",
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
            "connect_timeout_s": 3.0,
        },
        "batch": {"max_readings": 100, "max_age_s": 0.2},
        "health": {"interval_s": 1.0},
        "metrics": {"port": None},
        "tick_s": 0.05,
    }


def _readings(gw_index: int, tick: int, base_ts: int) -> list[Reading]:
    return [
        Reading(
            device=f"loop-{i % 4}",
            measurement=MEASUREMENT,
            ts=base_ts + (gw_index * 10_000_000 + tick * PER_TICK + i) * 1000,
            fields={"intensity": float(i), "occupancy": 0.5},
            tags={"lane": str(i % 2 + 1)},
        )
        for i in range(PER_TICK)
    ]


async def _until(cond: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {within}s"
        await asyncio.sleep(0.05)


def _per_gateway(influxd: Influxd, db: str) -> dict[str, int]:
    answer = influxd.query(
        f'SELECT count("intensity") FROM "{MEASUREMENT}" GROUP BY "gateway"', db=db
    )
    series = answer["results"][0].get("series") or []
    return {s["tags"]["gateway"]: int(s["values"][0][1]) for s in series}


def _seqs(influxd: Influxd, db: str, gateway: str) -> list[int]:
    answer = influxd.query(
        f"SELECT \"seq\" FROM \"ingest_batch\" WHERE \"gateway\" = '{gateway}'", db=db
    )
    series = answer["results"][0].get("series") or []
    return sorted(int(v[1]) for s in series for v in s["values"])


def test_no_reading_lost_or_doubled_through_node_and_leader_sigkill(
    nats_cluster_factory: ClusterFactory, influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    gateways = [NatsUser(name=g, password=password()) for g in GATEWAYS]
    ingest_user = NatsUser(name="ingest", password=password(), role="service")
    cluster = nats_cluster_factory([*gateways, ingest_user])

    def worker(n: int) -> WorkerThread:
        return WorkerThread(
            load_config(None, {
                "source": "jetstream",
                "jetstream": {"servers": cluster.urls, "username": "ingest",
                              "password": ingest_user.password, "ack_wait": 10},
                "mqtt": {"client_id": f"ingest-{n}"},
                "influx": {"url": influxd.url, "database": influx_db},
                "batch": {"max_age": 0.05, "retry": {"initial_delay": 0.1, "max_delay": 1.0}},
            })
        )

    base_ts = (time.time_ns() // 10**9 - 3600) * 10**9
    sent = dict.fromkeys(GATEWAYS, 0)
    agents = [
        EdgeAgent(parse_config(_agent_config(tmp_path, cluster, u), source="test"))
        for u in gateways
    ]
    events: list[str] = []

    async def faults() -> None:
        await asyncio.sleep(2.0)
        cluster.kill(0)  # every agent starts on the first address: node 0
        events.append("killed node 0 (the agents' node)")
        await asyncio.sleep(3.0)
        await asyncio.to_thread(cluster.start, 0)
        events.append("node 0 back")
        leader = await asyncio.to_thread(cluster.leader_of)
        assert leader is not None
        index = cluster.index_of(leader)
        cluster.kill(index)
        events.append(f"killed node {index} (the $MQTT_msgs leader)")
        await asyncio.sleep(3.0)
        await asyncio.to_thread(cluster.start, index)
        events.append(f"node {index} back")

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for a in agents:
                tg.create_task(a.run(), name=f"test-agent[{a.gateway}].run")
            for a in agents:
                await asyncio.wait_for(a.ready.wait(), 15)
            fault_task = tg.create_task(faults(), name="test.faults")
            tick = 0
            while not fault_task.done():
                for i, a in enumerate(agents):
                    a.submit(_readings(i, tick, base_ts), None)
                    sent[a.gateway] += PER_TICK
                tick += 1
                await asyncio.sleep(TICK_S)
            await fault_task
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                counts = await asyncio.to_thread(_per_gateway, influxd, influx_db)
                if counts == sent:
                    break
                await asyncio.sleep(0.5)
            for a in agents:
                a.stop()

    started = time.monotonic()
    with worker(0), worker(1):
        asyncio.run(main())
    took = time.monotonic() - started
    counts = _per_gateway(influxd, influx_db)
    assert all(n > 0 for n in sent.values())
    assert counts == sent, f"InfluxDB {counts} != sent {sent} ({events}, {took:.1f}s)"
    for g in GATEWAYS:
        seqs = _seqs(influxd, influx_db, g)
        assert seqs == list(range(len(seqs))), f"{g}: seq gaps or doubles {seqs[:20]}..."
    assert len(events) == 4, events
    # The SIGKILL of node 0 cut every agent's connection; they went on through another node.
    assert all(a.uplink.stats.losses >= 1 for a in agents), [
        a.uplink.stats.losses for a in agents
    ]
    print(f"sent {sum(sent.values())} readings in {took:.1f}s through {events}")


def test_commands_in_the_mqtt311_form_through_the_cluster(
    nats_cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """A command over MQTT 3.1.1 carries its reply topic and correlation in the body; the
    agent answers there, echoing the correlation in the answer's body."""
    gw = NatsUser(name="gw-0", password=password())
    api = NatsUser(name="api", password=password(), role="service")
    cluster = nats_cluster_factory([gw, api])
    agent = EdgeAgent(parse_config(_agent_config(tmp_path, cluster, gw), source="test"))
    reply_to = "sc/v1/gw-0/cmd/response/api-1"
    hosts = tuple((n.host, n.mqtt_port) for n in cluster.nodes)

    async def main() -> list[CommandResponse]:
        answers: list[CommandResponse] = []
        session_cfg = SessionConfig(
            client_id="api-1", version="3.1.1", hosts=hosts[2:],
            access=BrokerAccess(username=api.name, password=api.password),  # type: ignore[arg-type]
        )
        async with asyncio.TaskGroup() as tg, MqttSession(session_cfg) as central:
            tg.create_task(agent.run(), name="test-agent.run")
            await asyncio.wait_for(agent.ready.wait(), 15)
            await _until(lambda: agent.uplink.connected, 15)  # cmd subscription confirmed
            await central.subscribe(reply_to, qos=1)
            for cmd, corr in (("ping", "c-1"), ("nope", "c-2")):
                request = CommandRequest(cmd=cmd, reply_to=reply_to, correlation=corr)
                await central.publish("sc/v1/gw-0/cmd", encode_message(request), qos=1)
            async with asyncio.timeout(15):
                async for msg in central.messages():
                    answers.append(decode_message(msg.payload, CommandResponse))
                    if len(answers) == 2:
                        break
            agent.stop()
        return answers

    answers = asyncio.run(main())
    by_corr = {a.correlation: a for a in answers}
    assert by_corr["c-1"].ok
    assert not by_corr["c-2"].ok
    assert "unknown command" in (by_corr["c-2"].error or "")


def test_api_live_feed_and_commands_through_the_cluster(
    nats_cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    """The API's broker link on the cluster (mqtt311, failover list): telemetry reaches its
    live handler (QoS 0, clean session: no consumer left behind while the API is down), and a
    command with a binary correlation is answered through the 3.1.1 body form."""
    gw = NatsUser(name="gw-0", password=password())
    api = NatsUser(name="api", password=password(), role="service")
    cluster = nats_cluster_factory([gw, api])
    agent = EdgeAgent(parse_config(_agent_config(tmp_path, cluster, gw), source="test"))
    first, *others = cluster.mqtt_hosts
    host, port = first.rsplit(":", 1)
    settings = ApiSettings(
        topic_root="sc", influx_url="http://127.0.0.1:1", database_url=f"sqlite:///{tmp_path}/a.db",
        mqtt={"host": host, "port": int(port), "hosts": others, "protocol": "mqtt311",
              "username": api.name, "password": api.password, "client_id": "api-1"},  # type: ignore[arg-type]
    )
    live: list[str] = []
    answers: list[tuple[bytes | None, bytes]] = []

    async def main() -> None:
        link = BrokerLink(settings, lambda topic, _p: live.append(topic), ApiMetrics())
        link.on_response(lambda _t, corr, payload: answers.append((corr, payload)))
        async with asyncio.TaskGroup() as tg, link:
            tg.create_task(agent.run(), name="test-agent.run")
            await asyncio.wait_for(agent.ready.wait(), 15)
            await _until(lambda: agent.uplink.connected and link.connected, 15)
            agent.submit(_readings(0, 0, (time.time_ns() // 10**9 - 60) * 10**9), None)
            await _until(lambda: "sc/v1/gw-0/telemetry" in live, 15)
            await link.publish(
                "sc/v1/gw-0/cmd", encode_message(CommandRequest(cmd="ping")),
                response_topic=link.response_topic("gw-0"), correlation=b"\x00\xffc",
            )
            await _until(lambda: bool(answers), 15)
            agent.stop()

    asyncio.run(main())
    corr, payload = answers[0]
    assert corr == b"\x00\xffc"
    assert decode_message(payload, CommandResponse).ok


def test_ingest_refuses_a_consumer_that_differs_and_creates_a_missing_one(
    nats_cluster_factory: ClusterFactory, influxd: Influxd, influx_db: str
) -> None:
    user = NatsUser(name="ingest", password=password(), role="service")
    cluster = nats_cluster_factory([user])

    def config(**jetstream: Any) -> Any:
        return load_config(None, {
            "source": "jetstream",
            "jetstream": {"servers": cluster.urls, "username": "ingest",
                          "password": user.password, **jetstream},
            "influx": {"url": influxd.url, "database": influx_db},
        })

    with WorkerThread(config(ack_wait=30)):  # creates the durable consumer
        pass
    with pytest.raises(BrokerError, match="ack_wait"), WorkerThread(config(ack_wait=45)):
        pass
    with pytest.raises(BrokerError, match="does not exist"), WorkerThread(
        config(durable="other", create=False)
    ):
        pass
    with WorkerThread(config(ack_wait=30)):  # the same settings: verified, bound
        pass
