"""Two InfluxDB replicas, each fed by its own durable consumer, against real processes only:

    2 gateways (MQTT 3.1.1) ─▶ 3-node NATS JetStream cluster ─▶ $MQTT_msgs
        ├─▶ durable "ingest-a" ─▶ ingest worker ingest-a0 ─▶ influxd a
        └─▶ durable "ingest-b" ─▶ ingest worker ingest-b0 ─▶ influxd b
    API (influx_replicas a, b; replica_lag on the cluster) ─▶ reads from the caught-up one

Both replicas converge to the same counts per gateway; a malformed batch is dead-lettered
into the replicated dead-letter stream by each group before its message is acked; influxd a
(the preferred replica) is SIGKILLed while the gateways publish: the API keeps answering
from b and ``/v1/health`` shows a's lag; a is started again and catches up from its
consumer, and the API reads from it again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cluster_kit import ClusterFactory, password

from api import ApiServer, ApiSettings
from foundation import BrokerAccess
from foundation.mqtt import MqttSession, SessionConfig
from ingest import load_config
from ingest._run import WorkerThread
from smartcity._localstack import Influxd
from smartcity._localstack_nats import NatsCluster, NatsUser
from telemetry import Batch, Reading, encode_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB = "city"
MEASUREMENT = "TrafficFlowObserved"
GATEWAYS = ("gw-0", "gw-1")
PER_BATCH = 25
DLQ = "SC_DEADLETTERS"


def _worker(cluster: NatsCluster, user: NatsUser, group: str, influxd: Influxd) -> WorkerThread:
    return WorkerThread(load_config(None, {
        "source": "jetstream",
        "jetstream": {"servers": cluster.urls, "username": user.name,
                      "password": user.password, "durable": f"ingest-{group}", "ack_wait": 10},
        "mqtt": {"client_id": f"ingest-{group}0"},
        "influx": {"url": influxd.url, "database": DB},
        "batch": {"max_age": 0.05, "retry": {"initial_delay": 0.1, "max_delay": 0.5}},
    }))


def _counts(influxd: Influxd) -> dict[str, int]:
    try:
        answer = influxd.query(
            f'SELECT count("intensity") FROM "{MEASUREMENT}" GROUP BY "gateway"', db=DB
        )
    except OSError:
        return {}
    series = answer["results"][0].get("series") or []
    return {s["tags"]["gateway"]: int(s["values"][0][1]) for s in series}


def _until(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        time.sleep(0.1)


class _Gateways:
    """Publishes numbered telemetry batches as the gateways (MQTT 3.1.1, QoS 1)."""

    def __init__(self, cluster: NatsCluster, users: list[NatsUser]) -> None:
        self.cluster = cluster
        self.users = users
        self.seq = dict.fromkeys(GATEWAYS, 0)
        self.sent = dict.fromkeys(GATEWAYS, 0)
        self.base_ts = (time.time_ns() // 10**9 - 600) * 10**9

    def publish(self, batches: int, *, extra: list[tuple[str, bytes]] = ()) -> None:  # type: ignore[assignment]
        asyncio.run(self._publish(batches, list(extra)))

    async def _publish(self, batches: int, extra: list[tuple[str, bytes]]) -> None:
        hosts = tuple((n.host, n.mqtt_port) for n in self.cluster.nodes)
        for user in self.users:
            config = SessionConfig(
                client_id=f"edge-{user.name}", version="3.1.1", hosts=hosts,
                access=BrokerAccess(username=user.name, password=user.password),  # type: ignore[arg-type]
                connect_timeout_s=3.0,
            )
            async with MqttSession(config) as s:
                gw = user.name
                for _ in range(batches):
                    seq = self.seq[gw]
                    readings = [
                        Reading(device=f"loop-{i % 3}", measurement=MEASUREMENT,
                                ts=self.base_ts + (seq * PER_BATCH + i) * 1000,
                                fields={"intensity": float(i), "occupancy": 0.5})
                        for i in range(PER_BATCH)
                    ]
                    batch = encode_batch(Batch(gateway=gw, seq=seq, readings=readings))
                    assert await s.publish(f"sc/v1/{gw}/telemetry", batch, qos=1) == 0
                    self.seq[gw] += 1
                    self.sent[gw] += PER_BATCH
                for topic, payload in extra:
                    if topic.startswith(f"sc/v1/{gw}/"):
                        assert await s.publish(topic, payload, qos=1) == 0


def _health(api: ApiServer, key: str) -> dict[str, Any]:
    r = httpx.get(f"{api.url}/v1/health", headers={"X-API-Key": key}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _replica(health: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in health["influxdb"]["replicas"] if r["name"] == name)


def _history(api: ApiServer, key: str) -> httpx.Response:
    return httpx.get(
        f"{api.url}/v1/history",
        params={"device": "loop-0", "measurement": MEASUREMENT, "field": "intensity",
                "gateway": "gw-0"},
        headers={"X-API-Key": key}, timeout=15,
    )


async def _deadletters(cluster: NatsCluster) -> list[dict[str, Any]]:
    nc = await nats.connect(cluster.urls, user="admin", password=cluster.admin.password)
    try:
        jsm = nc.jsm()
        info = await jsm.stream_info(DLQ)
        assert info.config.num_replicas == 3  # as many as $MQTT_msgs
        first = info.state.first_seq
        return [
            json.loads((await jsm.get_msg(DLQ, seq)).data or b"{}")
            for seq in range(first, first + info.state.messages)
        ]
    finally:
        await nc.close()


def test_replicas_converge_fail_over_and_catch_up(
    nats_cluster_factory: ClusterFactory,
    influxd_factory: Callable[[], Influxd],
    tmp_path: Path,
) -> None:
    gw_users = [NatsUser(name=g, password=password()) for g in GATEWAYS]
    service = NatsUser(name="svc", password=password(), role="service")
    cluster = nats_cluster_factory([*gw_users, service])
    influx_a, influx_b = influxd_factory(), influxd_factory()
    first, *others = cluster.mqtt_hosts
    host, port = first.rsplit(":", 1)
    settings = ApiSettings(
        demo=True, port=0, topic_root="sc", gap_repair=False, warm_window="1h",
        database_url=f"sqlite:///{tmp_path}/api.sqlite3", influx_database=DB,
        mqtt={"host": host, "port": int(port), "hosts": others, "protocol": "mqtt311",  # type: ignore[arg-type]
              "username": service.name, "password": service.password, "client_id": "api-1"},
        influx_replicas=[  # type: ignore[list-item]
            {"name": "a", "url": influx_a.url, "durable": "ingest-a"},
            {"name": "b", "url": influx_b.url, "durable": "ingest-b"},
        ],
        replica_lag={"servers": cluster.urls, "username": service.name,  # type: ignore[arg-type]
                     "password": service.password, "check_interval_s": 0.3,
                     "max_lag": 0},
    )
    gateways = _Gateways(cluster, gw_users)
    with (
        _worker(cluster, service, "a", influx_a),
        _worker(cluster, service, "b", influx_b),
        ApiServer(settings) as api,
    ):
        key = api.services.demo_keys["viewer"]
        # 1. Both replicas get everything; a malformed batch is dead-lettered by each group.
        gateways.publish(10, extra=[("sc/v1/gw-0/telemetry", b"{not json")])
        for influxd in (influx_a, influx_b):
            _until(lambda i=influxd: _counts(i) == gateways.sent, 30, f"{influxd.url} converged")
        _until(lambda: all(r["lag"] == 0 and r["healthy"]
                           for r in _health(api, key)["influxdb"]["replicas"]), 15, "lag 0")
        health = _health(api, key)
        assert health["status"] == "ok"
        assert health["influxdb"]["reading_from"] == "a"
        records = asyncio.run(_deadletters(cluster))
        assert sorted(r["worker"] for r in records) == ["ingest-a0", "ingest-b0"], records
        assert {r["topic"] for r in records} == {"sc/v1/gw-0/telemetry"}
        assert {r["stage"] for r in records} == {"decode"}

        # 2. influxd a (the preferred replica) dies while the gateways publish.
        influx_a.kill()
        r = _history(api, key)
        assert r.status_code == 200, r.text  # answered by b (a failed, or was marked down)
        assert r.json()["points"], r.text
        gateways.publish(10)
        _until(lambda: _counts(influx_b) == gateways.sent, 30, "b has everything")

        def a_lags() -> bool:
            a = _replica(_health(api, key), "a")
            return not a["healthy"] and (a["lag"] or 0) > 0 and not a["caught_up"]

        _until(a_lags, 15, "a unhealthy with a lag")
        health = _health(api, key)
        assert health["influxdb"]["reading_from"] == "b", health
        assert _history(api, key).status_code == 200

        # 3. a comes back and catches up from its consumer; the API reads from it again.
        started = time.monotonic()
        influx_a.start()
        _until(lambda: _counts(influx_a) == gateways.sent, 40, "a caught up")
        caught_up = time.monotonic() - started
        _until(lambda: _health(api, key)["influxdb"]["reading_from"] == "a", 15, "reading a")
        assert _replica(_health(api, key), "a")["lag"] == 0
        metrics = httpx.get(f"{api.url}/metrics", headers={"X-API-Key": key}, timeout=10).text
        assert 'smartcity_api_influx_replica_up{replica="a"} 1.0' in metrics
        assert 'smartcity_api_influx_replica_lag_messages{replica="b"} 0.0' in metrics

    assert _counts(influx_a) == _counts(influx_b) == gateways.sent
    print(f"sent {gateways.sent}; replica a caught up {caught_up:.1f}s after its restart")
