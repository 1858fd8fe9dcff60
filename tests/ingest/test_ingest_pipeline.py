"""End to end through real mosquitto and influxd: counts, bookkeeping, shared subscriptions."""

from __future__ import annotations

import time
import urllib.request

import pytest
from ingest_testkit import (
    Publisher,
    batch_payload,
    count_points,
    make_config,
    wait_for,
)

from ingest import BOOKKEEPING_MEASUREMENT, IngestConfig, WorkerThread, completeness_query
from smartcity._localstack import Influxd, Mosquitto

pytestmark = pytest.mark.integration


def test_n_readings_from_several_gateways_give_n_points(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int,
) -> None:
    gateways, batches, per_batch = 6, 25, 40
    config = make_config(mosquitto, influxd, topic_root, influx_db, metrics_port=0)
    with WorkerThread(config) as running:
        for seq in range(batches):
            for g in range(gateways):
                publisher.telemetry(f"gw-{g}", batch_payload(f"gw-{g}", g, seq, per_batch, base_ts))
        publisher.flush()
        expected = gateways * batches * per_batch
        wait_for(lambda: count_points(influxd, influx_db) >= expected, 30, "all points")
        # Queryable points precede the worker's handling of the 204: wait for the acks.
        wait_for(lambda: running.worker.stats().messages_in_flight == 0, 10, "all acked")
        port = running.worker.metrics_port
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        stats = running.worker.stats()
        book = running.worker.gateways()
    assert count_points(influxd, influx_db) == expected
    assert stats.readings_written == expected
    assert stats.messages_in_flight == 0
    assert f"smartcity_ingest_readings_written_total {float(expected)}" in metrics
    assert "smartcity_ingest_batch_latency_seconds_bucket" in metrics
    assert f'smartcity_ingest_gateway_last_seq{{gateway="gw-3"}} {float(batches - 1)}' in metrics
    assert f"smartcity_ingest_messages_received_total {float(gateways * batches)}" in metrics
    assert book["gw-3"][:3] == (batches - 1, 0, 0)
    # Bookkeeping: every batch of every gateway is recorded once.
    answer = influxd.query(completeness_query(since="now() - 2h"), db=influx_db)
    rows = {s["tags"]["gateway"]: s["values"][0] for s in answer["results"][0]["series"]}
    assert set(rows) == {f"gw-{g}" for g in range(gateways)}
    for _time, received, min_seq, max_seq, n_readings, rejected in rows.values():
        assert (received, min_seq, max_seq) == (batches, 0, batches - 1)
        assert (n_readings, rejected) == (batches * per_batch, 0)


def test_replayed_batches_overwrite_themselves(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int,
) -> None:
    config = make_config(mosquitto, influxd, topic_root, influx_db)
    with WorkerThread(config) as running:
        for _ in range(3):  # a gateway replaying its spool twice
            for seq in range(10):
                publisher.telemetry("gw-r", batch_payload("gw-r", 0, seq, 20, base_ts))
        publisher.flush()
        wait_for(lambda: running.worker.stats().readings_written >= 600, 30, "all writes")
        book = running.worker.gateways()
    assert count_points(influxd, influx_db) == 200
    assert book["gw-r"][2] == 20  # replays seen
    answer = influxd.query(f'SELECT count("seq") FROM "{BOOKKEEPING_MEASUREMENT}"', db=influx_db)
    assert answer["results"][0]["series"][0]["values"][0][1] == 10


def test_two_workers_share_the_load_and_a_replacement_drains_a_dead_ones_share(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
    publisher: Publisher, base_ts: int,
) -> None:
    def config(worker: int) -> IngestConfig:
        return make_config(mosquitto, influxd, topic_root, influx_db, worker=worker)

    def publish(seqs: range) -> None:
        for seq in seqs:
            for g in range(4):
                publisher.telemetry(f"gw-{g}", batch_payload(f"gw-{g}", g, seq, 10, base_ts))
        publisher.flush()

    # ingest-0 runs throughout; stopping it too would strand what the broker had already
    # sent it (unacknowledged, so kept in *its* session for *its* next connection).
    with WorkerThread(config(0)) as w0:
        # Phase 1: both running, both take load, nothing is taken twice.
        with WorkerThread(config(1)) as w1:
            publish(range(40))
            wait_for(lambda: count_points(influxd, influx_db) >= 1600, 30, "phase 1 points")
            wait_for(
                lambda: w0.worker.stats().messages_in_flight == 0
                and w1.worker.stats().messages_in_flight == 0,
                10, "phase 1 acks",
            )
            s0, s1 = w0.worker.stats(), w1.worker.stats()
        assert s0.messages_received > 20
        assert s1.messages_received > 20
        assert s0.messages_received + s1.messages_received == 160
        assert count_points(influxd, influx_db) == 1600

        # Phase 2: ingest-1 is gone; its persistent session still gets its round-robin
        # share (mosquitto deals strictly in turn: 80 of 160 messages each).
        publish(range(40, 80))
        wait_for(
            lambda: w0.worker.stats().messages_received == s0.messages_received + 80
            and w0.worker.stats().messages_in_flight == 0,
            30, "ingest-0's share",
        )
        time.sleep(0.5)  # nothing more comes to ingest-0: the rest is queued for ingest-1
        assert w0.worker.stats().messages_received == s0.messages_received + 80
        assert count_points(influxd, influx_db) == 2400

        # A replacement started with the dead worker's id drains what the broker kept for it.
        with WorkerThread(config(1)) as replacement:
            wait_for(lambda: count_points(influxd, influx_db) >= 3200, 30, "the queued share")
            wait_for(
                lambda: replacement.worker.stats().messages_in_flight == 0, 10, "acks"
            )
            drained = replacement.worker.stats()
    assert drained.messages_received == 80
    assert count_points(influxd, influx_db) == 3200


def test_database_and_retention_policy_are_created(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str
) -> None:
    db = f"created_{topic_root}"
    config = make_config(
        mosquitto, influxd, topic_root, db,
        influx={"retention": {"name": "raw", "duration": "30d", "shard_duration": "1d"}},
    )
    try:
        with WorkerThread(config):
            pass
        answer = influxd.query(f'SHOW RETENTION POLICIES ON "{db}"')
        rows = answer["results"][0]["series"][0]["values"]
        raw = next(row for row in rows if row[0] == "raw")
        assert raw[1] == "720h0m0s"
        assert raw[4] is True
    finally:
        influxd.drop_database(db)
