"""Dead-letter replay from the replicated dead-letter stream, against real processes only:

    gateway (MQTT 3.1.1) ─▶ 3-node NATS cluster ─▶ $MQTT_msgs
        ├─▶ durable "ingest-a" ─▶ worker ingest-a0 ─▶ influxd a ┐ each group stores its
        └─▶ durable "ingest-b" ─▶ worker ingest-b0 ─▶ influxd b ┘ records in SC_DEADLETTERS
    smartcity ingest deadletters replay --from-stream --replica a --replica b

A batch 30 minutes ahead (beyond the 300 s clock skew) and a malformed payload are refused
by both groups: four records in the stream. With the skew relaxed, the replay reads the
stream once (two records, the other two are the other group's copies), stores the batch in
both replicas with its bookkeeping point and reports the malformed one as still refused;
a second replay changes nothing (same points); a dry run writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from cluster_kit import ClusterFactory, password
from typer.testing import CliRunner

from foundation import BrokerAccess
from foundation.mqtt import MqttSession, SessionConfig
from ingest import load_config
from ingest._run import WorkerThread
from ingest.cli import app
from smartcity._localstack import Influxd
from smartcity._localstack_nats import NatsCluster, NatsUser
from telemetry import BOOKKEEPING_MEASUREMENT, Batch, Reading, encode_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB = "city"
MEASUREMENT = "TrafficFlowObserved"
DLQ = "SC_DEADLETTERS"


def _count(influxd: Influxd, measurement: str = MEASUREMENT, field: str = "intensity") -> int:
    answer = influxd.query(f'SELECT count("{field}") FROM "{measurement}"', db=DB)
    series = answer["results"][0].get("series") or []
    return int(series[0]["values"][0][1]) if series else 0


def _until(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        time.sleep(0.1)


def _batch(seq: int, ts: int, n: int) -> bytes:
    readings = [Reading(device="loop-1", measurement=MEASUREMENT, ts=ts + i * 1000,
                        fields={"intensity": float(i)}) for i in range(n)]  # fmt: skip
    return encode_batch(Batch(gateway="gw-0", seq=seq, readings=readings))


async def _publish(cluster: NatsCluster, user: NatsUser, payloads: list[bytes]) -> None:
    config = SessionConfig(
        client_id="edge-gw-0",
        version="3.1.1",
        hosts=tuple((n.host, n.mqtt_port) for n in cluster.nodes),
        access=BrokerAccess(username=user.name, password=user.password),  # type: ignore[arg-type]
    )
    async with MqttSession(config) as s:
        for p in payloads:
            assert await s.publish("sc/v1/gw-0/telemetry", p, qos=1) == 0


async def _stream_messages(cluster: NatsCluster) -> int:
    nc = await nats.connect(cluster.urls, user="admin", password=cluster.admin.password)
    try:
        return int((await nc.jsm().stream_info(DLQ)).state.messages)
    except nats.errors.Error:
        return 0
    finally:
        await nc.close()


def _config(cluster: NatsCluster, user: NatsUser, group: str, influxd: Influxd) -> dict[str, Any]:
    return {
        "source": "jetstream",
        "jetstream": {
            "servers": cluster.urls,
            "username": user.name,
            "password": user.password,
            "durable": f"ingest-{group}",
            "ack_wait": 10,
        },
        "mqtt": {"client_id": f"ingest-{group}0"},
        "influx": {"url": influxd.url, "database": DB},
        "batch": {"max_age": 0.05, "retry": {"initial_delay": 0.1, "max_delay": 0.5}},
    }


def test_replay_from_the_stream_into_each_replica_once(
    nats_cluster_factory: ClusterFactory,
    influxd_factory: Callable[[], Influxd],
    tmp_path: Path,
) -> None:
    gw = NatsUser(name="gw-0", password=password())
    svc = NatsUser(name="svc", password=password(), role="service")
    cluster = nats_cluster_factory([gw, svc])
    influx_a, influx_b = influxd_factory(), influxd_factory()
    now_s = time.time_ns() // 10**9
    good, future = _batch(0, (now_s - 600) * 10**9, 10), _batch(1, (now_s + 1800) * 10**9, 6)
    with (
        WorkerThread(load_config(None, _config(cluster, svc, "a", influx_a))),
        WorkerThread(load_config(None, _config(cluster, svc, "b", influx_b))),
    ):
        asyncio.run(_publish(cluster, gw, [good, future, b"{not json"]))
        _until(lambda: asyncio.run(_stream_messages(cluster)) == 4, 30, "4 dead-letter records")
        _until(lambda: _count(influx_a) == 10 and _count(influx_b) == 10, 30, "good batch stored")

    # The workers are stopped: the replay needs only the stream and the InfluxDBs.
    config_file = tmp_path / "ingest.yaml"
    config_file.write_text(yaml.safe_dump(_config(cluster, svc, "a", influx_a)))
    runner = CliRunner()
    base = ["deadletters", "replay", "--from-stream", "-c", str(config_file), "--since", "1h",
            "--replica", influx_a.url, "--replica", influx_b.url]  # fmt: skip

    # Today's configuration still refuses both: a dry run says so and writes nothing.
    dry = runner.invoke(app, [*base, "--dry-run"])
    assert dry.exit_code == 0, dry.output + str(dry.stderr)
    summary = json.loads(dry.stdout.strip().splitlines()[-1])
    assert summary["read"] == 4
    assert summary["repeats"] == 2
    assert summary["selected"] == 2
    for url in (influx_a.url, influx_b.url):
        assert summary["replicas"][url] == {"records": 2, "readings_stored": 0, "refused": 2}
    assert "read 4/4 records" in dry.stderr

    # The gateway's clock was judged too strictly: allow an hour, replay into both replicas.
    env = {"SMARTCITY_INGEST_INTAKE__MAX_CLOCK_SKEW": "3600"}
    for attempt in (1, 2):  # the second replay rewrites the same points
        result = runner.invoke(app, base, env=env)
        assert result.exit_code == 0, result.output + str(result.stderr)
        lines = result.stdout.strip().splitlines()
        summary = json.loads(lines[-1])
        for url in (influx_a.url, influx_b.url):
            got = summary["replicas"][url]
            assert got == {"records": 2, "readings_stored": 6, "stored": 1, "refused": 1}, (
                attempt,
                got,
            )
        assert sum(" stored " in line for line in lines) == 1
        for influxd in (influx_a, influx_b):
            assert _count(influxd) == 16, (attempt, influxd.url)
            seqs = influxd.query(
                f'SELECT count(distinct("seq")) FROM "{BOOKKEEPING_MEASUREMENT}"', db=DB
            )
            assert seqs["results"][0]["series"][0]["values"][0][1] == 2  # seq 0 and 1
    assert asyncio.run(_stream_messages(cluster)) == 4  # reading the stream changed nothing

    # Bad input is refused clearly: a duration that is not one, an unreachable cluster.
    bad = runner.invoke(app, [*base, "--since", "1d; DROP"])
    assert bad.exit_code == 2
    assert "not a duration" in bad.output
    gone = tmp_path / "gone.yaml"
    cfg = _config(cluster, svc, "a", influx_a)
    cfg["jetstream"]["servers"] = ["nats://127.0.0.1:1"]
    gone.write_text(yaml.safe_dump(cfg))
    down = runner.invoke(app, ["deadletters", "replay", "--from-stream", "-c", str(gone),
                               "--timeout", "5"])  # fmt: skip
    assert down.exit_code == 1
    assert "error:" in down.stderr


def test_stream_selection_keeps_the_newest_and_counts_what_it_leaves_out() -> None:
    """The pure part of the stream read: selection, repeats, unreadable, the limit."""
    import collections
    import datetime

    from ingest._replay_stream import StreamRead, _select, parse_since

    assert parse_since("90s") == 90.0
    assert parse_since("2d") == 172_800.0
    for bad in ("1d; DROP", "", "5", "1y"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_since(bad)

    def record(n: int, gateway: str = "gw-0", worker: str = "ingest-a0") -> bytes:
        return json.dumps({"stage": "decode", "kind": "malformed", "gateway": gateway,
                           "topic": f"sc/v1/{gateway}/telemetry", "worker": worker,
                           "payload_sha256": f"{n:064x}"}).encode()  # fmt: skip

    out = StreamRead(stream=DLQ)
    selected: collections.deque[dict[str, Any]] = collections.deque(maxlen=2)
    seen: set[str] = set()
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for data in (record(1), record(1, worker="ingest-b0"), record(2), b"\xff not json",
                 record(3, gateway="gw-9"), record(4), record(5)):  # fmt: skip
        _select(out, selected, seen, data, when, "gw-0", None)
    assert [json.loads(p["record"])["payload_sha256"][-1] for p in selected] == ["4", "5"]
    assert (out.repeats, out.unreadable, out.skipped, out.over_limit) == (1, 1, 1, 2)
    assert selected[0]["time"] == "2026-01-01T00:00:00Z"
    assert selected[0]["gateway"] == "gw-0"
